"""Table-driven checks that a params section refuses a bad key or value with a message naming it."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pytest

from pipeline.errors import ConfigError


def assert_section_refuses(cls: Any, cases: Iterable[tuple[Mapping[str, Any], str]]) -> None:
    """Each ``(section, pattern)``: ``cls.from_params(section)`` raises ConfigError matching ``pattern``."""
    for section, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            cls.from_params(section)


def assert_stage_refuses(workspace: Any, stage: str, dataset: str,
                         cases: Iterable[tuple[str, Any, str]]) -> None:
    """Each ``(key, value, pattern)``: with only ``stage.key`` set to ``value`` in the workspace's
    params.yaml, running the stage raises ConfigError matching ``pattern``; the section is restored after."""
    original = dict(workspace.params.get(stage) or {})
    for key, value, pattern in cases:
        workspace.params[stage] = {**original, key: value}
        workspace.save_params()
        with pytest.raises(ConfigError, match=pattern):
            workspace.run(stage, dataset)
    workspace.params[stage] = original
    workspace.save_params()
