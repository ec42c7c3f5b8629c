"""The published F1 script's search as the ``paper`` protocol (``evaluate.paper_search``): hand cases where
each published detail (epoch range, per-type grids, ``score > k``, scores read back from ``%.4f`` text minus
its last character, the tie order) gives another result than m2es's own search, and the presets that set it."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd
import pytest

from pipeline.core.params import load_dataset, load_params, stage_params
from pipeline.errors import ConfigError
from pipeline.evaluate import _protocol_block, evaluate_predictions
from pipeline.scoring.metrics import f1_score, match
from pipeline.scoring.params import EvaluateParams
from pipeline.scoring.protocols import PAPER_SEARCH_DEFAULT, Choice, PaperSearch, paper_search, published_f1, threshold_grid

SHARED = threshold_grid({"min": 0.0, "max": 1.0, "num": 101})
PUBLISHED = {"epochs": [6, 30],
             "grid": {"macro": {"min": 0.3, "max": 0.499, "step": 0.001},
                      "micro": {"min": 0.1, "max": 0.499, "step": 0.001}},
             "strict": True, "score_text": {"format": "%.4f", "drop_last": 1}, "ties": "first"}
#: each published setting and m2es's
OURS = {"epochs": "all", "grid": {"macro": "shared", "micro": "shared"}, "strict": False, "score_text": None,
        "ties": "last"}


def search(**changes) -> PaperSearch:
    """The published search with ``changes`` (keys of the section)."""
    return PaperSearch.from_section({**PUBLISHED, **changes}, SHARED)


def gt_table() -> pd.DataFrame:
    """One subject, one video: a macro interval [100, 140] and a micro one [300, 312]."""
    return pd.DataFrame({"video": "v", "subject": "s1", "type": ["macro", "micro"], "onset": [100, 300],
                         "offset": [140, 312]})


def preds(rows: list[tuple[int, str, int, int, float]]) -> pd.DataFrame:
    """Predictions (epoch, type, onset, offset, score) of video v, subject s1."""
    return pd.DataFrame([{"video": "v", "subject": "s1", "fold": "s1", "epoch": e, "type": t, "onset": on,
                          "offset": off, "score": sc} for e, t, on, off, sc in rows])


def run(pred: pd.DataFrame, s: PaperSearch, gt: pd.DataFrame | None = None):
    gt = gt_table() if gt is None else gt
    m = match(pred, gt, 0.5, "published")
    epochs = sorted(int(e) for e in pred["epoch"].unique())
    return paper_search(pred, gt, m, ["s1"], epochs, s)


def test_the_real_presets_load_the_published_search_and_the_synthetic_ones_ours() -> None:
    params = load_params()
    for name in ("casme2", "samm_lv"):
        settings = EvaluateParams.from_params(stage_params(params, "evaluate", load_dataset(name)))
        s = settings.search
        assert not s.shared and s.epochs == (6, 30) and s.strict and s.score_text == ("%.4f", 1) and s.ties == "first"
        assert len(s.grids["macro"]) == 200 and s.grids["macro"][0] == 0.3 and s.grids["macro"][-1] == 0.499
        assert len(s.grids["micro"]) == 400 and s.grids["micro"][0] == 0.1 and s.grids["micro"][-1] == 0.499
        # each threshold is the double nearest its decimal, as k / 1000 in the script
        assert s.grids["micro"].tolist() == [k / 1000 for k in range(100, 500)]
        assert s.grids["macro"].tolist() == [k / 1000 for k in range(300, 500)]
        assert settings.grid.tolist() == SHARED.tolist()      # cross-fold, fixed and thresholds.json keep theirs
    for name in ("synth_casme2", "synth_samm", "generic"):
        settings = EvaluateParams.from_params(stage_params(params, "evaluate", load_dataset(name)))
        assert settings.search.shared and settings.paper_search == PAPER_SEARCH_DEFAULT


def test_scores_are_read_back_as_the_script_reads_its_text_files() -> None:
    s = search()
    got = s.read_scores(np.array([0.45678, 0.30096, 0.30049, 0.99996, 0.1]))
    assert got.tolist() == [0.456, 0.301, 0.3, 1.0, 0.1]      # '%.4f' first (0.30096 -> '0.3010'), then cut
    assert search(score_text=None).read_scores(np.array([0.45678])).tolist() == [0.45678]


def test_score_text_decides_a_hand_case() -> None:
    """A macro hit scoring 0.30049 is '0.3005' in the text file, read back as 0.300: not > 0.300, never kept."""
    pred = preds([(6, "macro", 100, 140, 0.30049), (6, "micro", 300, 312, 0.45)])
    choice, f1, mask = run(pred, search())
    assert mask.tolist() == [False, True] and f1 == pytest.approx(2 / 3)
    choice, f1, mask = run(pred, search(score_text=None))       # the raw score passes 0.300
    assert mask.tolist() == [True, True] and f1 == 1.0 and choice.thresholds["macro"] == 0.3


def test_strict_comparison_decides_a_hand_case() -> None:
    """A micro hit at exactly 0.100, the lowest micro threshold: kept by >=, never by >."""
    pred = preds([(6, "macro", 100, 140, 0.45), (6, "micro", 300, 312, 0.1)])
    assert run(pred, search())[2].tolist() == [True, False]
    choice, f1, mask = run(pred, search(strict=False))
    assert mask.tolist() == [True, True] and f1 == 1.0 and choice.thresholds["micro"] == 0.1


def test_per_type_grids_decide_a_hand_case() -> None:
    """A macro hit at 0.25 is below the published macro grid (0.300-0.499), and a macro false positive at 0.9
    is above it: the published grid can keep neither the hit alone; the shared 0-1 grid can."""
    pred = preds([(6, "macro", 100, 140, 0.25), (6, "macro", 500, 540, 0.9), (6, "micro", 300, 312, 0.45)])
    choice, f1, mask = run(pred, search())
    assert mask.tolist() == [False, True, True] and f1 == pytest.approx(2 / 4)
    shared = {"macro": "shared", "micro": "shared"}
    choice, f1, mask = run(pred, search(grid=shared))
    assert f1 == pytest.approx(2 * 2 / (3 + 2)) and mask.tolist() == [True, True, True]   # 0.2 (shared) keeps all


def test_epoch_range_decides_a_hand_case() -> None:
    """Epoch 5 is perfect, epochs 6-30 hit only the macro interval: the published range never looks at 5."""
    rows = [(5, "macro", 100, 140, 0.45), (5, "micro", 300, 312, 0.45)]
    rows += [(e, "macro", 100, 140, 0.45) for e in range(6, 31)]
    choice, f1, _ = run(preds(rows), search())
    assert choice.epoch == 6 and f1 == pytest.approx(2 / 3)
    choice, f1, _ = run(preds(rows), search(epochs="all"))
    assert choice.epoch == 5 and f1 == 1.0


def test_ties_resolve_as_the_script_does() -> None:
    """Epochs 6 and 7 equal, every threshold under the scores equally good: the script keeps its first maximum
    (the earliest epoch, the lowest macro, then the lowest micro threshold); m2es's order the last."""
    rows = [(e, t, on, off, 0.45) for e in (6, 7) for t, on, off in (("macro", 100, 140), ("micro", 300, 312))]
    choice, f1, _ = run(preds(rows), search())
    assert (choice.epoch, choice.thresholds) == (6, {"macro": 0.3, "micro": 0.1}) and f1 == 1.0
    choice, f1, _ = run(preds(rows), search(ties="last"))
    assert (choice.epoch, choice.thresholds) == (7, {"macro": 0.449, "micro": 0.449}) and f1 == 1.0


def test_published_f1_formula_agrees_with_ours_up_to_the_last_bit() -> None:
    tp, n = np.meshgrid(np.arange(0, 40), np.arange(0, 60))
    ok = n >= tp
    a, b = published_f1(tp[ok], n[ok], 37), f1_score(tp[ok], n[ok], 37)
    assert np.allclose(a, b, rtol=1e-15, atol=0) and published_f1(np.array([0]), np.array([5]), 3).tolist() == [0.0]


def brute_force(pred: pd.DataFrame, gt: pd.DataFrame, s: PaperSearch, epochs: list[int]):
    """The script's loops, literally: per epoch, per macro then micro threshold (ascending), `F1 > best`;
    then the first epoch with the largest F1."""
    m = match(pred, gt, 0.5, "one-to-one")
    tp = m.tp
    score = s.read_scores(pred["score"])
    n_gt = len(gt)
    per_epoch = []
    for e in epochs:
        at = pred["epoch"].to_numpy() == e
        best = (0.0, None, None)
        counts = {}
        for t in ("macro", "micro"):
            sel = at & (pred["type"].to_numpy() == t)
            counts[t] = [(int((tp & sel & (score > k)).sum()), int((sel & (score > k)).sum())) for k in s.grids[t]]
        for (i, (tp1, n1)), (j, (tp2, n2)) in itertools.product(enumerate(counts["macro"]), enumerate(counts["micro"])):
            if (n1 == 0 and n2 == 0) or (tp1 == 0 and tp2 == 0):
                f1 = 0.0
            else:
                r, p = (tp1 + tp2) / n_gt, (tp1 + tp2) / (n1 + n2)
                f1 = 2 * (r * p) / (r + p)
            if f1 > best[0]:
                best = (f1, s.grids["macro"][i], s.grids["micro"][j])
        per_epoch.append(best)
    f1s = [b[0] for b in per_epoch]
    k = f1s.index(max(f1s))
    return epochs[k], per_epoch[k]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_vectorised_search_is_the_scripts_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gts, rows = [], []
    for v in range(4):
        on = np.arange(50, 950, 150)[: int(rng.integers(2, 6))]
        types = rng.choice(["macro", "micro"], len(on))
        gts.append(pd.DataFrame({"video": f"v{v}", "subject": "s1", "type": types, "onset": on,
                                 "offset": on + np.where(types == "macro", 40, 12)}))
        for e in (4, 5, 6, 7):
            for i, t in enumerate(types):
                if rng.random() < 0.7:
                    rows.append((f"v{v}", e, t, on[i] + int(rng.integers(-3, 4)), on[i] + (40 if t == "macro" else 12),
                                 float(rng.uniform(0.2, 0.55))))
            for _ in range(int(rng.integers(2, 6))):
                t = rng.choice(["macro", "micro"])
                o = int(rng.integers(0, 950))
                rows.append((f"v{v}", e, t, o, o + 20, float(rng.uniform(0.05, 0.6))))
    pred = pd.DataFrame(rows, columns=["video", "epoch", "type", "onset", "offset", "score"]).assign(subject="s1")
    gt = pd.concat(gts, ignore_index=True)
    s = search(epochs=[5, 7], grid={"macro": {"min": 0.3, "max": 0.49, "step": 0.01},
                                    "micro": {"min": 0.1, "max": 0.49, "step": 0.01}})
    choice, f1, _ = paper_search(pred, gt, match(pred, gt, 0.5, "one-to-one"), ["s1"], [4, 5, 6, 7], s)
    epoch, (f1_ref, macro, micro) = brute_force(pred, gt, s, [5, 6, 7])
    assert f1 == f1_ref and choice.epoch == epoch
    if f1_ref > 0:
        assert choice.thresholds == {"macro": macro, "micro": micro}


def test_epochs_out_of_range_warn_and_clip_or_fail(caplog: pytest.LogCaptureFixture) -> None:
    s = search()
    with caplog.at_level(logging.WARNING):
        assert s.searched_epochs([1, 6, 7, 8]) == [6, 7, 8]
    assert "only epochs 6-8 were predicted" in caplog.text
    with pytest.raises(ConfigError, match="none of the predicted epochs"):
        s.searched_epochs([1, 2, 3])
    assert search(epochs="all").searched_epochs([3, 1]) == [1, 3]


@pytest.mark.parametrize("bad,match_", [({"epochs": [8, 6]}, "first <= last"), ({"strict": "yes"}, "strict"),
                                        ({"grid": {"macro": {"min": 0.3, "max": 0.4995, "step": 0.001}}}, "whole"),
                                        ({"score_text": {"format": "%d%d", "drop_last": 1}}, "format"),
                                        ({"ties": "middle"}, "ties"), ({"epoch": "all"}, "did you mean epochs")])
def test_bad_sections_are_refused(bad: dict, match_: str) -> None:
    with pytest.raises(ConfigError, match=match_):
        EvaluateParams.from_params({"paper_search": bad})


def test_evaluate_runs_the_published_search_for_paper_only() -> None:
    """Under the casme2 preset: the paper protocol's choice comes from the published search (its block says
    so), the all-subjects choice of thresholds.json stays on the shared grid with >=; the synthetic presets'
    paper protocol is the all-subjects choice, as before."""
    pred = preds([(6, "macro", 100, 140, 0.25), (6, "micro", 300, 312, 0.45), (7, "macro", 100, 140, 0.35)])
    gt = gt_table()
    params = load_params()
    real = EvaluateParams.from_params(stage_params(params, "evaluate", load_dataset("casme2")))
    ev = evaluate_predictions(pred, gt, ["s1"], real, "published")
    # published: the macro hit at 0.25 is under the grid; epochs 6 and 7 tie at 2/3, the first wins
    assert ev.results["paper"].choices["s1"] == Choice(6, {"macro": 0.3, "micro": 0.1})
    assert ev.results["paper"].counts["overall"].f1 == pytest.approx(2 / 3)
    assert ev.all_subjects == (Choice(6, {"macro": 0.25, "micro": 0.45}), 1.0)   # thresholds.json: ours
    block = _protocol_block(ev.results["paper"], ev)
    assert block["search"]["comparison"] == ">" and block["search"]["epochs"] == [6, 30]
    synth = EvaluateParams.from_params(stage_params(params, "evaluate", load_dataset("synth_casme2")))
    ev2 = evaluate_predictions(pred, gt, ["s1"], synth, "published")
    assert ev2.paper_search is None and ev2.results["paper"].choices["s1"] == ev2.all_subjects[0]
    assert "search" not in _protocol_block(ev2.results["paper"], ev2)
