"""Synthetic generator: warps, schedules (statistics vs the real tables), determinism, errors."""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.core.params import load_dataset, load_params, stage_params
from pipeline.errors import ConfigError
from pipeline.synthetic.faces import base_portrait
from pipeline.synthetic.motion import envelope, flow_pair, smooth_random_field, warp_by_field
from pipeline.synthetic.schedule import sample_lengths, sample_schedule

REPO = Path(__file__).resolve().parents[2]


def synth_params(preset: str) -> dict:
    """The repository's ``synth`` params with ``per_dataset.<preset>.synth`` merged in."""
    params = load_params(REPO / "params.yaml")
    return stage_params(params, "synth", load_dataset(preset, REPO / "configs" / "datasets"))


def test_warp_by_field_integer_shift_is_exact():
    img = base_portrait()[100:200, 150:250]
    field = np.zeros(img.shape[:2] + (2,), np.float32)
    field[..., 0], field[..., 1] = 3, -2
    out = warp_by_field(img, field)
    # out(x) = img(x + field): out[y, x] = img[y - 2, x + 3]
    np.testing.assert_array_equal(out[5:-5, 5:-5], img[3:-7, 8:-2])


def test_flow_pair_matches_an_independent_flow_estimate():
    gray = cv2.cvtColor(base_portrait(), cv2.COLOR_BGR2GRAY)[60:284, 120:344]
    f0, f1, truth = flow_pair(gray, max_px=2.0, scale_px=25.0, seed=3)
    assert truth.shape == (224, 224, 2) and truth.dtype == np.float32
    assert np.linalg.norm(truth, axis=2).max() == pytest.approx(2.0, rel=1e-4)
    est = cv2.calcOpticalFlowFarneback(f0, f1, None, 0.5, 3, 15, 5, 5, 1.1, 0)
    inner = (slice(20, -20), slice(20, -20))
    epe = np.linalg.norm(est[inner] - truth[inner], axis=2)
    assert np.median(epe) < 0.25, np.median(epe)
    # a wrong sign would be an error of twice the motion
    assert np.median(np.linalg.norm(est[inner] + truth[inner], axis=2)) > 1.0


def test_smooth_random_field_is_deterministic_and_smooth():
    a = smooth_random_field((64, 80), 1.5, 10.0, seed=1)
    np.testing.assert_array_equal(a, smooth_random_field((64, 80), 1.5, 10.0, seed=1))
    assert not np.array_equal(a, smooth_random_field((64, 80), 1.5, 10.0, seed=2))
    assert np.abs(np.diff(a, axis=1)).max() < 0.3  # smooth: small change between neighbours


def test_envelope_shape():
    env = envelope(30, 5, 10, 20)
    assert env[5] == 0 and env[10] == 1 and env[20] == 0
    assert np.all(env[:5] == 0) and np.all(env[21:] == 0)
    assert np.all(np.diff(env[5:11]) > 0) and np.all(np.diff(env[10:21]) < 0)


def _real_lengths(reference_dir: Path, name: str, type_idx: int, max_frames: int | None = None) -> np.ndarray:
    df = pd.read_csv(reference_dir / name)
    lengths = (df["endFrame"] - df["startFrame"])[df["type_idx"] == type_idx].to_numpy()
    return lengths[lengths <= max_frames] if max_frames else lengths


@pytest.mark.parametrize("preset,csv,fps,cap", [("synth_casme2_large", "casme2_annotation_357.csv", 30, None),
                                                ("synth_samm", "samm_annotation.csv", 200, 800)])
def test_interval_lengths_match_the_real_tables(reference_dir, preset, csv, fps, cap):
    p = synth_params(preset)
    rng = np.random.default_rng(0)
    inst = []
    for _ in range(60):  # 60 videos of 2 minutes
        inst += sample_schedule(int(120 * fps), fps, p, rng).instances
    for type_idx, kind in ((1, "macro"), (2, "micro")):
        real = _real_lengths(reference_dir, csv, type_idx, cap)
        synth = np.array([i.offset - i.onset for i in inst if i.type == kind])
        assert len(synth) > 40
        max_frames = p["expressions"][kind]["max_s"] * fps
        assert synth.min() >= real.min() - 1 and synth.max() <= min(real.max(), max_frames) + 1
        for q in (25, 50, 75):
            r, s = np.percentile(real, q), np.percentile(synth, q)
            assert abs(s - r) <= 0.15 * r + 1, (kind, q, r, s)


def test_default_rates_are_the_real_rates(reference_dir):
    """params.yaml defaults = CAS(ME)^2 instances per minute; the Poisson counts follow them."""
    df = pd.read_csv(reference_dir / "casme2_annotation_357.csv")
    minutes = df.groupby("video")["frame_num"].first().sum() / 30 / 60
    p = synth_params("synth_casme2_large")
    for type_idx, kind in ((1, "macro"), (2, "micro")):
        real_rate = (df["type_idx"] == type_idx).sum() / minutes
        assert p["expressions"][kind]["rate_per_min"] == pytest.approx(real_rate, rel=0.02)
    rng = np.random.default_rng(1)
    n = sum(len(sample_schedule(30 * 120, 30, p, rng).instances) for _ in range(100))  # 200 minutes
    expected = 200 * (p["expressions"]["macro"]["rate_per_min"] + p["expressions"]["micro"]["rate_per_min"])
    assert abs(n - expected) < 0.15 * expected


def test_reference_readme_statistics_cover_the_preset_lengths():
    """Without the tables: the README's published ranges (CAS(ME)^2 macro 16-117, micro 8-16 frames)."""
    p = synth_params("synth_casme2")
    rng = np.random.default_rng(2)
    macro = np.round(sample_lengths(p["expressions"]["macro"]["length_quantiles_s"], 2000, rng, 4.0) * 30)
    micro = np.round(sample_lengths(p["expressions"]["micro"]["length_quantiles_s"], 2000, rng, 0.5) * 30)
    assert 16 <= macro.min() and macro.max() <= 117 and abs(np.median(macro) - 34) <= 3
    assert 8 <= micro.min() and micro.max() <= 15 and abs(np.median(micro) - 13) <= 1


def test_schedule_intervals_are_disjoint_and_distractors_fall_between():
    p = synth_params("synth_casme2")
    rng = np.random.default_rng(3)
    for _ in range(20):
        s = sample_schedule(600, 30, p, rng)
        assert 2 <= len(s.instances) <= 4  # rounded counts: 5 + 4 per minute over 20 s
        spans = sorted((i.onset, i.offset) for i in s.instances)
        for i in s.instances:
            assert 15 <= i.onset < i.apex < i.offset <= 600 - 1 - 15
            assert i.type == "micro" and i.offset - i.onset <= 15 or i.type == "macro"
            assert i.aus and all(a for a in i.aus)
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert b0 - a1 > 15  # min_gap_s 0.5 at 30 fps
        for e in s.events:
            assert all(e.end < a or e.start > b for a, b in spans), e


def test_micro_and_macro_regions():
    p = synth_params("synth_casme2")
    rng = np.random.default_rng(4)
    inst = [i for _ in range(20) for i in sample_schedule(1800, 30, p, rng).instances]
    assert all(1 <= len(i.regions) <= 2 for i in inst if i.type == "micro")
    assert all(2 <= len(i.regions) <= 3 for i in inst if i.type == "macro")
    assert all(3 <= i.amplitude_px224 <= 8 for i in inst if i.type == "macro")
    assert all(1 <= i.amplitude_px224 <= 2 for i in inst if i.type == "micro")


def test_bad_params_raise_config_error():
    p = copy.deepcopy(synth_params("synth_casme2"))
    p["expressions"]["macro"]["length_quantiles_s"] = [2.0, 1.0]
    with pytest.raises(ConfigError, match="length_quantiles_s"):
        sample_schedule(600, 30, p, np.random.default_rng(0))
    p = copy.deepcopy(synth_params("synth_casme2"))
    p["count_model"] = "sometimes"
    with pytest.raises(ConfigError, match="count_model"):
        sample_schedule(600, 30, p, np.random.default_rng(0))


def test_spreadsheets_are_byte_identical_across_saves(tmp_path):
    """Same content, same bytes: otherwise every rerun changes the dataset's DVC hash."""
    import time

    from openpyxl import Workbook, load_workbook

    from pipeline.synthetic.layouts import _save_workbook

    digests = []
    for i in range(2):
        wb = Workbook()
        wb.active.append([15, "disgust1_1", 10, 20, 30])
        _save_workbook(wb, tmp_path / f"{i}.xlsx")
        digests.append((tmp_path / f"{i}.xlsx").read_bytes())
        time.sleep(2.1)   # past the zip format's 2-second time resolution
    assert digests[0] == digests[1]
    assert [c.value for c in load_workbook(tmp_path / "1.xlsx").active[1]] == [15, "disgust1_1", 10, 20, 30]
