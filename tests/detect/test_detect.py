"""The baseline's machinery (:mod:`pipeline.detect`): its params, the motion signal on hand-made flow, and
peak-to-interval detection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from extract.test_roi_flow import S, bump, crop_landmarks, similarity_flow
from helpers.params import assert_section_refuses
from pipeline.detect.intervals import detect, find_peaks, interval_around, suppress
from pipeline.detect.params import BaselineParams
from pipeline.detect.signal import motion_signal, two_sided
from pipeline.extract.params import RoiParams
from pipeline.extract.roi_flow import interocular

ROI = RoiParams.from_params({})
FPS = 30.0


def params(**kw) -> BaselineParams:
    return BaselineParams.from_params(kw)


def noise_flow(n: int, sigma: float = 0.01, seed: int = 0) -> np.ndarray:
    """Blocky background flow noise (px; it accumulates over a reference span like a random walk, harsher than
    TV-L1's), plus the head's own motion."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, sigma, (n, 8, 8, 2))
    fine = np.repeat(np.repeat(coarse, S // 8, axis=1), S // 8, axis=2)
    return fine + 0.3 * similarity_flow(n, seed=seed)


def expression(n: int, landmark: int, start: int, length: int, amp: float = 3.0) -> np.ndarray:
    """A local motion at ``landmark``: out for length // 2 fields, back for the rest (frames start..start+length)."""
    lm = crop_landmarks()
    field = bump(lm[landmark], (0.0, 1.0), 0.1 * interocular(lm))
    flow = np.zeros((n, S, S, 2))
    half = length // 2
    flow[start:start + half] = field * amp / half
    flow[start + half:start + length] = -field * amp / (length - half)
    return flow


def signal_of(flow: np.ndarray, p: BaselineParams | None = None) -> np.ndarray:
    return motion_signal(flow.astype(np.float16), crop_landmarks(), ROI, p or params(), FPS)


# ------------------------------------------------------------------ params


def test_unknown_and_bad_keys_are_refused() -> None:
    assert_section_refuses(BaselineParams, [
        ({"top_kk": 2}, r"unknown key params\.yaml: baseline\.top_kk \(did you mean top_k\?\)"),
        ({"eyes": "blink"}, r"baseline\.eyes = 'blink' is not one of subtract, ignore, keep"),
        ({"spans": [2, 1]}, r"baseline\.spans = \[2, 1\]; list increasing positive integers"),
        ({"spans": []}, r"baseline\.spans"),
        ({"spans": [0, 1]}, r"baseline\.spans"),
        ({"interval_fraction": 1.0}, r"baseline\.interval_fraction = 1\.0; use a value in \(0, 1\)"),
        ({"top_k": 0}, r"baseline\.top_k must be at least 1"),
    ])
    assert params().reference_spans(12) == [12, 24, 48, 96]


# ------------------------------------------------------------------ the signal


def test_two_sided_reference_keeps_the_motion_and_drops_its_echo() -> None:
    back = np.zeros(40)
    back[10:15] = 1.0   # the moved face against 8 frames back ...
    back[18:23] = 1.0   # ... and its echo 8 frames later (the reference frame then holds the moved face)
    out = two_sided(back, 8)
    assert out[10:15].tolist() == [1.0] * 5 and out[15:].sum() == 0 and out[:10].sum() == 0


@pytest.mark.parametrize("start,length,kind", [(120, 10, "micro"), (180, 40, "macro")])
def test_a_local_motion_is_found_with_its_onset_offset_and_type(start: int, length: int, kind: str) -> None:
    n = 300
    flow = noise_flow(n) + expression(n, 54, start, length)  # mouth corner; fields start.. -> frames start..+length
    found = detect(signal_of(flow), FPS, params())
    best = found.sort_values("score").iloc[-1]
    onset, offset = start, start + length
    inter = min(offset, best.offset) - max(onset, best.onset) + 1
    iou = inter / (max(offset, best.offset) - min(onset, best.onset) + 1)
    assert iou >= 0.5, (best.to_dict(), onset, offset)
    assert best.type == kind
    assert 0.0 < best.score < 1.0
    others = found.drop(index=best.name)
    assert (others["score"] < 0.75 * best.score).all(), found   # the noise's peaks score well below it


def test_a_blink_is_suppressed_by_default_and_found_when_the_eyes_count() -> None:
    n = 300
    lm = crop_landmarks()
    lid = np.zeros((n, S, S, 2))
    for idx in (37, 38, 43, 44):   # upper lids down and up: 6 frames
        field = bump(lm[idx], (0.0, 1.0), 0.08 * interocular(lm))
        lid[150:153] += field
        lid[153:156] -= field
    flow = noise_flow(n, seed=1) + lid
    near = lambda df: df[(df.onset <= 160) & (df.offset >= 146)]  # noqa: E731
    default = detect(signal_of(flow), FPS, params())
    kept = detect(signal_of(flow, params(eyes="keep")), FPS, params(eyes="keep"))
    assert len(near(kept)) == 1 and near(kept)["score"].iloc[0] > 0.5   # the check below can fail
    assert near(default).empty or near(default)["score"].max() < 0.3, near(default)


def test_the_signal_is_normalised_per_video() -> None:
    n = 300
    flow = noise_flow(n, sigma=0.05, seed=2) + expression(n, 48, 100, 30, amp=8.0)  # noise above noise_floor
    a, b = signal_of(flow), signal_of(3.0 * flow)   # a face three times as mobile, noise and all
    assert np.median(a) == pytest.approx(0.0, abs=1e-9)
    assert a.max() > 5
    np.testing.assert_allclose(a, b, atol=0.1 * a.max())
    pa, pb = detect(a, FPS, params()), detect(b, FPS, params())
    assert pa.sort_values("score").iloc[-1][["onset", "offset", "type"]].tolist() == \
        pb.sort_values("score").iloc[-1][["onset", "offset", "type"]].tolist()


# ------------------------------------------------------------------ peaks to intervals


def test_peaks_intervals_type_and_suppression() -> None:
    s = np.zeros(100)
    s[10:15] = [1, 4, 4, 2, 1]    # a flat top: one peak, at its first frame
    s[40:57] = 6.0                # a plateau of 17 frames
    s[70] = 2.0                   # below min_height
    assert find_peaks(s, 3.0).tolist() == [11, 40]
    assert interval_around(s, 11, 1.0) == (10, 14)
    found = detect(s, FPS, params(interval_fraction=0.5, min_height=3.0))
    assert found[["onset", "offset", "type"]].values.tolist() == [[11, 13, "micro"], [40, 56, "macro"]]
    assert found["score"].tolist() == pytest.approx([4 / 14, 6 / 16])
    s2 = np.zeros(100)
    s2[20:36] = 5.0   # offset - onset = 15 frames = 0.5 s: still micro (MEGC)
    assert detect(s2, FPS, params())["type"].tolist() == ["micro"]
    cands = pd.DataFrame({"onset": [0, 5, 20], "offset": [10, 12, 30], "type": ["macro", "micro", "micro"],
                          "score": [0.4, 0.6, 0.1], "peak": [5, 8, 25], "height": [1.0, 2.0, 3.0]})
    assert suppress(cands)[["onset", "score"]].values.tolist() == [[5, 0.6], [20, 0.1]]
