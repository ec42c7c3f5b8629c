"""Stage ``baseline@<ds>`` end to end on real HDF5 files, its bad input, and the ``baseline`` block evaluate writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detect.test_detect import expression, noise_flow
from extract.test_roi_flow import S, add_landmarks
from pipeline.errors import ConfigError, StageFailed
from pipeline.io.artifacts import PREDICTION_COLUMNS
from stages.test_evaluate import _make_dataset
from stages.test_features import write_faces, write_flow

DS = "tiny"
BOX = [40, 30, 200, 190]
N = 300


def setup(workspace, videos: dict[str, tuple[str, np.ndarray]], landmarks: bool = True) -> Path:
    """Faces (with the crop stage's landmarks) and flow files, and resample/videos.csv, for ``videos``
    (name -> (subject, flow [T-1, S, S, 2]))."""
    root = workspace.root / "data" / DS
    workspace.preset(DS, layout="generic", root=f"data/raw/{DS}", target_fps=30)
    rows = []
    for video, (subject, flow) in videos.items():
        write_faces(root / "faces" / f"{video}.h5", np.zeros((len(flow) + 1, S, S, 3), np.uint8), video)
        if landmarks:
            add_landmarks(root / "faces" / f"{video}.h5", S, BOX)
        write_flow(root / "flow" / f"{video}.h5", flow, video)
        rows.append({"video": video, "subject": subject, "fps": 30.0, "n_frames": len(flow) + 1, "source": video,
                     "kind": "frames", "color": 1, "source_fps": 30.0})
    (root / "resample").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "resample" / "videos.csv", index=False)
    return root


def test_the_stage_spots_a_known_motion_in_real_files(workspace) -> None:
    flows = {"v1": ("s1", noise_flow(N) + expression(N, 54, 100, 10) + expression(N, 51, 200, 45)),
             "v2": ("s2", noise_flow(N, seed=3) + expression(N, 21, 150, 12))}   # brow
    root = setup(workspace, flows)
    workspace.run("baseline", DS)
    pred = pd.read_csv(root / "baseline" / "predictions.csv", dtype={"video": str, "subject": str, "fold": str})
    assert pred.columns.tolist() == PREDICTION_COLUMNS
    assert (pred["fold"] == pred["subject"]).all() and set(pred["epoch"]) == {0}
    assert pred["score"].between(0, 1).all()

    def best_near(video: str, onset: int, offset: int) -> pd.Series:
        rows = pred[(pred.video == video) & (pred.onset <= offset) & (pred.offset >= onset)]
        assert len(rows), (video, onset, offset, pred)
        return rows.sort_values("score").iloc[-1]

    for video, onset, offset, kind in (("v1", 100, 110, "micro"), ("v1", 200, 245, "macro"),
                                       ("v2", 150, 162, "micro")):
        got = best_near(video, onset, offset)
        inter = min(offset, got.offset) - max(onset, got.onset) + 1
        union = max(offset, got.offset) - min(onset, got.onset) + 1
        assert inter / union >= 0.5 and got.type == kind, (video, onset, offset, got.to_dict())
    method = json.loads((root / "baseline" / "method.json").read_text())
    assert method["method"] == "roi-motion peaks" and method["params"]["baseline"]["eyes"] == "subtract"
    assert method["params"]["features.roi"]["reference_pairs"] == 12


def test_a_faces_file_without_landmarks_fails_naming_the_file(workspace) -> None:
    root = setup(workspace, {"nolm": ("s1", noise_flow(40))}, landmarks=False)
    with pytest.raises(StageFailed, match=r"nolm: .*faces/nolm\.h5: video 'nolm' has no reference landmarks") as err:
        workspace.run("baseline", DS)
    assert "the baseline places its regions" in str(err.value) and "features.backbone" not in str(err.value)
    assert not (root / "baseline" / "predictions.csv").exists()


def test_unknown_baseline_keys_are_refused_before_reading_input(workspace) -> None:
    workspace.preset(DS, layout="generic", root=f"data/raw/{DS}", target_fps=30)
    workspace.set_params("baseline", min_heigth=2.0)
    with pytest.raises(ConfigError, match=r"baseline\.min_heigth \(did you mean min_height\?\)"):
        workspace.run("baseline", DS)


def test_evaluate_reports_the_baseline_beside_iaenet(tmp_path: Path, monkeypatch, caplog) -> None:
    from pipeline.evaluate import main

    monkeypatch.chdir(tmp_path)
    _make_dataset(tmp_path)
    assert main(["--dataset", "toy"]) == 0   # no baseline: a warning, and no block
    details = tmp_path / "data" / "toy" / "evaluate" / "details.json"
    assert "baseline" not in json.loads(details.read_text())
    assert json.loads((tmp_path / "metrics" / "toy.json").read_text()) == {"toy": {"f1": 1.0}}
    assert "non-learned baseline" not in (tmp_path / "data" / "toy" / "evaluate" / "summary.md").read_text()

    base = tmp_path / "data" / "toy" / "baseline"
    base.mkdir()
    rows = [("vA", "A", "A", 0, 20, 49, "macro", 0.9), ("vA", "A", "A", 0, 100, 109, "micro", 0.8),
            ("vB", "B", "B", 0, 20, 49, "macro", 0.7), ("vB", "B", "B", 0, 130, 139, "micro", 0.6),   # micro FP
            ("vC", "C", "C", 0, 22, 50, "macro", 0.5)]
    pd.DataFrame(rows, columns=PREDICTION_COLUMNS).to_csv(base / "predictions.csv", index=False)
    (base / "method.json").write_text(json.dumps({"method": "roi-motion peaks", "description": "no learning",
                                                  "version": 1, "params": {"baseline": {"top_k": 2}}}))
    assert main(["--dataset", "toy"]) == 0
    doc = json.loads(details.read_text())
    block = doc["baseline"]
    assert block["method"] == "roi-motion peaks" and block["params"] == {"baseline": {"top_k": 2}}
    assert {"cross-fold", "paper-optimistic", "fixed"} <= set(block)
    paper = block["paper-optimistic"]
    # thresholds chosen on all: macro 3 TP of 3; micro: A's TP kept, B's FP dropped (0.6 < t <= 0.8)
    assert paper["macro"] == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "tp": 3, "fp": 0, "fn": 0, "n_pred": 3,
                              "n_gt": 3}
    assert (paper["micro"]["tp"], paper["micro"]["fp"], paper["micro"]["fn"]) == (1, 0, 2)
    assert set(block["cross-fold"]["overall"]) >= {"f1", "precision", "recall", "tp", "fp", "fn"}
    headline = json.loads((tmp_path / "metrics" / "toy.json").read_text())
    assert headline["toy"]["base"] == block["cross-fold"]["overall"]["f1"]   # the headline's baseline figure
    assert doc["one-to-one"]["paper-optimistic"]["overall"]["f1"] == 1.0   # IAENet's numbers are untouched
    summary = (tmp_path / "data" / "toy" / "evaluate" / "summary.md").read_text()
    assert "## IAENet beside a non-learned baseline (one-to-one)" in summary
    assert f"| baseline | paper-optimistic | 1.0000 | {2 / 4:.4f} | {2 * 4 / (4 + 6):.4f} | 4 | 0 | 2 |" in summary
    assert "| IAENet | cross-fold | 1.0000 | 1.0000 | 1.0000 |" in summary
