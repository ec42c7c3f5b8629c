"""Matching and F1: hand-built sets with known TP/FP/FN under both counting rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers.reference import REFERENCE_DIR

from pipeline.scoring.metrics import (Counts, count_by_type, counts_by_group, evaluate, f1_score, interval_iou, match,
                                      safe_ratio)

REFERENCE = REFERENCE_DIR / "casme2_annotation_357.csv"


def _gt(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["video", "subject", "type", "onset", "offset"])


def _pred(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["video", "subject", "type", "onset", "offset", "score"])


def _summary(counts: dict[str, Counts]) -> dict[str, tuple[int, int, int, int]]:
    return {k: (c.tp, c.fp, c.fn, c.n_pred) for k, c in counts.items()}


def test_interval_iou_is_inclusive() -> None:
    iou = interval_iou(np.array([10, 0, 0, 5]), np.array([19, 9, 9, 5]), np.array([15, 10]), np.array([24, 19]))
    assert iou.shape == (4, 2)
    assert iou[0, 0] == pytest.approx(5 / 15)       # [10,19] vs [15,24]: 15..19 over 10..24
    assert iou[1, 1] == 0.0                         # adjacent, no shared frame
    assert iou[2, 0] == 0.0                         # disjoint
    assert iou[3, 0] == 0.0 and iou[3, 1] == 0.0
    assert interval_iou(np.array([7]), np.array([7]), np.array([7]), np.array([7]))[0, 0] == 1.0


GT = _gt([("v", "A", "macro", 10, 29), ("v", "A", "macro", 100, 119), ("v", "A", "micro", 50, 59)])
PRED = _pred([
    ("v", "A", "macro", 10, 29, 0.90),   # IoU 1 with GT0: TP
    ("v", "A", "macro", 12, 31, 0.80),   # IoU 18/22 with GT0, already taken: FP (one-to-one), TP (published)
    ("v", "A", "macro", 100, 104, 0.70),  # IoU 5/20 with GT1: FP
    ("v", "A", "micro", 10, 29, 0.95),   # matches a macro GT exactly, wrong type: FP
    ("v", "A", "micro", 52, 61, 0.60),   # IoU 8/12 with the micro GT: TP
    ("v", "A", "macro", 200, 210, 0.50),  # nothing there: FP
])


def test_hand_built_one_to_one() -> None:
    c = evaluate(PRED, GT, 0.5, "one-to-one")
    assert _summary(c) == {"macro": (1, 3, 1, 4), "micro": (1, 1, 0, 2), "overall": (2, 4, 1, 6)}
    assert c["macro"].precision == pytest.approx(0.25)
    assert c["macro"].recall == pytest.approx(0.5)
    assert c["macro"].f1 == pytest.approx(1 / 3)
    assert c["micro"].f1 == pytest.approx(2 / 3)
    assert c["overall"].f1 == pytest.approx(4 / 9)
    assert c["overall"].n_gt == 3


def test_hand_built_published_counts_duplicates() -> None:
    c = evaluate(PRED, GT, 0.5, "published")
    # the duplicate on GT0 is a TP now; GT1 is still missed
    assert _summary(c) == {"macro": (2, 2, 1, 4), "micro": (1, 1, 0, 2), "overall": (3, 3, 1, 6)}
    assert c["macro"].recall == pytest.approx(1.0)   # 2 TP / 2 GT though one GT was never found
    assert c["overall"].f1 == pytest.approx(6 / 9)


def test_iou_threshold_is_a_parameter() -> None:
    # at 0.9 the 18/22 duplicate fails even under the published rule, and the micro 8/12 TP too
    c = evaluate(PRED, GT, 0.9, "published")
    assert _summary(c)["macro"][0] == 1 and _summary(c)["micro"][0] == 0
    c = evaluate(PRED, GT, 0.25, "one-to-one")   # 5/20 = 0.25 passes: GT1 found
    assert _summary(c)["macro"] == (2, 2, 0, 4)


def test_greedy_by_score_not_by_iou() -> None:
    gt = _gt([("v", "A", "macro", 0, 19)])
    pred = _pred([("v", "A", "macro", 0, 19, 0.5), ("v", "A", "macro", 2, 21, 0.9)])
    m = match(pred, gt, 0.5, "one-to-one")
    assert m.tp.tolist() == [False, True]          # the higher score takes the GT despite lower IoU
    assert m.gt_index.tolist() == [-1, 0]
    assert match(pred, gt, 0.5, "published").tp.tolist() == [True, True]


def test_prediction_takes_its_best_free_ground_truth() -> None:
    gt = _gt([("v", "A", "macro", 0, 19), ("v", "A", "macro", 5, 24)])
    # p: IoU 0.6 with GT0, 1.0 with GT1 -> must take GT1 so that q (only GT0) is a TP too
    pred = _pred([("v", "A", "macro", 5, 24, 0.9), ("v", "A", "macro", 0, 15, 0.8)])
    m = match(pred, gt, 0.5, "one-to-one")
    assert m.tp.tolist() == [True, True]
    assert m.gt_index.tolist() == [1, 0]


def test_videos_and_epochs_are_separate_sets() -> None:
    gt = _gt([("v", "A", "micro", 0, 9)])
    pred = _pred([("w", "A", "micro", 0, 9, 0.9), ("v", "A", "micro", 0, 9, 0.8), ("v", "A", "micro", 0, 9, 0.7)])
    pred["epoch"] = [0, 0, 1]
    m = match(pred, gt, 0.5, "one-to-one")
    assert m.tp.tolist() == [False, True, True]    # other video: FP; each epoch matches the GT once
    c = count_by_type(pred, gt, m)
    assert (c["micro"].tp, c["micro"].n_pred) == (2, 3)
    assert len(m.gt_hit()) == 2                    # (epoch 0, GT0) and (epoch 1, GT0)


def test_empty_and_degenerate_never_divide_by_zero() -> None:
    empty = _pred([])
    c = evaluate(empty, GT, 0.5)
    assert all(v.f1 == 0.0 and v.precision == 0.0 and v.recall == 0.0 for v in c.values())
    assert c["overall"].fn == 3 and c["overall"].fp == 0
    c = evaluate(PRED, _gt([]), 0.5)
    assert c["overall"].f1 == 0.0 and c["overall"].fp == 6 and c["overall"].recall == 0.0
    c = evaluate(empty, _gt([]), 0.5)
    assert c["overall"].as_dict()["f1"] == 0.0
    assert safe_ratio(1, 0) == 0.0
    assert f1_score(np.array([0, 2]), np.array([0, 2]), np.array([0, 2])).tolist() == [0.0, 1.0]


def _reference_gt() -> pd.DataFrame:
    ann = pd.read_csv(REFERENCE)
    return pd.DataFrame({"video": ann["video"].str.split("/").str[-1], "subject": ann["subject"].astype(str),
                         "type": np.where(ann["type_idx"] == 1, "macro", "micro"),
                         "onset": ann["startFrame"], "offset": ann["endFrame"]})


@pytest.mark.skipif(not REFERENCE.is_file(), reason="shared reference annotations not available")
@pytest.mark.parametrize("counting", ["one-to-one", "published"])
def test_perfect_predictor_on_real_casme2_ground_truth(counting: str) -> None:
    gt = _reference_gt()
    pred = gt.assign(score=np.linspace(0.2, 0.9, len(gt)))
    c = evaluate(pred, gt, 0.5, counting)
    assert c["macro"].n_gt == 300 and c["micro"].n_gt == 57
    for k in ("macro", "micro", "overall"):
        assert (c[k].f1, c[k].precision, c[k].recall, c[k].fp, c[k].fn) == (1.0, 1.0, 1.0, 0, 0), k


def _random_set(seed: int, n_videos: int = 6, n_pred: int = 60) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for v in range(n_videos):
        on = rng.integers(0, 400, 5)
        gts.append(pd.DataFrame({"video": f"v{v}", "subject": f"s{v % 3}", "type": rng.choice(["macro", "micro"], 5),
                                 "onset": on, "offset": on + rng.integers(5, 40, 5)}))
        base = gts[-1].sample(n_pred, replace=True, random_state=seed + v).reset_index(drop=True)
        jitter = rng.integers(-8, 9, (n_pred, 2))
        preds.append(base.assign(onset=base["onset"] + jitter[:, 0], offset=base["offset"] + jitter[:, 1],
                                 type=np.where(rng.random(n_pred) < 0.8, base["type"], "macro"),
                                 score=np.round(rng.random(n_pred), 2)))
    pred = pd.concat(preds, ignore_index=True)
    pred["offset"] = np.maximum(pred["offset"], pred["onset"])
    return pred, pd.concat(gts, ignore_index=True)


@pytest.mark.parametrize("counting", ["one-to-one", "published"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flags_from_all_predictions_hold_for_every_threshold(counting: str, seed: int) -> None:
    """Matching once and masking by score equals re-matching each thresholded subset."""
    pred, gt = _random_set(seed)
    m = match(pred, gt, 0.5, counting)
    assert m.tp.any() and not m.tp.all()
    for thr in (0.0, 0.13, 0.5, 0.77, 0.99):
        mask = pred["score"].to_numpy() >= thr
        direct = evaluate(pred[mask], gt, 0.5, counting)
        assert _summary(count_by_type(pred, gt, m, mask)) == _summary(direct), thr


def test_counts_by_group_add_up_to_totals() -> None:
    pred, gt = _random_set(3)
    m = match(pred, gt, 0.5, "one-to-one")
    mask = pred["score"].to_numpy() >= 0.4
    g = counts_by_group(pred, gt, m, mask, "subject")
    total = count_by_type(pred, gt, m, mask)
    for t in ("macro", "micro", "overall"):
        assert g[f"tp_{t}"].sum() == total[t].tp
        assert g[f"n_pred_{t}"].sum() == total[t].n_pred
        assert g[f"n_gt_{t}"].sum() == total[t].n_gt
        assert g[f"gt_hit_{t}"].sum() == total[t].gt_hit
    one = evaluate(pred[mask & (pred["subject"] == "s1").to_numpy()], gt[gt["subject"] == "s1"])
    row = g.set_index("subject").loc["s1"]
    assert row["f1_overall"] == pytest.approx(one["overall"].f1)


def test_unknown_counting_rule_is_rejected() -> None:
    with pytest.raises(ValueError, match="counting rule 'greedy'"):
        match(PRED, GT, 0.5, "greedy")
