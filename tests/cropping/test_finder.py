"""dlib model location, detection, landmarks (real dlib), the face box and track planning."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from pipeline.cropping.finder import (BROWS, CHIN, JAW, SHAPE_PREDICTOR, FaceFinder, box_motion, face_box,
                                      model_path, models_dir, outside_fraction, plan_track_boxes, round_box)
from pipeline.errors import ConfigError


def _canvas(dx: int = 0, dy: int = 0, shape: tuple[int, int] = (480, 640), scale: float = 1.0) -> np.ndarray:
    """The astronaut (face about 90 px) shifted by (dx, dy) on a grey canvas."""
    m = np.float32([[scale, 0, 60 + dx], [0, scale, -20 + dy]])
    return cv2.warpAffine(data.astronaut(), m, (shape[1], shape[0]), borderValue=(128, 128, 128))


@pytest.fixture(scope="module")
def finder() -> FaceFinder:
    return FaceFinder("hog", upsample=0, min_score=0.0, detect_max_side=640)


def test_models_are_found_without_importing_the_package(tmp_path: Path) -> None:
    assert (models_dir() / SHAPE_PREDICTOR).is_file()
    assert "face_recognition_models" not in sys.modules
    with pytest.raises(ConfigError, match="crop.models_dir"):
        models_dir(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"nothing\.dat: dlib model file not found"):
        model_path("nothing.dat")
    with pytest.raises(ConfigError, match="crop.detector 'mtcnn'"):
        FaceFinder("mtcnn")


def test_detects_one_face_and_its_landmarks(finder: FaceFinder) -> None:
    img = _canvas()
    dets = finder.detect(img)
    assert len(dets) == 1 and dets[0].score > 0.5
    pts = finder.landmarks(img, dets[0])
    assert pts.shape == (68, 2)
    # the astronaut's face on the 512x512 image spans about x 179..272, y 87..178 (+ offset 60, -20)
    assert 230 < pts[:, 0].min() < 250 and 320 < pts[:, 0].max() < 345
    assert 60 < pts[:, 1].min() < 80 and 150 < pts[:, 1].max() < 170
    # landmarks follow a shift of the image
    dets2 = finder.detect(_canvas(dx=40, dy=25))
    pts2 = finder.landmarks(_canvas(dx=40, dy=25), dets2[0])
    assert np.allclose(np.median(pts2 - pts, axis=0), [40, 25], atol=2)


def test_detection_on_shrunk_frame_maps_back_and_grayscale_works(finder: FaceFinder) -> None:
    big = _canvas(shape=(1088, 2040), scale=3.0, dx=600, dy=100)  # face ~270 px on a SAMM-sized frame
    gray = cv2.cvtColor(big, cv2.COLOR_RGB2GRAY)
    dets = finder.detect(gray)
    assert len(dets) == 1
    pts = finder.landmarks(gray, dets[0])
    # ground truth: astronaut's landmarks on the 512 image mapped by the same transform
    ref = finder.landmarks(data.astronaut(), finder.detect(data.astronaut())[0])
    assert np.abs(np.median(pts - (ref * 3 + [660, 80]), axis=0)).max() < 6


def test_several_faces_sorted_largest_first(finder: FaceFinder) -> None:
    head = data.astronaut()[40:240, 120:320]                 # face about 90 px
    img = np.full((480, 640, 3), 128, np.uint8)
    img[100:300, 400:600] = head
    img[20:290, 20:290] = cv2.resize(head, (270, 270))       # a larger copy, face about 120 px
    dets = finder.detect(img)
    assert len(dets) == 2
    assert dets[0].area > 1.5 * dets[1].area and dets[0].center[0] < 300 < dets[1].center[0]


def test_face_box_margins_and_square(finder: FaceFinder) -> None:
    img = _canvas()
    pts = finder.landmarks(img, finder.detect(img)[0])
    top, bottom = pts[BROWS, 1].min(), max(pts[CHIN, 1], pts[JAW, 1].max())
    left, right = pts[JAW, 0].min(), pts[JAW, 0].max()
    h, w = bottom - top, right - left
    box = face_box(pts, 0.3, 0.05, 0.1)
    assert box[2] - box[0] == pytest.approx(box[3] - box[1])
    assert box[1] <= top - 0.3 * h + 1e-3 and box[3] >= bottom + 0.05 * h - 1e-3
    assert box[0] <= left - 0.1 * w + 1e-3 and box[2] >= right + 0.1 * w - 1e-3
    # one dimension is tight (the square grows only the other one)
    assert min(abs(box[1] - (top - 0.3 * h)), abs(box[0] - (left - 0.1 * w))) < 1e-3
    r = round_box(box)
    assert r.dtype == np.int64 and r[2] - r[0] == r[3] - r[1]


def test_box_motion_and_outside_fraction() -> None:
    a = np.array([0, 0, 100, 100], float)
    assert box_motion(a, a) == 0
    assert box_motion(a, a + [30, 40, 30, 40]) == pytest.approx(0.5)
    assert box_motion(a, np.array([0, 0, 120, 120], float)) == pytest.approx(0.2)
    assert outside_fraction(a, (200, 200)) == 0
    assert outside_fraction(np.array([-50, 0, 50, 100], float), (200, 200)) == pytest.approx(0.5)


def test_plan_track_boxes_moves_only_on_real_motion() -> None:
    first = np.array([100, 100, 200, 200], float)
    keys = [0, 10, 20, 30]
    jitter = first + [2, -1, 2, -1]          # detection noise: 2 % of the side
    moved = first + [30, 0, 30, 0]           # head moved 0.3 face widths
    boxes, changed = plan_track_boxes(40, keys, [first, jitter, moved, None], first, threshold=0.1)
    assert changed == [20]
    assert np.array_equal(boxes[:11], np.repeat(first[None], 11, 0))   # jitter ignored
    assert np.array_equal(boxes[20:], np.repeat(moved[None], 20, 0))
    x = boxes[10:21, 0]
    assert np.all(np.diff(x) > 0) and x[0] == 100 and x[-1] == 130   # linear ramp, no jump
    assert np.allclose(np.diff(x), 3)
