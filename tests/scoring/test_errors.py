"""Error analysis: false positives labelled by what they overlap, misses by type and length, FP share per length."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.scoring.errors import (ERROR_COLUMNS, analyse_errors, bin_name, errors_markdown, label_false_positives,
                                     label_misses, length_bin, plot_errors, touch_chance)
from pipeline.scoring.metrics import match

# one 300-frame video; ground truth, distractors and predictions placed by hand (inclusive frame intervals)
GT = pd.DataFrame({"video": "v", "subject": "s", "type": ["macro", "micro", "micro", "macro"],
                   "onset": [100, 200, 280, 20], "offset": [139, 209, 290, 40]})
DISTRACTORS = pd.DataFrame({"video": "v", "subject": "s", "kind": ["blink", "turn"], "start": [50, 240],
                            "end": [55, 280]})
# name: (type, onset, offset, score, kept, label with distractors, label without)
PREDICTIONS = {
    "p0": ("macro", 100, 139, 0.9, True, None, None),                       # TP of the macro at 100
    "p1": ("macro", 101, 140, 0.8, True, "duplicate", "duplicate"),         # IoU 39/41 with the GT p0 took
    "p2": ("macro", 120, 170, 0.7, True, "mislocalised", "mislocalised"),   # 20 frames of it, IoU 20/71
    "p3": ("macro", 195, 215, 0.7, True, "other-type", "other-type"),       # covers the micro at 200
    "p4": ("micro", 48, 57, 0.6, True, "blink", "nothing"),                 # 6 frames of the blink
    "p5": ("micro", 230, 259, 0.6, True, "turn", "nothing"),                # 20 frames of the turn
    "p6": ("micro", 60, 70, 0.6, True, "nothing", "nothing"),
    "p7": ("macro", 130, 160, 0.1, False, None, None),                      # below threshold: not analysed
    "p9": ("macro", 135, 245, 0.5, True, "other-type", "other-type"),       # own type 5, other type 10, turn 6
    "p10": ("macro", 30, 70, 0.5, True, "mislocalised", "mislocalised"),    # 11 of the macro at 20, blink 6
}


def _pred() -> pd.DataFrame:
    rows = [dict(video="v", subject="s", fold="s", epoch=1, type=t, onset=on, offset=off, score=sc, name=n)
            for n, (t, on, off, sc, *_rest) in PREDICTIONS.items()]
    return pd.DataFrame(rows)


def _mask(pred: pd.DataFrame) -> np.ndarray:
    return np.array([PREDICTIONS[n][4] for n in pred["name"]])


def _labels(fp: pd.DataFrame, pred: pd.DataFrame) -> dict[str, str]:
    name = {(on, off): n for n, on, off in pred[["name", "onset", "offset"]].itertuples(index=False)}
    return {name[(on, off)]: lab for on, off, lab in fp[["onset", "offset", "label"]].itertuples(index=False)}


@pytest.mark.parametrize("with_distractors", [True, False])
def test_false_positives_are_labelled_by_what_they_overlap_most(with_distractors):
    pred = _pred()
    m = match(pred, GT, 0.5)
    assert m.tp.tolist() == [n == "p0" for n in pred["name"]]
    fp = label_false_positives(pred, GT, m, _mask(pred), 0.5, DISTRACTORS if with_distractors else None)
    col = 5 if with_distractors else 6
    want = {n: v[col] for n, v in PREDICTIONS.items() if v[col] is not None}
    assert _labels(fp, pred) == want
    row = fp.set_index("onset").loc[135]                       # p9: touches everything, other-type has most
    assert row["overlap"] == 10 and row["length"] == 111
    assert row["overlaps"] == ("mislocalised+other-type+turn" if with_distractors else "mislocalised+other-type")
    assert row["best_iou"] == pytest.approx(5 / 146, abs=1e-6)
    assert fp.set_index("onset").loc[60, "overlaps"] == ""     # p6 touches nothing
    if with_distractors:
        assert fp.set_index("onset").loc[48, "overlap"] == 6  # p4: the blink's 6 frames


def test_ties_go_to_the_expression_and_distractor_kinds_are_open():
    gt = pd.DataFrame({"video": "v", "subject": "s", "type": ["macro"], "onset": [10], "offset": [14]})
    dis = pd.DataFrame({"video": "v", "subject": "s", "kind": ["blink", "sneeze"], "start": [15, 30],
                        "end": [19, 60]})
    pred = pd.DataFrame({"video": "v", "subject": "s", "epoch": 1, "type": ["macro", "micro"], "onset": [10, 40],
                         "offset": [19, 45], "score": [0.5, 0.5]})   # 5 frames of the macro, 5 of the blink
    fp = label_false_positives(pred, gt, match(pred, gt, 0.6), np.ones(2, bool), 0.6, dis)
    assert fp["label"].tolist() == ["mislocalised", "sneeze"]
    assert fp["overlaps"].tolist() == ["mislocalised+blink", "sneeze"]


def test_misses_by_type_length_and_cause():
    pred = _pred()
    m = match(pred, GT, 0.5)
    fn = label_misses(pred, GT, m, _mask(pred), 0.5)
    got = {(r.type, r.onset): (r.label, r.overlap, r.length) for r in fn.itertuples()}
    assert got == {("micro", 200): ("other-type", 10, 10),      # only the macro p3/p9 cover it
                   ("micro", 280): ("unspotted", 0, 11),
                   ("macro", 20): ("mislocalised", 11, 21)}     # p10 shares 11 frames, IoU 11/51
    assert fn.set_index("onset").loc[20, "best_iou"] == pytest.approx(11 / 51, abs=1e-6)
    # nothing kept: every ground truth missed
    assert len(label_misses(pred, GT, m, np.zeros(len(pred), bool), 0.5)) == len(GT)


def test_published_counting_has_no_duplicates():
    pred = _pred()
    m = match(pred, GT, 0.5, counting="published")
    fp = label_false_positives(pred, GT, m, _mask(pred), 0.5, DISTRACTORS)
    assert "duplicate" not in set(fp["label"]) and len(fp) == 7


def test_length_bins():
    assert length_bin([1, 8, 9, 16, 17, 120, 121, 5000]).tolist() == [0, 0, 1, 1, 2, 14, 15, 15]
    assert [bin_name(i) for i in (0, 1, 14, 15)] == ["1-8", "9-16", "113-120", "121+"]
    assert length_bin([15, 16], unit=15, max_bins=4).tolist() == [0, 1]


def test_fp_share_and_misses_per_length_bin():
    pred = _pred()
    ea = analyse_errors(pred, GT, match(pred, GT, 0.5), _mask(pred), 0.5, DISTRACTORS, {"v": 300})
    t = ea.by_length.set_index("length")
    # kept lengths: p0 40, p1 40 (33-40); p4 10, p6 11 (9-16); p3 21 (17-24); p5 30; p10 41; p2 51; p9 111
    assert t.index[-1] == "105-112" and len(t) == 14
    assert t.loc["33-40", ["n_pred", "tp", "fp", "fp_share"]].tolist() == [2, 1, 1, 0.5]
    assert t.loc["9-16", ["n_pred", "fp", "fp_share", "fp_blink", "fp_nothing", "n_pred_micro"]].tolist() == \
        [2, 2, 1.0, 1, 1, 2]
    assert t.loc["105-112", ["fp", "fp_other-type"]].tolist() == [1, 1]
    assert np.isnan(t.loc["1-8", "fp_share"]) and t.loc["1-8", "n_pred"] == 0
    # ground truth binned by its own length: micro 10 and 11 (9-16, both missed), macro 21 (missed), macro 40 (hit)
    assert t.loc["9-16", ["n_gt_micro", "fn_micro"]].tolist() == [2, 2]
    assert t.loc["17-24", ["n_gt_macro", "fn_macro"]].tolist() == [1, 1]
    assert t.loc["33-40", ["n_gt_macro", "fn_macro"]].tolist() == [1, 0]
    assert t["fp"].sum() == len(ea.false_positives) == 8 and t["fn_macro"].sum() + t["fn_micro"].sum() == 3
    rows = ea.rows()
    assert rows.columns.tolist() == ERROR_COLUMNS
    assert rows["error"].value_counts().to_dict() == {"FP": 8, "FN": 3}
    assert rows.loc[rows["error"] == "FN", "score"].isna().all()


def test_chance_of_touching():
    fp = pd.DataFrame({"video": ["v"], "type": ["micro"], "length": [10], "onset": [0], "offset": [9]})
    gt = pd.DataFrame({"video": ["v"], "type": ["macro"], "onset": [0], "offset": [0]})
    dis = pd.DataFrame({"video": ["v"], "kind": ["blink"], "start": [50], "end": [50]})
    c = touch_chance(fp, gt, dis, {"v": 100}).iloc[0]
    # 91 placements; the blink at 50 is touched from starts 41..50, the macro at 0 from start 0 only
    assert c["blink"] == pytest.approx(10 / 91) and c["other-type"] == pytest.approx(1 / 91)
    assert c["mislocalised"] == 0.0 and c["nothing"] == pytest.approx(80 / 91)


def test_markdown_and_plot(tmp_path):
    pred = _pred()
    ea = analyse_errors(pred, GT, match(pred, GT, 0.5), _mask(pred), 0.5, DISTRACTORS, {"v": 300})
    md = errors_markdown(ea, "cross-fold, one-to-one", 30.0)
    assert "## Error analysis" in md and "9 predictions, 8 false positives; 4 ground truths, 3 missed" in md
    assert "| blink | 0 | 1 | 1 | 12% | 25% |" in md
    assert "| expression of its type, IoU below 0.5 | 2 | 0 | 2 | 25% |" in md
    assert "| 9-16 | 2 | 2 | 1.00 | 0 | 0 | 2 | 2 |" in md and "0.27 s at 30 fps" in md
    assert "lists no distractors" not in md
    md_real = errors_markdown(analyse_errors(pred, GT, match(pred, GT, 0.5), _mask(pred), 0.5), "x")
    assert "lists no distractors" in md_real and "| blink |" not in md_real
    plot_errors(ea, tmp_path / "errors.png", "test")
    assert (tmp_path / "errors.png").stat().st_size > 1000
