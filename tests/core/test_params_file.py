"""params.yaml is plain data in DVC's form; configs/params.reference.yaml the same data, commented (#25)."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides   # what `dvc exp run -S` calls to rewrite params.yaml

from pipeline.params_file import HEADER, main, plain_text

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params.yaml"
REFERENCE = REPO / "configs" / "params.reference.yaml"


def test_params_yaml_holds_the_reference_data_in_dvc_form() -> None:
    data = yaml.safe_load(PARAMS.read_text())
    assert data == yaml.safe_load(REFERENCE.read_text()), \
        "params.yaml and configs/params.reference.yaml differ: `python -m pipeline.params_file` after editing"
    assert PARAMS.read_text() == plain_text(data)
    assert PARAMS.read_text().startswith(HEADER) and REFERENCE.read_text().count("#") > 200


@pytest.mark.parametrize("override, line", [
    ("train.epochs=30", "  epochs: 30"),
    ("crop.size=256", "  size: 256"),
    ("per_dataset.synth_casme2.crop.size=96", "      size: 96"),
    ("parallel.address=tcp://10.0.0.1:8786", "  address: tcp://10.0.0.1:8786"),
])
def test_dvc_exp_run_set_param_changes_exactly_one_line(tmp_path: Path, override: str, line: str) -> None:
    path = tmp_path / "params.yaml"
    shutil.copy(PARAMS, path)
    apply_overrides(str(path), [override])
    diff = [d for d in difflib.unified_diff(PARAMS.read_text().splitlines(), path.read_text().splitlines(),
                                            lineterm="", n=0) if d[:1] in "+-" and d[:3] not in ("+++", "---")]
    assert len(diff) == 2 and diff[0].startswith("-") and diff[1] == f"+{line}", diff


def test_the_tool_rewrites_params_yaml_from_the_reference(tmp_path: Path, capsys) -> None:
    ref = tmp_path / "ref.yaml"
    ref.write_text("a:  # the knob\n  b: null   # nothing\n  c: [1, 2]\n")
    out = tmp_path / "params.yaml"
    assert main(["--check", "--params", str(out), "--reference", str(ref)]) == 1
    assert main(["--params", str(out), "--reference", str(ref)]) == 0
    assert out.read_text() == HEADER + "a:\n  b:\n  c:\n  - 1\n  - 2\n"
    assert main(["--check", "--params", str(out), "--reference", str(ref)]) == 0
