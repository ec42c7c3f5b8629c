"""Threshold/epoch selection: exactness of the vectorised search, leakage, protocol ordering."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import ConfigError, InputError
from pipeline.scoring.metrics import count_by_type, evaluate, match
from pipeline.scoring.protocols import (Choice, apply_thresholds, best_choice, build_cube, load_thresholds, save_thresholds,
                                        select_cross_fold, select_fixed, select_paper, selection_mask, threshold_grid)

SUBJECTS = ["s1", "s2", "s3", "s4", "s5"]


def make_set(seed: int, epochs: int = 3, noise: float = 0.35) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per subject two videos with GT; per epoch jittered copies (better with epoch) and random FPs."""
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for s in SUBJECTS:
        for v in range(2):
            video = f"{s}_v{v}"
            n = int(rng.integers(2, 6))
            on = np.sort(rng.choice(np.arange(0, 900, 60), n, replace=False))
            types = rng.choice(["macro", "micro"], n, p=[0.7, 0.3])
            lengths = np.where(types == "macro", rng.integers(20, 60, n), rng.integers(8, 16, n))
            gt = pd.DataFrame({"video": video, "subject": s, "type": types, "onset": on, "offset": on + lengths})
            gts.append(gt)
            for e in range(epochs):
                quality = (e + 1) / epochs
                hit = rng.random(n) < 0.4 + 0.5 * quality
                j = rng.integers(-4, 5, (n, 2))
                tp = gt[hit].assign(onset=gt["onset"][hit] + j[hit, 0], offset=gt["offset"][hit] + j[hit, 1],
                                    score=np.clip(0.5 + 0.4 * quality + rng.normal(0, noise, hit.sum()), 0, 1))
                m = int(rng.integers(3, 9))
                fon = rng.integers(0, 950, m)
                ftype = rng.choice(["macro", "micro"], m)
                fp = pd.DataFrame({"video": video, "subject": s, "type": ftype, "onset": fon,
                                   "offset": fon + np.where(ftype == "macro", 30, 10),
                                   "score": np.clip(rng.normal(0.4, noise, m), 0, 1)})
                preds.append(pd.concat([tp, fp]).assign(epoch=e))
    pred = pd.concat(preds, ignore_index=True)
    pred["score"] = pred["score"].round(3)
    return pred, pd.concat(gts, ignore_index=True)


GRID = threshold_grid({"min": 0.0, "max": 1.0, "num": 21})


def _cube(pred: pd.DataFrame, gt: pd.DataFrame, counting: str = "one-to-one", grid: np.ndarray = GRID):
    m = match(pred, gt, 0.5, counting)
    return m, build_cube(pred, gt, m, SUBJECTS, sorted(pred["epoch"].unique().tolist()), grid)


def _score(pred, gt, m, choices) -> float:
    return count_by_type(pred, gt, m, selection_mask(pred, choices))["overall"].f1


def test_grid_param_and_validation() -> None:
    assert np.allclose(threshold_grid({"min": 0, "max": 1, "num": 101})[[0, 50, 100]], [0, 0.5, 1])
    with pytest.raises(ConfigError, match="threshold_grid"):
        threshold_grid({"min": 0, "max": 1})
    with pytest.raises(ConfigError, match="threshold_grid"):
        threshold_grid({"min": 1, "max": 0, "num": 3})


@pytest.mark.parametrize("counting", ["one-to-one", "published"])
def test_cube_equals_direct_evaluation(counting: str) -> None:
    pred, gt = make_set(0)
    _, cube = _cube(pred, gt, counting)
    for s, e, k in [(0, 0, 0), (1, 2, 9), (4, 1, 12), (2, 2, 20)]:
        sel = (pred["subject"] == SUBJECTS[s]) & (pred["epoch"] == e) & (pred["score"] >= GRID[k])
        direct = evaluate(pred[sel], gt[gt["subject"] == SUBJECTS[s]], 0.5, counting)
        for t, ti in (("macro", 0), ("micro", 1)):
            assert cube.tp[s, e, ti, k] == direct[t].tp
            assert cube.n_pred[s, e, ti, k] == direct[t].n_pred
        assert cube.n_gt[s].tolist() == [direct["macro"].n_gt, direct["micro"].n_gt]


@pytest.mark.parametrize("counting", ["one-to-one", "published"])
def test_paper_choice_is_the_brute_force_maximum(counting: str) -> None:
    pred, gt = make_set(1)
    grid = threshold_grid({"min": 0.0, "max": 1.0, "num": 6})
    m, cube = _cube(pred, gt, counting, grid)
    choice, f1 = select_paper(cube)
    best = 0.0
    for e, a, b in itertools.product(range(3), grid, grid):
        kept = (pred["epoch"] == e) & (pred["score"] >= np.where(pred["type"] == "macro", a, b))
        best = max(best, evaluate(pred[kept], gt, 0.5, counting)["overall"].f1)
    assert f1 == pytest.approx(best) and best > 0.3
    assert _score(pred, gt, m, {s: choice for s in SUBJECTS}) == pytest.approx(best)


@pytest.mark.parametrize("seed", range(8))
def test_paper_never_worse_than_cross_fold_or_fixed(seed: int) -> None:
    pred, gt = make_set(seed, noise=0.25 + 0.05 * (seed % 4))
    m, cube = _cube(pred, gt)
    paper, paper_f1 = select_paper(cube)
    cross = select_cross_fold(cube)
    fixed = select_fixed({"thresholds": {"macro": 0.5, "micro": 0.5}, "epoch": "last"}, cube.epochs)
    f_paper = _score(pred, gt, m, {s: paper for s in SUBJECTS})
    f_cross = _score(pred, gt, m, cross)
    f_fixed = _score(pred, gt, m, {s: fixed for s in SUBJECTS})
    assert f_paper == pytest.approx(paper_f1)
    assert f_paper >= f_cross - 1e-12 and f_paper >= f_fixed - 1e-12
    assert 0.0 < f_cross <= 1.0


def test_cross_fold_threshold_is_the_optimum_of_the_other_subjects() -> None:
    pred, gt = make_set(2)
    _, cube = _cube(pred, gt)
    cross = select_cross_fold(cube)
    others = [s for s in SUBJECTS if s != "s3"]
    p_o, g_o = pred[pred["subject"].isin(others)], gt[gt["subject"].isin(others)]
    sub = build_cube(p_o, g_o, match(p_o, g_o), others, cube.epochs, GRID)
    assert cross["s3"] == select_paper(sub)[0]


def test_changing_a_subjects_ground_truth_leaves_its_thresholds_unchanged() -> None:
    pred, gt = make_set(3)
    _, cube = _cube(pred, gt)
    before_cross, before_paper = select_cross_fold(cube), select_paper(cube)
    # s2 now has every one of its epoch-1 predictions as ground truth, and none of its old GT
    fake = pred[(pred["subject"] == "s2") & (pred["epoch"] == 1)][["video", "subject", "type", "onset", "offset"]]
    gt2 = pd.concat([gt[gt["subject"] != "s2"], fake], ignore_index=True)
    m2, cube2 = _cube(pred, gt2)
    after_cross, after_paper = select_cross_fold(cube2), select_paper(cube2)
    assert after_paper != before_paper             # the change matters to anything that sees s2's GT ...
    assert after_cross["s2"] == before_cross["s2"]  # ... but not to s2's own cross-fold choice
    assert any(after_cross[s] != before_cross[s] for s in SUBJECTS if s != "s2")
    s2 = (pred["subject"] == "s2").to_numpy()
    assert count_by_type(pred[s2], gt2[gt2["subject"] == "s2"], match(pred[s2], gt2[gt2["subject"] == "s2"]),
                         selection_mask(pred[s2], {"s2": after_cross["s2"]}))["overall"].tp > 0


def test_perfect_and_empty_predictors() -> None:
    pred, gt = make_set(4)
    perfect = pd.concat([gt.assign(epoch=e, score=0.9) for e in range(2)], ignore_index=True)
    m, cube = _cube(perfect, gt)
    assert select_paper(cube)[1] == 1.0
    assert _score(perfect, gt, m, select_cross_fold(cube)) == 1.0
    empty = perfect.iloc[:0]
    cube = build_cube(empty, gt, match(empty, gt), SUBJECTS, [0], GRID)
    assert select_paper(cube)[1] == 0.0
    assert all(c.thresholds == {"macro": 1.0, "micro": 1.0} for c in select_cross_fold(cube).values())


def test_ties_prefer_latest_epoch_and_highest_thresholds() -> None:
    pred, gt = make_set(5)
    nothing = pred.assign(video="elsewhere")        # matches no GT at all: every choice scores 0
    gt_only = gt
    cube = build_cube(nothing, gt_only, match(nothing, gt_only), SUBJECTS, [0, 1, 2], GRID)
    choice, f1 = select_paper(cube)
    assert f1 == 0.0
    assert choice == Choice(epoch=2, thresholds={"macro": 1.0, "micro": 1.0})


def _plateau_counts(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch; macro: 4 GT, the 4 true positives score 0.60-0.80 and one false positive 0.30, so every
    threshold in (0.30, 0.60] finds all 4 and nothing else (F1 1); micro: 2 GT, both true positives
    score 0.50, no false positive: every threshold up to 0.50 finds both. ``tp``/``n_pred`` [1, 2, G]."""
    macro_tp = (np.array([0.6, 0.7, 0.75, 0.8])[:, None] >= grid[None, :] - 1e-9).sum(0)
    macro_pred = macro_tp + (0.3 >= grid - 1e-9)
    micro_tp = 2 * (0.5 >= grid - 1e-9)
    tp = np.stack([macro_tp, micro_tp])[None].astype(float)
    n_pred = np.stack([macro_pred, micro_tp])[None].astype(float)
    return tp, n_pred, np.array([4.0, 2.0])


def test_middle_tie_break_puts_the_threshold_inside_the_plateau() -> None:
    grid = threshold_grid({"min": 0.0, "max": 1.0, "num": 101})
    tp, n_pred, n_gt = _plateau_counts(grid)
    high, f_high = best_choice(tp, n_pred, n_gt, [5], grid)
    mid, f_mid = best_choice(tp, n_pred, n_gt, [5], grid, ties="middle")
    assert f_high == f_mid == 1.0
    assert high.thresholds == {"macro": 0.6, "micro": 0.5}     # the edge: just under the lowest true positive
    assert mid.thresholds["macro"] == pytest.approx(0.46) and mid.thresholds["micro"] == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="middle"):
        best_choice(tp, n_pred, n_gt, [5], grid, ties="centre")


def test_middle_tie_break_without_any_hit_keeps_the_highest_thresholds() -> None:
    pred, gt = make_set(5)
    nothing = pred.assign(video="elsewhere")
    cube = build_cube(nothing, gt, match(nothing, gt), SUBJECTS, [0, 1, 2], GRID)
    assert all(c.thresholds == {"macro": 1.0, "micro": 1.0} for c in select_cross_fold(cube, "middle").values())


def test_fixed_protocol_params() -> None:
    c = select_fixed({"thresholds": {"macro": 0.3, "micro": 0.6}, "epoch": "last"}, [0, 4, 9])
    assert c == Choice(9, {"macro": 0.3, "micro": 0.6})
    assert select_fixed({"thresholds": {"macro": 0.3, "micro": 0.6}, "epoch": 4}, [0, 4, 9]).epoch == 4
    with pytest.raises(ConfigError, match="epoch = 5 is not among"):
        select_fixed({"thresholds": {"macro": 0.3, "micro": 0.6}, "epoch": 5}, [0, 4, 9])
    with pytest.raises(ConfigError, match="evaluate.fixed"):
        select_fixed({"thresholds": {"macro": 0.3}, "epoch": 4}, [4])


def test_thresholds_file_roundtrip_and_apply(tmp_path: Path) -> None:
    choice = Choice(7, {"macro": 0.42, "micro": 0.61})
    save_thresholds(tmp_path / "t.json", choice, {"dataset": "x"})
    assert load_thresholds(tmp_path / "t.json") == choice
    assert json.loads((tmp_path / "t.json").read_text()) == {"thresholds": {"macro": 0.42, "micro": 0.61}, "epoch": 7,
                                                            "dataset": "x"}
    save_thresholds(tmp_path / "t.json", Choice(8, {"macro": 0.1, "micro": 0.2}), {})  # rewrite in place
    assert load_thresholds(tmp_path / "t.json").epoch == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]  # no temporary file left behind
    pred = pd.DataFrame({"type": ["macro", "macro", "micro", "micro"], "score": [0.41, 0.42, 0.6, 0.7]})
    assert apply_thresholds(pred, choice.thresholds)["score"].tolist() == [0.42, 0.7]
    with pytest.raises(InputError, match="thresholds not found"):
        load_thresholds(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="bad.json: not a thresholds file"):
        load_thresholds(tmp_path / "bad.json")
