"""The learning chain end to end: features that encode the truth through the real train and
evaluate stages with the CPU-scale IAENet presets must be spotted (cross-fold F1 >= 0.9 per type).

The oracle dataset (:mod:`helpers.oracle`): 3 subjects x 2 videos x 20 s at 30 fps, 4 macro
(30-90 frames) and 4 micro (10-15 frames) intervals per video, 16 features per stream of which
one channel per type ramps to 1 inside its intervals, noise sigma 0.1. Whatever breaks between
the annotations and the F1 (labels, windows, loss, decoding, NMS / WBF, thresholds, matching)
drops the F1 far below the bar: docs/learning_chain.md records what each deliberate breakage
gave. The presets run without their ``input_norm`` block (see ``run_learning_chain``: per-channel
standardisation lifts the oracle's noise channels to the signal's scale; with it the CAS(ME)^2
preset measured macro 0.863 / micro 0.957). About 40 s (iaenet_cpu) and 55 s (iaenet_cpu_samm) on 2 CPU cores, one torch thread.
"""

from __future__ import annotations

import copy
import logging

import pytest

from helpers.oracle import OracleSpec, cross_fold, run_learning_chain
from models.iaenet import build_model, count_parameters
from pipeline.learning.presets import REPO_PRESET_DIR, load_model_preset

log = logging.getLogger(__name__)

SPEC = OracleSpec(n_subjects=3, videos_per_subject=2, n_frames=600, macro=4, micro=4, dim=16, seed=0)
MIN_F1 = 0.9


@pytest.mark.parametrize("preset", ["iaenet_cpu", "iaenet_cpu_samm"])   # NMS, WBF
def test_oracle_features_are_spotted_through_train_and_evaluate(workspace, one_thread, preset: str) -> None:
    doc = run_learning_chain(workspace, preset, SPEC)
    n_gt = SPEC.n_subjects * SPEC.videos_per_subject
    assert doc["ground_truth"] == {"macro": SPEC.macro * n_gt, "micro": SPEC.micro * n_gt,
                                   "overall": (SPEC.macro + SPEC.micro) * n_gt, "videos": n_gt,
                                   "subjects": SPEC.n_subjects}
    f1 = cross_fold(doc)
    log.info("%s: cross-fold F1 %s", preset, {t: c["f1"] for t, c in f1.items()})
    for kind in ("macro", "micro"):
        assert f1[kind]["f1"] >= MIN_F1, f"{preset}: cross-fold {kind} F1 {f1[kind]} < {MIN_F1} ({f1})"


# The CPU presets are the paper's networks, narrower: the same blocks, levels, loss and inference;
# only channel widths, the recipe, the training window step, the input standardisation (for
# features of mixed units such as roi_flow's) and the ensemble of two differ. (section, key) -> allowed.
SCALED = {("model", None): {"input_norm", "ensemble"}, ("model", "base"): {"dim"}, ("model", "encoder"): {"dims"}, ("model", "heads"): {"dim"},
          ("window", None): {"train_step"},
          ("train", None): {"lr", "batch_size", "epochs", "warmup_epochs", "schedule", "ema_decay"},
          # m2es's own post-processing, kept in the CPU presets so the default run's numbers stay (docs/reproduce.md)
          ("inference", None): {"nms_ties", "wbf_from_epoch", "wbf_top_k", "wbf_unmerged_score"}}


def _differences(a: dict, b: dict, path: tuple = ()) -> set[tuple]:
    out = set()
    for key in set(a) | set(b):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out |= _differences(x, y, path + (key,))
        elif x != y:
            out.add(path + (key,))
    return out


@pytest.mark.parametrize("cpu,paper,params", [("iaenet_cpu", "iaenet_casme2", 3_660_302),
                                              ("iaenet_cpu_samm", "iaenet_samm", 3_274_350)])
def test_cpu_presets_are_the_paper_networks_narrowed(cpu: str, paper: str, params: int) -> None:
    """The parameter counts their headers document (2048-wide I3D features), and no change but the scaled keys."""
    small, big = load_model_preset(cpu), load_model_preset(paper)
    members = small["model"].get("ensemble", 1)
    assert count_parameters(build_model(small, 2048)) == params * members    # the header's count is per member
    assert f"{params:,}" in (REPO_PRESET_DIR / f"{cpu}.yaml").read_text()
    diff = _differences(copy.deepcopy(small), copy.deepcopy(big)) - {("name",)}
    allowed = {(s, k, key) if k else (s, key) for (s, k), keys in SCALED.items() for key in keys}
    assert diff <= allowed, f"{cpu} differs from {paper} beyond channel widths and recipe: {sorted(diff - allowed)}"
    assert small["model"]["base"]["dim"] < big["model"]["base"]["dim"]
