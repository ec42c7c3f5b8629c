"""Loading ``params.yaml`` and dataset presets, and merging per-dataset overrides.

``params.yaml`` holds one section per stage. A dataset preset
(``configs/datasets/<name>.yaml``) describes where a dataset lives and how it is laid
out, and may carry ``overrides: {stage: {key: value}}`` that replace stage params for
that dataset only (the synthetic presets use this for small crops and short TV-L1).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipeline.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
PRESET_DIR = Path("configs") / "datasets"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error naming the file when it is missing or bad."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found. Run from the repository root or pass its path.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}). Fix the syntax.") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}.")
    return data


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Load the whole ``params.yaml``."""
    return read_yaml(path)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively with ``override`` (neither is modified)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def preset_path(name: str, preset_dir: str | Path = PRESET_DIR) -> Path:
    """Path of the dataset preset called ``name``."""
    return Path(preset_dir) / f"{name}.yaml"


def load_dataset(name: str, preset_dir: str | Path = PRESET_DIR) -> dict[str, Any]:
    """Load the dataset preset ``name``; ``name`` is also stored under the key ``name``."""
    path = preset_path(name, preset_dir)
    if not path.is_file():
        known = sorted(p.stem for p in Path(preset_dir).glob("*.yaml"))
        raise ConfigError(
            f"{path}: no preset for dataset '{name}'. Known presets: {', '.join(known) or 'none'}. "
            f"Create {path} or fix params.yaml: datasets."
        )
    preset = read_yaml(path)
    preset["name"] = name
    for key in ("layout", "root"):
        if key not in preset:
            raise ConfigError(f"{path}: missing key '{key}'. See configs/datasets/casme2.yaml for an example.")
    return preset


def stage_params(params: Mapping[str, Any], stage: str, dataset: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The params of ``stage``, with the dataset preset's ``overrides[stage]`` merged in."""
    if stage not in params:
        raise ConfigError(f"params.yaml: missing section '{stage}'. Restore it from the repository's params.yaml.")
    section = params[stage] or {}
    if dataset is not None:
        section = deep_merge(section, (dataset.get("overrides") or {}).get(stage) or {})
    return dict(section)


def digest(obj: Any) -> str:
    """A stable SHA-256 hex digest of a JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
