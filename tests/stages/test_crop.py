"""Stage crop on rendered face videos: params checked first, digests, boxes, motion, tracking, grayscale,
resume, bad input (the cropping package's parts: tests/cropping/)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from skimage import data

import pipeline.crop as crop_stage
from pipeline.core.paths import DataPaths
from pipeline.core.runner import ParallelParams, map_videos
from pipeline.core.stage import StageContext
from pipeline.crop import build_tasks, main as crop_main
from pipeline.cropping.finder import BROWS, CHIN, JAW, FaceFinder
from pipeline.cropping.params import CropParams
from pipeline.cropping.video import crop_video
from pipeline.errors import ConfigError, StageFailed
from pipeline.io.decode import region_decoder_agrees
from pipeline.io.h5io import read_attr_json

SEQ = ParallelParams(backend="sequential")
BASE = {"size": 112, "search_frames": 5, "threads": 2, "batch": 8}


def render(dx: float = 0, dy: float = 0, shape: tuple[int, int] = (480, 640), scale: float = 1.0,
           gray: bool = False, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """The astronaut (face about 90 px at scale 1) moved by (dx, dy) on a grey frame; optional sensor noise."""
    m = np.float32([[scale, 0, 60 + dx], [0, scale, -20 + dy]])
    img = cv2.warpAffine(data.astronaut(), m, (shape[1], shape[0]), flags=cv2.INTER_LINEAR,
                         borderValue=(128, 128, 128))
    if noise:
        rng = np.random.default_rng(seed)
        img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if gray else img


def write_frames(folder: Path, frames: Sequence[np.ndarray]) -> list[str]:
    """Write frames as img_1.jpg .. img_N.jpg (CAS(ME)^2 style); return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(frames, start=1):
        p = folder / f"img_{i}.jpg"
        assert cv2.imwrite(str(p), f if f.ndim == 2 else cv2.cvtColor(f, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(str(p))
    return paths


def tables(videos: dict[str, dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Resample-style videos.csv and frames.csv for {video: {paths|file+indices, color}}."""
    vrows, frows = [], []
    for name, spec in videos.items():
        if "file" in spec:
            kind, source, numbers, paths = "file", spec["file"], spec["indices"], [""] * len(spec["indices"])
        else:
            kind, source, paths = "frames", str(Path(spec["paths"][0]).parent), spec["paths"]
            numbers = spec.get("numbers", list(range(1, len(paths) + 1)))
        vrows.append({"video": name, "subject": spec.get("subject", "s1"), "fps": 30.0, "n_frames": len(numbers),
                      "source": source, "kind": kind, "color": int(spec.get("color", 1)), "source_fps": 30.0})
        frows += [{"video": name, "frame": i, "source_frame": n, "path": p}
                  for i, (n, p) in enumerate(zip(numbers, paths))]
    return pd.DataFrame(vrows), pd.DataFrame(frows)


def run_crop(out: Path, videos: dict[str, dict[str, Any]], **params: Any) -> dict[str, Any]:
    """Run the crop of ``videos`` into ``out`` as the stage does (sequentially)."""
    vdf, fdf = tables(videos)
    return map_videos(crop_video, build_tasks(vdf, fdf, out, {**BASE, **params}), stage="crop", parallel=SEQ)


def landmarks_of(frame: np.ndarray, finder: FaceFinder) -> np.ndarray:
    dets = finder.detect(frame)
    assert dets, "fixture face not detected"
    return finder.landmarks(frame, dets[0])


def assert_margins(pts: np.ndarray, box: np.ndarray, top: float, bottom: float, side: float, tol: float) -> None:
    """All landmarks inside the box with at least the stated margins (less ``tol`` pixels)."""
    brow, chin = pts[BROWS, 1].min(), max(pts[CHIN, 1], pts[JAW, 1].max())
    left, right = pts[JAW, 0].min(), pts[JAW, 0].max()
    h, w = chin - brow, right - left
    assert box[1] <= brow - top * h + tol
    assert box[3] >= chin + bottom * h - tol
    assert box[0] <= left - side * w + tol
    assert box[2] >= right + side * w - tol
    assert (pts[:, 0] >= box[0]).all() and (pts[:, 0] < box[2]).all()
    assert (pts[:, 1] >= box[1]).all() and (pts[:, 1] < box[3]).all()


@pytest.fixture(scope="module")
def finder() -> FaceFinder:
    return FaceFinder("hog", 0, 0.3, 640)


def shift_between(a: np.ndarray, b: np.ndarray) -> float:
    """Translation (pixels) between two crops by phase correlation."""
    ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY) if a.shape[-1] == 3 else a[..., 0]
    gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY) if b.shape[-1] == 3 else b[..., 0]
    win = cv2.createHanningWindow(ga.shape[::-1], cv2.CV_64F)
    (sx, sy), _ = cv2.phaseCorrelate(ga.astype(np.float64), gb.astype(np.float64), win)
    return float(np.hypot(sx, sy))


def test_fixed_box_holds_landmarks_with_margins_and_static_frames_do_not_move(tmp_path: Path, finder) -> None:
    frames = [render(noise=3, seed=i) for i in range(12)]
    paths = write_frames(tmp_path / "raw" / "v1", frames)
    res = run_crop(tmp_path / "faces", {"v1": {"paths": paths, "subject": "07"}})
    assert res["v1"]["warnings"] == []
    with h5py.File(tmp_path / "faces" / "v1.h5") as f:
        out = f["frames"][...]
        boxes = f["boxes"][...]
        assert f["frames"].chunks[0] == 8 and stored_codec(f["frames"]) == ("blosc", "lz4", 9, "bitshuffle")
        assert f.attrs["video"] == "v1" and f.attrs["subject"] == "07" and f.attrs["fps"] == 30.0
        assert f.attrs["size"] == 112 and f.attrs["mode"] == "fixed" and "HOG" in f.attrs["detector"]
        assert f.attrs["landmarks"].shape == (68, 2)
        assert list(f["source_frames"][...]) == list(range(1, 13))
        assert read_attr_json(f, "m2es_params")["margin_top"] == 0.3
        assert list(f.attrs["box"]) == list(boxes[0])
    assert out.shape == (12, 112, 112, 3) and out.dtype == np.uint8
    assert (boxes == boxes[0]).all()
    for frame in frames[::3]:
        assert_margins(landmarks_of(frame, finder), boxes[0], 0.3, 0.05, 0.1, tol=2.5)
    # static head + independent noise: no motion between crops (a 1-px head move measures ~1)
    assert max(shift_between(out[0], out[i]) for i in range(1, 12)) < 0.1
    moved = write_frames(tmp_path / "raw" / "v2", [render(noise=3, seed=0), render(dx=2, noise=3, seed=1)])
    run_crop(tmp_path / "faces", {"v2": {"paths": moved}})
    with h5py.File(tmp_path / "faces" / "v2.h5") as f:
        two, side = f["frames"][...], f.attrs["box"][2] - f.attrs["box"][0]
    assert shift_between(two[0], two[1]) == pytest.approx(2 * 112 / side, abs=0.2)  # real motion is seen


def test_track_mode_follows_head_drift(tmp_path: Path, finder) -> None:
    n = 60
    frames = [render(dx=2.5 * i, dy=0.5 * i) for i in range(n)]   # 150 px drift right, 30 down
    paths = write_frames(tmp_path / "raw" / "d", frames)
    run_crop(tmp_path / "track", {"d": {"paths": paths}}, mode="track", track_every=10, track_threshold=0.1)
    run_crop(tmp_path / "fixed", {"d": {"paths": paths}})
    with h5py.File(tmp_path / "track" / "d.h5") as f:
        tboxes, keys = f["boxes"][...], list(f.attrs["track_keyframes"])
    with h5py.File(tmp_path / "fixed" / "d.h5") as f:
        fboxes = f["boxes"][...]
    assert keys and all(k % 10 == 0 for k in keys)
    assert tboxes[-1, 0] - tboxes[0, 0] > 100
    steps = np.abs(np.diff(tboxes[:, :2], axis=0)).max()
    assert steps <= 8  # ramped, never a jump
    for i in range(0, n, 6):
        pts = landmarks_of(frames[i], finder)
        centre = pts.mean(axis=0)
        side = tboxes[i, 2] - tboxes[i, 0]
        assert abs((tboxes[i, 0] + tboxes[i, 2]) / 2 - centre[0]) < 0.15 * side, i
        assert (pts[:, 0] >= tboxes[i, 0]).all() and (pts[:, 0] < tboxes[i, 2]).all(), i
        assert (pts[:, 1] >= tboxes[i, 1]).all() and (pts[:, 1] < tboxes[i, 3]).all(), i
    # the fixed box stays put, so the drifted face leaves it
    assert (fboxes == fboxes[0]).all()
    assert landmarks_of(frames[-1], finder)[:, 0].max() > fboxes[0, 2]


def stored_codec(dset: h5py.Dataset) -> tuple:
    """What a Blosc dataset declares (filter, compressor, level, shuffle) and checks that its first
    stored chunk is in that format (the chunks are compressed by the stage, not by HDF5)."""
    code, _flags, cd, name = dset.id.get_create_plist().get_filter(0)
    assert (code, name) == (32001, b"blosc"), (code, name)
    compressor = {1: "lz4", 5: "zstd"}[cd[6]]
    _mask, chunk = dset.id.read_direct_chunk((0,) * dset.ndim)
    flags = chunk[2]  # Blosc 1 header: bit 2 bit-shuffle, bits 5-7 the compressor's format (lz4 1, zstd 4)
    assert (flags >> 5) == {"lz4": 1, "zstd": 4}[compressor] and cd[5] == 2 and flags & 4, (flags, cd)
    return "blosc", compressor, cd[4], "bitshuffle"


def test_compressions_store_the_same_frames(tmp_path: Path) -> None:
    paths = write_frames(tmp_path / "raw" / "c", [render(dx=i, noise=2, seed=i) for i in range(11)])
    out, sizes = {}, {}
    for comp in ("blosc-lz4", "blosc-zstd", "gzip", "lzf", "none"):
        run_crop(tmp_path / comp, {"c": {"paths": paths}}, compression=comp, chunk_frames=4,
                 compression_level=3 if comp == "blosc-zstd" else None)
        with h5py.File(tmp_path / comp / "c.h5") as f:
            if comp.startswith("blosc"):
                assert stored_codec(f["frames"]) == ("blosc", comp[6:], 3 if comp == "blosc-zstd" else 9, "bitshuffle")
            else:
                assert f["frames"].compression == (None if comp == "none" else comp)
            assert f["frames"].chunks == (4, 112, 112, 3)
            out[comp] = f["frames"][...]
            sizes[comp] = f["frames"].id.get_storage_size()
    assert out["none"].shape == (11, 112, 112, 3) and out["none"][-1].any()  # last, partial chunk written
    for comp in out:
        assert np.array_equal(out[comp], out["none"]), comp
    assert sizes["blosc-zstd"] < sizes["blosc-lz4"] < sizes["none"], sizes


def test_track_mode_on_a_static_head_keeps_one_box(tmp_path: Path) -> None:
    paths = write_frames(tmp_path / "raw" / "s", [render(noise=3, seed=i) for i in range(25)])
    run_crop(tmp_path / "faces", {"s": {"paths": paths}}, mode="track", track_every=5)
    with h5py.File(tmp_path / "faces" / "s.h5") as f:
        assert len(f.attrs["track_keyframes"]) == 0
        assert (f["boxes"][...] == f["boxes"][0]).all()


def test_grayscale_stays_one_channel_and_reduced_decode_matches_full(tmp_path: Path) -> None:
    frames = [render(shape=(1088, 2040), scale=3.0, dx=700, dy=100, gray=True, noise=2, seed=i) for i in range(4)]
    paths = write_frames(tmp_path / "raw" / "006_1", frames)
    res = run_crop(tmp_path / "red", {"006_1": {"paths": paths, "color": 0}})
    run_crop(tmp_path / "full", {"006_1": {"paths": paths, "color": 0}}, reduced_decode=False)
    assert res["006_1"]["reduce"] >= 2
    with h5py.File(tmp_path / "red" / "006_1.h5") as f:
        red = f["frames"][...]
        assert f.attrs["channels"] == 1 and f.attrs["decode_reduction"] == res["006_1"]["reduce"]
        assert list(f.attrs["frame_shape"]) == [1088, 2040]
    with h5py.File(tmp_path / "full" / "006_1.h5") as f:
        full = f["frames"][...]
    assert red.shape == full.shape == (4, 112, 112, 1)
    assert np.abs(red.astype(int) - full).mean() < 4
    assert shift_between(red[0], full[0]) < 0.5


@pytest.mark.skipif(not region_decoder_agrees(), reason="pipeline.io._jpeg_region not built or not usable here")
def test_region_decode_writes_the_same_crops_as_whole_frames(tmp_path: Path) -> None:
    """Decoding only around the box changes nothing: border padding, mixed sizes, tracking, grey + 1/2 decode."""
    edge = [render(dx=-200, dy=-50, noise=3, seed=i) for i in range(9)]
    mixed = [render(noise=3, seed=i) if i % 2 == 0 else cv2.resize(render(noise=3, seed=i), (960, 720))
             for i in range(9)]
    drift = [render(dx=4 * i, dy=2 * i, noise=3, seed=i) for i in range(20)]
    grey = [render(shape=(1088, 2040), scale=3.0, dx=700, dy=100, gray=True, noise=2, seed=i) for i in range(4)]
    videos = {
        "edge": {"paths": write_frames(tmp_path / "raw" / "edge", edge)},
        "mixed": {"paths": write_frames(tmp_path / "raw" / "mixed", mixed)},
        "drift": {"paths": write_frames(tmp_path / "raw" / "drift", drift)},
        "grey": {"paths": write_frames(tmp_path / "raw" / "grey", grey), "color": 0},
    }
    for pad in ("constant", "replicate"):
        extra = {"pad": pad, "mode": "track", "track_every": 5, "track_threshold": 0.05}
        region = run_crop(tmp_path / f"region_{pad}", videos, **extra)
        whole = run_crop(tmp_path / f"whole_{pad}", videos, region_decode=False, **extra)
        assert all(r["region_decode"] for r in region.values()) and not any(r["region_decode"] for r in whole.values())
        assert len(region["drift"]["keyframes"]) > 0 and region["grey"]["reduce"] >= 2
        for video in videos:
            with h5py.File(tmp_path / f"region_{pad}" / f"{video}.h5") as a, \
                    h5py.File(tmp_path / f"whole_{pad}" / f"{video}.h5") as b:
                assert np.array_equal(a["boxes"][...], b["boxes"][...])
                assert np.array_equal(a["frames"][...], b["frames"][...]), (pad, video)
    # the same crops, so the same digest: files made before the param existed (or with it off) stay complete
    vdf, fdf = tables(videos)
    on, off = (build_tasks(vdf, fdf, tmp_path, {**BASE, "region_decode": flag}) for flag in (True, False))
    assert [t.digest for t in on] == [t.digest for t in off]
    assert [t.digest for t in on] != [t.digest for t in build_tasks(vdf, fdf, tmp_path, {**BASE, "size": 96})]


def test_video_file_source(tmp_path: Path) -> None:
    frames = [render(dx=i) for i in range(16)]
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    indices = list(range(0, 16, 2))
    res = run_crop(tmp_path / "faces", {"clip": {"file": str(path), "indices": indices}}, min_frames=4)
    assert res["clip"]["reduce"] == 1
    with h5py.File(tmp_path / "faces" / "clip.h5") as f:
        out = f["frames"][...]
        assert list(f["source_frames"][...]) == indices and f.attrs["kind"] == "file"
    assert out.shape == (8, 112, 112, 3)
    # the head moves 1 px per source frame = 2 px per kept frame (at the 112/box scale)
    scale = 112 / (res["clip"]["box"][2] - res["clip"]["box"][0])
    assert shift_between(out[0], out[4]) == pytest.approx(8 * scale, abs=0.6)


def test_reruns_are_identical_and_resume_skips_or_reruns(tmp_path: Path) -> None:
    a = write_frames(tmp_path / "raw" / "a", [render(noise=2, seed=i) for i in range(10)])
    b = write_frames(tmp_path / "raw" / "b", [render(dx=30, noise=2, seed=i) for i in range(10)])
    videos = {"a": {"paths": a}, "b": {"paths": b}}
    assert set(run_crop(tmp_path / "one", videos)) == {"a", "b"}
    assert set(run_crop(tmp_path / "two", videos)) == {"a", "b"}
    for v in ("a", "b"):
        assert (tmp_path / "one" / f"{v}.h5").read_bytes() == (tmp_path / "two" / f"{v}.h5").read_bytes()
    # a completed video is skipped
    stamp = os.stat(tmp_path / "one" / "a.h5").st_mtime_ns
    assert run_crop(tmp_path / "one", videos) == {}
    assert os.stat(tmp_path / "one" / "a.h5").st_mtime_ns == stamp
    # a stale digest (the video's frames changed upstream) reruns that video only
    videos["b"] = {"paths": b[:8]}
    assert set(run_crop(tmp_path / "one", videos)) == {"b"}
    with h5py.File(tmp_path / "one" / "b.h5") as f:
        assert f["frames"].shape[0] == 8
    # changed params rerun everything
    assert set(run_crop(tmp_path / "one", videos, margin_top=0.4)) == {"a", "b"}


def test_interrupted_write_leaves_no_output(tmp_path: Path) -> None:
    paths = write_frames(tmp_path / "raw" / "v", [render(noise=2, seed=i) for i in range(30)])
    Path(paths[20]).write_bytes(Path(paths[20]).read_bytes()[:3000])  # truncated after 20 good frames
    with pytest.raises(StageFailed) as info:
        run_crop(tmp_path / "faces", {"v": {"paths": paths}})
    msg = str(info.value)
    assert "v:" in msg and paths[20] in msg and "truncated" in msg and "on_bad_frame: repeat" in msg
    assert list((tmp_path / "faces").iterdir()) == []  # no final file, no partial left


@pytest.mark.parametrize("bad", [[0], [4], [8], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [7, 8, 15]])
def test_repeat_mode_repeats_and_records_bad_frames(tmp_path: Path, bad: list[int]) -> None:
    # chunks of 4 frames: bad frames at a chunk's start, across chunk edges, and a leading run of
    # more than two chunks (held back until the first good frame, which stands in for them)
    paths = write_frames(tmp_path / "raw" / "v", [render(dx=3 * i) for i in range(17)])
    for i in bad:
        Path(paths[i]).write_bytes(b"")
    res = run_crop(tmp_path / "faces", {"v": {"paths": paths}}, on_bad_frame="repeat", max_repeat_fraction=0.6,
                   chunk_frames=4, search_frames=17)
    assert res["v"]["repeated"] == bad
    with h5py.File(tmp_path / "faces" / "v.h5") as f:
        out = f["frames"][...]
        assert list(f.attrs["repeated_frames"]) == bad
    good = [i for i in range(17) if i not in bad]
    for i in bad:
        earlier = [g for g in good if g < i]
        stand_in = earlier[-1] if earlier else good[0]
        assert np.array_equal(out[i], out[stand_in]), (i, stand_in)
    assert all(not np.array_equal(out[a], out[b]) for a, b in zip(good, good[1:]))  # the head moves 3 px per frame
    # too many bad frames fail the video
    Path(paths[16]).write_bytes(b"")
    with pytest.raises(StageFailed, match="max_repeat_fraction"):
        run_crop(tmp_path / "f2", {"v": {"paths": paths}}, on_bad_frame="repeat", max_repeat_fraction=len(bad) / 17,
                 search_frames=17)


def test_no_face_names_video_and_frames_tried(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = write_frames(tmp_path / "raw" / "empty", [rng.integers(0, 255, (240, 320, 3), np.uint8)
                                                     for _ in range(8)])
    with pytest.raises(StageFailed) as info:
        run_crop(tmp_path / "faces", {"empty": {"paths": paths}}, search_frames=6)
    msg = str(info.value)
    assert "video empty: no face found in frames 0..5" in msg and paths[0] in msg and paths[5] in msg
    assert "crop.upsample" in msg


def test_several_faces_use_the_largest(tmp_path: Path) -> None:
    head = data.astronaut()[40:240, 120:320]
    img = np.full((480, 640, 3), 128, np.uint8)
    img[100:300, 400:600] = head
    img[20:290, 20:290] = cv2.resize(head, (270, 270))
    paths = write_frames(tmp_path / "raw" / "two", [img] * 10)
    res = run_crop(tmp_path / "faces", {"two": {"paths": paths}})
    assert any("2 faces" in w for w in res["two"]["warnings"])
    with h5py.File(tmp_path / "faces" / "two.h5") as f:
        assert f.attrs["reference_faces"] == 2
        box = f.attrs["box"]
    assert (box[0] + box[2]) / 2 < 300 and box[2] - box[0] > 150


def test_face_near_the_border_is_padded(tmp_path: Path, finder) -> None:
    frames = [render(dx=-200, dy=-50) for _ in range(10)]  # brows ~17 px below the top edge
    paths = write_frames(tmp_path / "raw" / "edge", frames)
    res = run_crop(tmp_path / "faces", {"edge": {"paths": paths}})
    assert any("outside the frame" in w for w in res["edge"]["warnings"])
    with h5py.File(tmp_path / "faces" / "edge.h5") as f:
        out, box = f["frames"][...], f.attrs["box"]
        assert f.attrs["outside_fraction"] > 0
    assert box[0] < 0 or box[1] < 0
    assert_margins(landmarks_of(frames[0], finder), box, 0.3, 0.05, 0.1, tol=2.5)
    cols = int(round(-box[0] * 112 / (box[2] - box[0]))) if box[0] < 0 else 0
    rows = int(round(-box[1] * 112 / (box[3] - box[1]))) if box[1] < 0 else 0
    assert cols + rows > 0
    if cols > 1:
        assert out[:, :, : cols - 1].max() == 0   # constant padding, black
    if rows > 1:
        assert out[:, : rows - 1].max() == 0


def test_mixed_frame_sizes_map_the_box(tmp_path: Path) -> None:
    base = render()
    frames = [base if i % 2 == 0 else cv2.resize(base, (960, 720)) for i in range(10)]
    paths = write_frames(tmp_path / "raw" / "mix", frames)
    res = run_crop(tmp_path / "faces", {"mix": {"paths": paths}})
    assert any("differ in size" in w for w in res["mix"]["warnings"])
    with h5py.File(tmp_path / "faces" / "mix.h5") as f:
        out = f["frames"][...]
        assert f.attrs["mixed_size_frames"] == 5
    assert shift_between(out[0], out[1]) < 0.5
    assert np.abs(out[0].astype(int) - out[1]).mean() < 6


def test_short_video_warns_but_is_written(tmp_path: Path) -> None:
    paths = write_frames(tmp_path / "raw" / "short", [render() for _ in range(5)])
    res = run_crop(tmp_path / "faces", {"short": {"paths": paths}})
    assert any("too short" in w for w in res["short"]["warnings"])
    with h5py.File(tmp_path / "faces" / "short.h5") as f:
        assert f["frames"].shape[0] == 5 and bool(f.attrs["short"])


def test_stage_entry_point_crops_good_videos_and_reports_bad(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    repo = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["parallel"] = {"backend": "sequential"}
    params["per_dataset"]["d"] = {"crop": {"size": 96}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    preset = tmp_path / "configs" / "datasets" / "d.yaml"
    preset.parent.mkdir(parents=True)
    preset.write_text(yaml.safe_dump({"layout": "generic", "root": "data/raw/d"}))
    good = write_frames(Path("data/raw/d/good"), [render(noise=2, seed=i) for i in range(10)])
    bad = write_frames(Path("data/raw/d/bad"), [render() for _ in range(10)])
    Path(bad[3]).write_bytes(b"")
    vdf, fdf = tables({"good": {"paths": good}, "bad": {"paths": bad}})
    assert not Path(good[0]).is_absolute()  # relative to the repository root, as in frames.csv
    Path("data/d/resample").mkdir(parents=True)
    vdf.to_csv("data/d/resample/videos.csv", index=False)
    fdf.to_csv("data/d/resample/frames.csv", index=False)
    assert crop_main(["--dataset", "d"]) == 2
    with h5py.File("data/d/faces/good.h5") as f:
        assert f["frames"].shape == (10, 96, 96, 3)
    assert not Path("data/d/faces/bad.h5").exists()


def test_unknown_key_is_refused_before_any_input_is_read(tmp_path: Path, monkeypatch) -> None:
    def must_not_read(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an input was read before the params were checked")

    for name in ("read_videos", "read_frames", "remove_partials", "remove_stale"):
        monkeypatch.setattr(crop_stage, name, must_not_read)
    ctx = StageContext(stage="crop", dataset={"name": "d"}, params={"crop": {"sise": 96}},
                       paths=DataPaths("d", tmp_path / "data"), parallel=SEQ)
    with pytest.raises(ConfigError, match=r"params.yaml: crop.sise \(did you mean size\?\)"):
        crop_stage.run(ctx)
    assert not (tmp_path / "data").exists()


def test_stage_entry_point_names_the_unknown_key(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # no resample tables here: the params must fail first
    Path("params.yaml").write_text(yaml.safe_dump({"crop": {"sise": 96}, "parallel": {"backend": "sequential"}}))
    preset = Path("configs/datasets/d.yaml")
    preset.parent.mkdir(parents=True)
    preset.write_text(yaml.safe_dump({"layout": "generic", "root": "data/raw/d"}))
    assert crop_main(["--dataset", "d"]) == 2
    err = capsys.readouterr().err
    assert "crop.sise (did you mean size?)" in err and "videos.csv" not in err


def test_digest_is_unchanged_and_params_object_or_section_give_the_same_tasks() -> None:
    """The digest of a fixed table under the default params (computed before the crop stage was split:
    a change here would make every complete faces file stale)."""
    vdf = pd.DataFrame([{"video": "v", "subject": "07", "fps": 30.0, "n_frames": 2, "source": "data/raw/d/v",
                         "kind": "frames", "color": 1, "source_fps": 30.0}])
    fdf = pd.DataFrame([{"video": "v", "frame": i, "source_frame": i + 1, "path": f"data/raw/d/v/img_{i + 1}.jpg"}
                        for i in range(2)])
    (task,) = build_tasks(vdf, fdf, Path("out"), {})
    assert task.digest == "b20ad9a8a885f96b7c1812f188f703ee83534814507aa1a81a8f1d4599fda158"
    section = {"size": 112, "mode": "track", "region_decode": False, "compression_level": 3}
    (a,) = build_tasks(vdf, fdf, Path("out"), section)
    (b,) = build_tasks(vdf, fdf, Path("out"), CropParams.from_params(section))
    assert a.digest == b.digest == "5d2a4c1633a6babca2fbc48ccb6a2112b603e1ceb2b6d0db5b6b7b036d321b94"
    assert a.payload == b.payload
    with pytest.raises(ConfigError, match="did you mean size"):
        build_tasks(vdf, fdf, Path("out"), {"sise": 1})


def test_faces_files_record_the_tables_relative_source_not_a_path_of_this_machine(tmp_path: Path) -> None:
    """Paths in the tables are relative to the repository root: the faces file records them as they are,
    so the same inputs give the same file (and the same DVC hash) in any clone."""
    paths = write_frames(tmp_path / "raw" / "v1", [render(noise=3, seed=i) for i in range(10)])
    vdf, fdf = tables({"v1": {"paths": [str(Path(p).relative_to(tmp_path)) for p in paths]}})
    tasks = build_tasks(vdf, fdf, tmp_path / "faces", BASE, root=tmp_path)
    assert tasks[0].payload["source"] == str(tmp_path / "raw" / "v1")           # opened where it is
    map_videos(crop_video, tasks, stage="crop", parallel=SEQ)
    with h5py.File(tmp_path / "faces" / "v1.h5") as f:
        assert f.attrs["source"] == "raw/v1"                                     # recorded as the table holds it
