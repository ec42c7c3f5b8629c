"""The published post-processing schedule as parameters of a model preset's ``inference`` section: NMS before
epoch 16 then WBF (SAMM-LV), WBF not capped at top-k, an unmerged WBF box keeping its raw score, NMS taking the
later proposal on equal scores. Hand cases where each published setting and m2es's give other intervals."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.learning.postprocess import SWITCH_DEFAULTS, check_inference, method_at, nms_1d, suppress, wbf_1d
from pipeline.learning.presets import load_model_preset

A = np.array
PUBLISHED = {"nms_ties": "later", "wbf_top_k": False, "wbf_unmerged_score": "raw"}
OURS = {"nms_ties": "earlier", "wbf_top_k": True, "wbf_unmerged_score": "power", "wbf_from_epoch": None}


def test_paper_presets_set_the_published_values_and_cpu_presets_ours() -> None:
    casme2, samm = load_model_preset("iaenet_casme2")["inference"], load_model_preset("iaenet_samm")["inference"]
    assert {k: casme2[k] for k in PUBLISHED} == PUBLISHED and casme2["method"] == "nms"
    assert {k: samm[k] for k in PUBLISHED} == PUBLISHED and samm["method"] == "wbf" and samm["wbf_from_epoch"] == 16
    for name in ("iaenet_cpu", "iaenet_cpu_samm"):    # set explicitly: the default run's numbers do not move
        inf = load_model_preset(name)["inference"]
        assert {k: inf[k] for k in OURS} == OURS
    assert SWITCH_DEFAULTS == OURS                       # a checkpoint from before the keys predicts as it did


def test_nms_ties_hand_case() -> None:
    """Two overlapping proposals of equal score: NMS keeps one; published the later, ours the earlier."""
    on, off, sc = A([0.0, 2.0, 50.0]), A([10.0, 12.0, 60.0]), A([0.7, 0.7, 0.9])
    assert nms_1d(on, off, sc, 0.01, ties="later").tolist() == [2, 1]
    assert nms_1d(on, off, sc, 0.01, ties="earlier").tolist() == [2, 0]
    inf = {"method": "nms", "iou": 0.01, "top_k": 30, "min_length": 4}
    cls = A([1, 1, 1])
    assert suppress(on, off, sc, cls, {**inf, "nms_ties": "later"})["onset"].tolist() == [50, 2]
    assert suppress(on, off, sc, cls, {**inf, "nms_ties": "earlier"})["onset"].tolist() == [50, 0]
    assert suppress(on, off, sc, cls, inf)["onset"].tolist() == [50, 0]          # key absent: ours
    with pytest.raises(ConfigError, match="nms_ties"):
        nms_1d(on, off, sc, 0.01, ties="first")


def test_unmerged_wbf_box_keeps_its_raw_score_hand_case() -> None:
    """power 2: the merged box scores the mean of score**2 either way; the lone box 0.5 (raw) or 0.25 (ours)."""
    on, off, sc = A([0.0, 2.0, 50.0]), A([10.0, 12.0, 60.0]), A([0.9, 0.6, 0.5])
    _, _, raw = wbf_1d(on, off, sc, 0.01, power=2.0, unmerged="raw")
    _, _, pw = wbf_1d(on, off, sc, 0.01, power=2.0, unmerged="power")
    assert raw.tolist() == pytest.approx([(0.81 + 0.36) / 2, 0.5])
    assert pw.tolist() == pytest.approx([(0.81 + 0.36) / 2, 0.25])
    # and it reorders boxes: a lone 0.7 (raw 0.7, powered 0.49) against a merged (0.8**2 + 0.6**2) / 2 = 0.5
    on2, off2, sc2 = A([0.0, 2.0, 50.0]), A([10.0, 12.0, 60.0]), A([0.8, 0.6, 0.7])
    merged_onset = (0 * 0.64 + 2 * 0.36) / 1.0
    assert wbf_1d(on2, off2, sc2, 0.01, power=2.0, unmerged="raw")[0].tolist() == pytest.approx([50, merged_onset])
    assert wbf_1d(on2, off2, sc2, 0.01, power=2.0, unmerged="power")[0].tolist() == pytest.approx([merged_onset, 50])
    with pytest.raises(ConfigError, match="wbf_unmerged_score"):
        wbf_1d(on2, off2, sc2, 0.01, unmerged="max")


def test_wbf_top_k_hand_case() -> None:
    """Three separate boxes, top_k 2: the published WBF keeps all three, ours two."""
    on, off, sc = A([0.0, 50.0, 100.0]), A([10.0, 60.0, 110.0]), A([0.9, 0.8, 0.7])
    inf = {"method": "wbf", "iou": 0.01, "top_k": 2, "min_length": 4}
    cls = A([2, 2, 2])
    assert len(suppress(on, off, sc, cls, {**inf, "wbf_top_k": False})) == 3
    assert len(suppress(on, off, sc, cls, {**inf, "wbf_top_k": True})) == 2
    assert len(suppress(on, off, sc, cls, inf)) == 2


def test_nms_then_wbf_schedule_hand_case() -> None:
    """With wbf_from_epoch 16: after 15 epochs NMS keeps the best box as it is, from 16 WBF fuses the two;
    without the key (or with no epoch) WBF every epoch."""
    on, off, sc, cls = A([0.0, 2.0]), A([10.0, 12.0]), A([0.9, 0.6]), A([1, 1])
    inf = {"method": "wbf", "iou": 0.01, "top_k": 100, "min_length": 4, "score_floor": {"macro": 0.32},
           "wbf_from_epoch": 16, "wbf_top_k": False, "wbf_unmerged_score": "raw", "nms_ties": "later"}
    nms = suppress(on, off, sc, cls, inf, epoch=15)
    assert nms[["onset", "offset", "score"]].values.tolist() == [[0.0, 10.0, 0.9]]
    wbf = suppress(on, off, sc, cls, inf, epoch=16)
    assert wbf[["onset", "offset"]].values.tolist()[0] == pytest.approx([0.8, 10.8]) and wbf["score"][0] == 0.75
    no_schedule = {**inf, "wbf_from_epoch": None}
    assert suppress(on, off, sc, cls, no_schedule, epoch=1).equals(wbf)
    assert suppress(on, off, sc, cls, inf).equals(wbf)                       # no epoch given: the method
    assert [method_at(inf, e) for e in (1, 15, 16, 30)] == ["nms", "nms", "wbf", "wbf"]
    assert method_at({"method": "nms", "wbf_from_epoch": 16}, 30) == "nms"


def test_the_samm_preset_switches_to_wbf_at_its_16th_epoch() -> None:
    inf = load_model_preset("iaenet_samm")["inference"]
    assert method_at(inf, 15) == "nms" and method_at(inf, 16) == "wbf"
    assert method_at(load_model_preset("iaenet_cpu_samm")["inference"], 1) == "wbf"


@pytest.mark.parametrize("key,value", [("nms_ties", "first"), ("wbf_top_k", "yes"), ("wbf_unmerged_score", "max"),
                                       ("wbf_from_epoch", 15.5), ("wbf_from_epoch", True)])
def test_bad_switches_are_refused(key: str, value) -> None:
    with pytest.raises(ConfigError, match=key):
        check_inference({"method": "wbf", key: value})


def test_spot_predicts_as_after_the_final_models_last_epoch() -> None:
    from pipeline.spot.recipe import SpotModel

    def model(blob):
        return SpotModel(path=None, model=None, blob=blob, recipe=None, thresholds={}, threshold_source="")

    assert model({"preset": {"train": {"epochs": 30}}, "extra": {"history": [{}] * 12}}).last_epoch == 12
    assert model({"preset": {"train": {"epochs": 30}}}).last_epoch == 30
