"""Rendered synthetic faces: real dlib finds them, motions have the stated sizes, SAMM timing."""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.core.params import load_dataset, load_params, stage_params
from pipeline.synthetic.faces import FaceDetector, make_subject
from pipeline.synthetic.render import VideoRenderer, render_sequence
from pipeline.synthetic.schedule import Event, Instance, sample_schedule

REPO = Path(__file__).resolve().parents[2]


def synth_params(preset: str) -> dict:
    return stage_params(load_params(REPO / "params.yaml"), "synth", load_dataset(preset, REPO / "configs" / "datasets"))


def quiet(p: dict) -> dict:
    """Params without any distractor (no blink, head motion, lighting or noise)."""
    p = copy.deepcopy(p)
    d = p["distractors"]
    for k in ("blink", "turn", "jerk", "lighting"):
        d[k]["rate_per_min"] = 0
    d["drift"]["amplitude_px224"] = d["drift"]["rotation_deg"] = d["drift"]["scale"] = 0
    d["noise_sigma"] = 0
    return p


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def _gray(f: np.ndarray) -> np.ndarray:
    return f if f.ndim == 2 else cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)


@pytest.mark.parametrize("preset", ["synth_casme2", "synth_samm"])
def test_dlib_finds_every_subject_in_sampled_frames(detector, preset):
    """>= 99% of frames (all distractors on, JPEG written) across subjects, including distractor frames."""
    p = synth_params(preset)
    fps = 30.0  # timing does not matter for detection; 30 fps keeps the clip short
    color = preset == "synth_casme2"
    found = total = 0
    for s in range(p["n_subjects"]):
        subject = make_subject(s, p["face"], tuple(p["size"]), color, p["seed"], detector)
        sched = sample_schedule(450, fps, p, np.random.default_rng([s, 9]))
        r = VideoRenderer(subject, sched, p, seed=s)
        special = {t for e in sched.events for t in (e.start + e.end) // 2 + np.array([-1, 0, 1])}
        special |= {i.apex for i in sched.instances}
        sample = sorted(special | set(range(0, 450, 15)))
        for t, frame in enumerate(r.frames()):
            if t in sample:
                ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, p["jpeg_quality"]])
                total += 1
                found += detector.detect(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)) is not None
    assert total >= 90
    assert found / total >= 0.99, (found, total)


def test_subjects_are_distinct(detector):
    p = synth_params("synth_casme2")
    subs = [make_subject(s, p["face"], (320, 240), True, 0, detector) for s in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            diff = np.abs(subs[a].image.astype(int) - subs[b].image.astype(int)).mean()
            assert diff > 15, (a, b, diff)
            shape_a = (subs[a].landmarks - subs[a].landmarks.mean(0)) / subs[a].face_px
            shape_b = (subs[b].landmarks - subs[b].landmarks.mean(0)) / subs[b].face_px
            assert np.abs(shape_a - shape_b).mean() > 0.005


def _flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return cv2.calcOpticalFlowFarneback(_gray(a), _gray(b), None, 0.5, 3, 9, 5, 5, 1.1, 0)


def _landmark_motion(flow: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    xy = np.round(landmarks).astype(int)
    return np.linalg.norm(flow[xy[:, 1], xy[:, 0]], axis=1)


def test_measured_apex_motion_is_in_the_stated_ranges(detector):
    """Flow measured between onset and apex frames at the landmarks, in px at a 224-px face."""
    p = quiet(synth_params("synth_casme2"))
    subject = make_subject(1, p["face"], tuple(p["size"]), True, 0, detector)
    to224 = 224.0 / subject.face_px
    n = 0
    for k in range(4):
        sched = sample_schedule(600, 30, p, np.random.default_rng([k, 5]))
        r = VideoRenderer(subject, sched, p, seed=k)
        frames = list(r.frames())
        busy = np.zeros(600, bool)
        for i in sched.instances:
            busy[i.onset + 1:i.offset] = True
            peak = _landmark_motion(_flow(frames[i.onset], frames[i.apex]), subject.landmarks).max() * to224
            lo, hi = (3.0, 8.0) if i.type == "macro" else (1.0, 2.0)
            assert lo * 0.75 <= peak <= hi * 1.25, (i, peak)
            assert peak == pytest.approx(i.amplitude_px224, rel=0.3), (i, peak)
            n += 1
        idle = np.flatnonzero(~busy)
        for t in idle[:: max(1, len(idle) // 10)]:
            assert np.array_equal(frames[t], subject.image)  # nothing moves outside intervals
    assert n >= 8


def test_macro_motion_is_seen_by_dlib_and_blinks_move_only_the_eyes(detector):
    p = quiet(synth_params("synth_casme2"))
    inst = [Instance("macro", 10, 20, 35, ["brow_raise", "lip_corner_pull"], 7.0)]
    ev = [Event("blink", 50, 58, {"strength": 1.0})]
    clip = render_sequence(70, size=(320, 240), instances=inst, events=ev, params=p, detector=detector)
    to224 = 224.0 / clip.subject.face_px
    ref = detector.landmarks(clip.frames[0])
    apex = detector.landmarks(clip.frames[20])
    moved = np.r_[17:27, 48, 54]
    assert (np.linalg.norm(apex[moved] - ref[moved], axis=1).max() * to224) > 4.0
    np.testing.assert_allclose(np.linalg.norm(clip.landmarks[20] - clip.landmarks[0], axis=1).max() * to224, 7.0,
                               rtol=1e-3)
    flow = _flow(clip.frames[0], clip.frames[54])
    motion = _landmark_motion(flow, clip.subject.landmarks) * to224
    eyes, rest = np.r_[37, 38, 43, 44], np.r_[0:17, 27:36, 48:68]
    assert motion[eyes].min() > 3.0  # a blink is large and local
    assert motion[rest].max() < 0.5


def test_samm_ground_truth_survives_the_200_to_30_resample(detector):
    """200-fps ground truth mapped with the resample rule lands where the kept frames move."""
    from pipeline.resample import kept_positions, remap_intervals

    p = quiet(synth_params("synth_samm"))
    subject = make_subject(0, p["face"], (224, 168), False, 0, detector)
    n = 1600
    sched = sample_schedule(n, 200, p, np.random.default_rng(11))
    assert sched.instances
    r = VideoRenderer(subject, sched, p, seed=0)
    kept = kept_positions(n, 200, 30)
    np.testing.assert_array_equal(kept[:7], [0, 6, 13, 20, 26, 33, 40])
    np.testing.assert_array_equal(kept, np.floor(np.arange(len(kept)) * 20 / 3).astype(int))
    frames = {t: f for t, f in enumerate(r.frames()) if t in set(kept.tolist())}
    on, ap, off = (np.array([getattr(i, k) for i in sched.instances]) for k in ("onset", "apex", "offset"))
    new_on, new_ap, new_off = remap_intervals(on, ap, off, kept)
    # the published rule, 1-based frames / (20/3) rounded up, agrees within one frame
    np.testing.assert_allclose(new_on + 1, np.ceil((on + 1) * 3 / 20), atol=1)
    inside = np.zeros(len(kept), bool)
    for a, b in zip(new_on, new_off):
        inside[a:b + 1] = True
    for j, t in enumerate(kept):
        if not inside[j]:
            assert np.array_equal(frames[t], subject.image), j
    for a, b, c in zip(new_on, new_ap, new_off):
        assert not np.array_equal(frames[kept[b]], subject.image)
        assert a <= b <= c
