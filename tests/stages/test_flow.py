"""Stage ``flow``: real faces files in, real flow files out, through both implementations."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from pipeline import flow as flow_stage
from pipeline.errors import ConfigError, InputError, StageFailed
from pipeline.synthetic.flow_truth import endpoint_error, warped_pair
from pipeline.io.h5io import atomic_h5, file_digest
from pipeline.core.paths import DataPaths
from pipeline.core.runner import ParallelConfig
from pipeline.core.stage import StageContext
from pipeline.tvl1.opencv import TVL1Params, opencv_flow_pair, to_gray

SMALL = dict(nscales=3, warps=2, outer_iterations=2, inner_iterations=15)


def _faces(root: Path, video: str, frames: np.ndarray, tag: str = "v1") -> Path:
    path = DataPaths("toy", root).h5(DataPaths("toy", root).faces, video)
    with atomic_h5(path, digest=f"faces-{video}-{tag}", params={}) as f:
        f.create_dataset("frames", data=frames, chunks=(1, *frames.shape[1:]), compression="gzip")
    return path


def _video(size: int, n: int, color: bool = True, seed: int = 0) -> np.ndarray:
    """A short face 'video': each frame is the previous one moved by a smooth sub-pixel field."""
    frames = [warped_pair(size, 1.0, seed)[1]]
    for k in range(1, n):
        frames.append(warped_pair(size, 1.0 * k, seed)[0])
    gray = np.stack(frames)
    if color:
        return np.repeat(gray[..., None], 3, -1)
    return gray[..., None]


def _ctx(root: Path, **flow) -> StageContext:
    section = dict(impl="opencv", **SMALL, device="cpu", batch_pairs=4, compile=False, cuda_graphs=False,
                   check_every=5, remap_subpixel="auto", compression="lzf", channel_order="rgb")
    section.update(flow)
    return StageContext(stage="flow", dataset={"name": "toy", "overrides": {}}, params={"flow": section},
                        paths=DataPaths("toy", root), parallel=ParallelConfig(backend="sequential"))


def _read(path: Path) -> tuple[np.ndarray, dict]:
    with h5py.File(path, "r") as f:
        return f["flow"][()], dict(f.attrs)


@pytest.fixture(autouse=True)
def _one_thread():
    cv2.setNumThreads(1)


def test_opencv_stage_writes_flow_with_attrs_and_resumes(tmp_path):
    frames = _video(48, 4)
    faces = _faces(tmp_path, "s01_v1", frames)
    ctx = _ctx(tmp_path)
    flow_stage.run(ctx)
    out = ctx.paths.h5(ctx.paths.flow, "s01_v1")
    flow, attrs = _read(out)
    assert flow.shape == (3, 48, 48, 2) and flow.dtype == np.float16
    assert np.isfinite(flow).all()
    gray = to_gray(frames)
    ref = opencv_flow_pair(gray[1], gray[2], TVL1Params(**SMALL))
    np.testing.assert_allclose(flow[1].astype(np.float32), ref, atol=2e-3)   # float16 of OpenCV's flow
    assert attrs["impl"] == "opencv"
    for key, value in TVL1Params(**SMALL).as_dict().items():
        assert attrs[key] == value, key
    # resumes: a complete file with the same digest is skipped (not rewritten)
    mtime = out.stat().st_mtime_ns
    flow_stage.run(ctx)
    assert out.stat().st_mtime_ns == mtime
    # a new faces file (new digest) recomputes exactly that video
    _faces(tmp_path, "s01_v1", frames, tag="v2")
    digest_before = file_digest(out)
    flow_stage.run(ctx)
    assert file_digest(out) != digest_before and faces.exists()
    # a changed TV-L1 parameter recomputes too
    flow_stage.run(_ctx(tmp_path, warps=1))
    assert _read(out)[1]["warps"] == 1


def test_gray_conversion_follows_channel_order(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_gray(rgb, "rgb")[0], cv2.cvtColor(rgb[0], cv2.COLOR_RGB2GRAY))
    np.testing.assert_array_equal(to_gray(rgb, "bgr")[0], cv2.cvtColor(rgb[0], cv2.COLOR_BGR2GRAY))
    assert not np.array_equal(to_gray(rgb, "rgb"), to_gray(rgb, "bgr"))
    with pytest.raises(InputError, match="expected"):
        to_gray(rng.integers(0, 256, (2, 8, 8, 4), dtype=np.uint8))


def test_bad_videos_fail_alone_with_clear_messages(tmp_path):
    _faces(tmp_path, "good", _video(40, 3, color=False))
    _faces(tmp_path, "one_frame", _video(40, 1))
    _faces(tmp_path, "floats", _video(40, 3).astype(np.float32))
    ctx = _ctx(tmp_path)
    with pytest.raises(StageFailed) as info:
        flow_stage.run(ctx)
    failures = info.value.failures
    assert set(failures) == {"one_frame", "floats"}
    assert "1 frame(s); flow needs at least 2" in failures["one_frame"] and "one_frame.h5" in failures["one_frame"]
    assert "expected uint8" in failures["floats"]
    assert ctx.paths.h5(ctx.paths.flow, "good").exists()
    assert not ctx.paths.h5(ctx.paths.flow, "one_frame").exists()
    assert not list(ctx.paths.flow.glob(".*partial"))


def test_constant_frames_give_zero_flow_and_no_nan(tmp_path):
    _faces(tmp_path, "still", np.full((3, 40, 40, 3), 90, np.uint8))
    for impl in ("opencv", "torch"):
        ctx = _ctx(tmp_path, impl=impl)
        flow_stage.run(ctx)
        flow, attrs = _read(ctx.paths.h5(ctx.paths.flow, "still"))
        assert attrs["impl"] == impl
        assert np.isfinite(flow).all() and np.abs(flow).max() == 0


def test_non_finite_flow_is_never_written():
    with pytest.raises(InputError, match="non-finite"):
        flow_stage.to_float16(np.array([1.0, np.nan], np.float32), "v")
    with pytest.raises(InputError, match="non-finite"):
        flow_stage.to_float16(np.array([1e6], np.float32), "v")        # overflows float16


def test_torch_stage_batches_across_videos_of_two_sizes(tmp_path, caplog):
    videos = {"a": _video(48, 4, seed=1), "b": _video(48, 3, seed=2), "c": _video(56, 3, seed=3)}
    for name, frames in videos.items():
        _faces(tmp_path, name, frames)
    # batch of 4 pairs: a (3 pairs) + b (2 pairs) straddle a batch; c has its own size;
    # the simulated out-of-memory above 2 pairs halves the batch and retries
    ctx = _ctx(tmp_path, impl="torch", batch_pairs=4, debug_oom_above_batch=2)
    with caplog.at_level(logging.WARNING, logger="pipeline.tvl1.solver"):
        flow_stage.run(ctx)
    assert any("out of GPU memory" in r.message for r in caplog.records)
    params = TVL1Params(**SMALL)
    for name, frames in videos.items():
        flow, attrs = _read(ctx.paths.h5(ctx.paths.flow, name))
        assert flow.shape == (len(frames) - 1, *frames.shape[1:3], 2)
        assert attrs["impl"] == "torch" and attrs["remap_subpixel"] in (0, 32)
        gray = to_gray(frames)
        for t in range(len(frames) - 1):
            ref = opencv_flow_pair(gray[t], gray[t + 1], params)
            assert endpoint_error(flow[t].astype(np.float32), ref) < 0.02, (name, t)


def test_config_and_missing_inputs(tmp_path):
    with pytest.raises(InputError, match="crop stage"):
        flow_stage.run(_ctx(tmp_path))
    _faces(tmp_path, "v", _video(40, 2))
    with pytest.raises(ConfigError, match="flow.impl"):
        flow_stage.run(_ctx(tmp_path, impl="gpu"))
    with pytest.raises(ConfigError, match="scale_step"):
        flow_stage.run(_ctx(tmp_path, scale_step=1.5))
    assert flow_stage.resolve_impl("auto", "cpu") == "opencv"


def test_main_reports_user_errors_with_exit_code_2(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    code = flow_stage.main(["--dataset", "synth_casme2", "--data-root", str(tmp_path / "empty")])
    assert code == 2


def test_outputs_of_videos_gone_upstream_are_removed(tmp_path):
    frames = _video(32, 3)
    _faces(tmp_path, "s01_v1", frames)
    gone = _faces(tmp_path, "s02_v1", frames)
    ctx = _ctx(tmp_path)
    flow_stage.run(ctx)
    assert sorted(p.name for p in ctx.paths.flow.glob("*.h5")) == ["s01_v1.h5", "s02_v1.h5"]
    gone.unlink()   # crop dropped the video (it left the tables)
    flow_stage.run(ctx)
    assert sorted(p.name for p in ctx.paths.flow.glob("*.h5")) == ["s01_v1.h5"]
