"""Region decoding of JPEG frames (libjpeg-turbo extension): the same pixels as OpenCV's whole decode."""

from __future__ import annotations

import glob
import sysconfig
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from pipeline.io import jpeg_region
from pipeline.io.decode import BadFrameError, read_image, read_patch, region_decoder_agrees
from pipeline.io.jpeg_region import Patch, decode_region, jpeg_shape

needs_extension = pytest.mark.skipif(not jpeg_region.available(),
                                     reason="pipeline.io._jpeg_region not built (no libjpeg-turbo headers)")


def _headers_present() -> bool:
    """libjpeg-turbo's jpeglib.h where the compiler looks by default (or next to Python's headers)."""
    dirs = ["/usr/include", "/usr/local/include", sysconfig.get_paths()["include"]]
    return any(Path(d, "jpeglib.h").exists() for d in dirs) or bool(glob.glob("/usr/include/*/jconfig.h"))


def _image(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A noisy colour RGB picture: edges and texture everywhere, so every block matters."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(data.astronaut(), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def _jpeg(path: Path, img: np.ndarray, *extra: int) -> Path:
    bgr = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 90, *extra])
    return path


ENCODINGS = {
    "420": (cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420),
    "422": (cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422),
    "444": (cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444),
    "progressive": (cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "restart": (cv2.IMWRITE_JPEG_RST_INTERVAL, 3),
    "grey": (),
}


def test_extension_is_built_where_libjpeg_turbo_headers_are() -> None:
    if not _headers_present():
        pytest.skip("no jpeglib.h on this machine: the crop stage decodes whole frames")
    assert jpeg_region.available(), ("jpeglib.h is installed but pipeline.io._jpeg_region was not built: "
                                     "reinstall with `pip install -e .` and read the compiler's message")


@needs_extension
def test_the_runtime_check_passes_here_and_catches_a_difference() -> None:
    """read_patch trusts the region decoder only after it reproduced OpenCV on test JPEGs in this process."""
    assert region_decoder_agrees()
    assert not region_decoder_agrees(margin=0)  # without the margin the block edges differ


@needs_extension
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("reduce", [1, 2, 4, 8])
def test_region_pixels_equal_the_whole_decode(tmp_path: Path, encoding: str, reduce: int) -> None:
    rng = np.random.default_rng(reduce)
    shape = (481, 643)  # not a multiple of the 16-px MCU either way
    img = _image(shape, seed=reduce)
    if encoding == "grey":
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    path = _jpeg(tmp_path / "f.jpg", img, *ENCODINGS[encoding])
    raw = np.fromfile(path, dtype=np.uint8)
    for color in (True, False):  # grey files decoded as colour and colour files as grey too
        whole = read_image(path, color=color, reduce=reduce)
        assert jpeg_shape(raw, color, reduce) == whole.shape
        h, w = whole.shape[:2]
        for _ in range(12):
            side = int(rng.integers(4, max(5, min(h, w))))
            x0, y0 = int(rng.integers(-side // 2, w - side // 2)), int(rng.integers(-side // 2, h - side // 2))
            box = (x0, y0, x0 + side, y0 + side)
            patch = decode_region(raw, box, whole.shape, color, reduce)
            assert patch is not None and patch.frame_shape == whole.shape
            ph, pw = patch.pixels.shape[:2]
            # the patch covers the box (clipped to the frame) and holds exactly the whole decode's pixels there
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
            assert patch.x <= cx0 and patch.y <= cy0 and patch.x + pw >= cx1 and patch.y + ph >= cy1
            assert np.array_equal(patch.pixels[cy0 - patch.y:cy1 - patch.y, cx0 - patch.x:cx1 - patch.x],
                                  whole[cy0:cy1, cx0:cx1]), (encoding, reduce, color, box)


@needs_extension
def test_region_decode_decodes_less_than_the_frame(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "f.jpg", _image((480, 640), 0))
    patch = read_patch(path, lambda shape: (200, 150, 420, 370), color=True)
    assert patch.frame_shape == (480, 640, 3)
    # rows: the box and the 16-px margin only; columns: widened to whole iMCUs at most
    assert (patch.y, patch.pixels.shape[0]) == (134, 252)
    assert patch.pixels.shape[1] < 640 and patch.x <= 184 and patch.x + patch.pixels.shape[1] >= 436


@needs_extension
def test_decode_without_the_margin_differs_at_the_edges(tmp_path: Path) -> None:
    """The margin is needed: chroma upsampling at the decoded rectangle's own edge sees the edge."""
    path = _jpeg(tmp_path / "f.jpg", _image((480, 640), 1))
    raw = np.fromfile(path, dtype=np.uint8)
    whole = read_image(path, color=True)
    differs = 0
    for x0, y0 in ((37, 41), (101, 77), (203, 139), (150, 150)):
        box = (x0, y0, x0 + 200, y0 + 200)
        p = decode_region(raw, box, whole.shape, True, margin=0)
        inner = p.pixels[y0 - p.y:y0 - p.y + 200, x0 - p.x:x0 - p.x + 200]
        differs += not np.array_equal(inner, whole[y0:y0 + 200, x0:x0 + 200])
    assert differs > 0


def test_files_the_region_decoder_leaves_alone_decode_whole(tmp_path: Path) -> None:
    img = _image((120, 160), 2)
    png = tmp_path / "f.png"
    assert cv2.imwrite(str(png), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    jpg = _jpeg(tmp_path / "f.jpg", img)
    blob = jpg.read_bytes()
    exif = tmp_path / "exif.jpg"  # an APP1 Exif block (OpenCV would apply its orientation)
    payload = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08\x00\x00"
    exif.write_bytes(blob[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + blob[2:])
    for path in (png, exif):
        raw = np.fromfile(path, dtype=np.uint8)
        assert jpeg_shape(raw, True) is None
        patch = read_patch(path, lambda shape: (10, 10, 50, 50), color=True)
        assert (patch.x, patch.y) == (0, 0)
        assert np.array_equal(patch.pixels, read_image(path, color=True))


def test_bad_files_fail_as_in_the_whole_decode(tmp_path: Path) -> None:
    blob = _jpeg(tmp_path / "good.jpg", _image((240, 320), 3)).read_bytes()
    junk = tmp_path / "junk.jpg"  # a JPEG start marker, then nothing a decoder can use
    junk.write_bytes(b"\xff\xd8" + b"\x00garbage" * 50 + b"\xff\xd9")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(blob[: len(blob) // 2])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path, what in ((junk, "not a decodable"), (trunc, "truncated"), (empty, "empty")):
        with pytest.raises(BadFrameError, match=what) as info:
            read_patch(path, lambda shape: (0, 0, 100, 100), color=True)
        assert str(path) in str(info.value)


def test_patch_moves_boxes_into_its_pixels() -> None:
    frame = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    whole = Patch.whole(frame)
    assert whole.frame_shape == (20, 30) and (whole.x, whole.y) == (0, 0)
    part = Patch(frame[5:15, 8:28], 8, 5, (20, 30))
    assert list(part.box_in_patch((10, 6, 20, 12))) == [2, 1, 12, 7]
