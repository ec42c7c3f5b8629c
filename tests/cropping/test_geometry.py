"""Mapping the box onto a decoded frame, the resize filter, and cutting a crop (into a chunk buffer)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from pipeline.cropping.geometry import crop_frame, frame_box, resize_filter
from pipeline.cropping.params import CropParams


def render(noise: float = 3.0, seed: int = 0) -> np.ndarray:
    """The astronaut (face about 90 px) on a grey 640x480 frame, with sensor noise."""
    m = np.float32([[1, 0, 60], [0, 1, -20]])
    img = cv2.warpAffine(data.astronaut(), m, (640, 480), flags=cv2.INTER_LINEAR, borderValue=(128, 128, 128))
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)


def test_frame_box_divides_by_the_reduction_or_scales_other_sizes() -> None:
    box = np.array([101, 51, 301, 251])
    same, mixed = frame_box(box, (480, 640), (480, 640), 1)
    assert np.array_equal(same, box) and not mixed
    half, mixed = frame_box(box, (481, 641), (241, 321), 2)  # ceil(481 / 2) rows
    assert not mixed and half[2] - half[0] == half[3] - half[1] == 100
    bigger, mixed = frame_box(box, (480, 640), (720, 960), 1)
    assert mixed and np.array_equal(bigger, np.round(box * 1.5).astype(np.int64))


def test_auto_resize_filter_is_bilinear_below_2x_and_area_from_2x() -> None:
    assert resize_filter(447, 224, "auto") == cv2.INTER_LINEAR
    assert resize_filter(448, 224, "auto") == cv2.INTER_AREA
    assert resize_filter(200, 224, "auto") == cv2.INTER_LINEAR
    assert resize_filter(300, 224, "area") == cv2.INTER_AREA and resize_filter(200, 224, "area") == cv2.INTER_LINEAR
    assert CropParams().interpolation == "auto"
    # the auto crop of a 320-px box is the bilinear one, not the area one
    frame = render()
    box = np.array([150, 80, 470, 400])
    auto = crop_frame(frame, box, 224, interpolation="auto")
    assert np.array_equal(auto, crop_frame(frame, box, 224, interpolation="linear"))
    assert not np.array_equal(auto, crop_frame(frame, box, 224, interpolation="area"))


@pytest.mark.parametrize("color", [True, False])
def test_crop_into_a_chunk_buffer_equals_a_new_crop(color: bool) -> None:
    frame = render()
    frame = frame if color else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    channels = 3 if color else 1
    for box in ([150, 80, 470, 400], [-40, -30, 200, 210], [10, 10, 234, 234], [500, 300, 700, 500]):
        expected = crop_frame(frame, np.array(box), 224)
        chunk = np.zeros((3, 224, 224, channels), np.uint8)
        got = crop_frame(frame, np.array(box), 224, out=chunk[1])
        assert np.shares_memory(got, chunk)
        assert np.array_equal(chunk[1], expected), box
        assert not chunk[0].any() and not chunk[2].any()  # nothing written beside the target frame
    with pytest.raises(ValueError, match="out must be"):
        crop_frame(frame, np.array([150, 80, 470, 400]), 224, out=np.zeros((224, 224, 4 - channels), np.uint8))


def test_padding_and_bad_boxes() -> None:
    frame = np.full((40, 60, 3), 200, np.uint8)
    black = crop_frame(frame, np.array([-10, 0, 30, 40]), 40, pad="constant")
    edge = crop_frame(frame, np.array([-10, 0, 30, 40]), 40, pad="replicate")
    assert black[:, :10].max() == 0 and black[:, 10:].min() == 200 and edge.min() == 200
    with pytest.raises(ValueError, match="empty crop box"):
        crop_frame(frame, np.array([5, 5, 5, 9]), 8)
    with pytest.raises(ValueError, match="lies outside the 60x40 frame"):
        crop_frame(frame, np.array([70, 0, 90, 20]), 8)
