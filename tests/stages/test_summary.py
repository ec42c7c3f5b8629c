"""Every stage run records its duration, and `m2es summary` prints them with the headline F1s (issue #25 §5)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from pipeline.cli import main as m2es
from pipeline.core.paths import DataPaths
from pipeline.core.stage import STAGE_TIMING_KEYS
from pipeline.evaluate import main as evaluate
from pipeline.io.jsonl import read_jsonl

from stages.test_evaluate import _make_dataset

REPO = Path(__file__).resolve().parents[2]


def test_stage_runs_are_recorded_and_summarised(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    _make_dataset(tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "datasets": ["toy"],
                                                          "per_dataset": {"toy": {"evaluate": {}}}}))
    assert evaluate(["--dataset", "toy"]) == 0
    capsys.readouterr()
    assert m2es(["summary"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("evaluate"))
    assert " s (" in row and "FAILED" not in row
    assert "toy: macro 1.0000, micro 1.0000, overall 1.0000; paper-optimistic 1.0769 (reproduction " in out

    # a failed run is recorded too (it is the last run now), a misspelt dataset leaves no folder behind
    assert evaluate(["--dataset", "toy", "--params", "missing.yaml"]) == 2
    assert evaluate(["--dataset", "nosuch"]) == 2
    assert not (tmp_path / "data" / "nosuch").exists()
    records = read_jsonl(tmp_path / "data" / "toy" / "stage_timings.jsonl")
    assert [tuple(r) for r in records] == [STAGE_TIMING_KEYS] * 2
    assert [(r["stage"], r["dataset"], r["status"]) for r in records] == [("evaluate", "toy", "ok"),
                                                                          ("evaluate", "toy", "failed")]
    capsys.readouterr()
    assert m2es(["summary"]) == 0
    assert "FAILED" in next(line for line in capsys.readouterr().out.splitlines()
                            if line.strip().startswith("evaluate"))

    (tmp_path / "data" / "toy" / "evaluate" / "details.json").write_text(json.dumps({"dataset": "toy"}))   # no F1
    assert m2es(["summary"]) == 2
    assert "data/toy/evaluate/details.json: no F1 figures" in capsys.readouterr().err


def test_timing_records_are_in_no_dvc_output_and_ignored_by_git() -> None:
    """Times differ on every run: in a DVC output they would change dvc.lock and `git status`."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    record = DataPaths("ds").stage_timings.as_posix()
    declared = []
    for stage in stages.values():
        body = stage.get("do", stage)
        for kind in ("outs", "metrics", "plots"):
            for entry in body.get(kind, []):
                declared.append((next(iter(entry)) if isinstance(entry, dict) else entry).replace("${item}", "ds"))
    assert declared and not [p for p in declared if record == p or record.startswith(p.rstrip("/") + "/")]
    assert subprocess.run(["git", "check-ignore", "-q", record], cwd=REPO, check=False).returncode == 0
