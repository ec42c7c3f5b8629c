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
from pipeline.core.runner import ParallelParams
from pipeline.core.stage import StageContext
from pipeline.tvl1.backend import resolve_impl
from pipeline.tvl1.opencv import opencv_flow_pair, to_gray
from pipeline.tvl1.params import TVL1Params
from pipeline.tvl1.writer import to_float16

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
    return StageContext(stage="flow", dataset={"name": "toy"}, params={"flow": section},
                        paths=DataPaths("toy", root), parallel=ParallelParams(backend="sequential"))


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


@pytest.mark.parametrize("impl", ["opencv", "torch"])
def test_bad_videos_fail_alone_with_clear_messages(tmp_path, impl):
    _faces(tmp_path, "good", _video(40, 3, color=False))
    _faces(tmp_path, "one_frame", _video(40, 1))
    _faces(tmp_path, "floats", _video(40, 3).astype(np.float32))
    ctx = _ctx(tmp_path, impl=impl)
    with pytest.raises(StageFailed) as info:
        flow_stage.run(ctx)
    failures = info.value.failures
    assert set(failures) == {"one_frame", "floats"}
    assert info.value.kinds == {"one_frame": "InputError", "floats": "InputError"}
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
        to_float16(np.array([1.0, np.nan], np.float32), "v")
    with pytest.raises(InputError, match="non-finite"):
        to_float16(np.array([1e6], np.float32), "v")        # overflows float16


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
    assert resolve_impl("auto", "cpu") == "opencv"


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


def test_unknown_flow_key_is_refused_with_the_closest_match_before_any_input_is_read(tmp_path, monkeypatch):
    """``flow.imp`` (a typo of impl) is refused naming ``impl``; no faces file exists, so reaching the inputs
    would have failed with the crop-stage message instead, and nothing is read or written."""
    import pipeline.flow as flow_module

    def no_reading(*args, **kwargs):
        raise AssertionError("an input was read before the params were checked")

    monkeypatch.setattr(flow_module, "build_tasks", no_reading)
    monkeypatch.setattr(flow_module, "remove_partials", no_reading)
    with pytest.raises(ConfigError, match=r"flow\.imp \(did you mean impl\?\)"):
        flow_stage.run(_ctx(tmp_path, imp="opencv"))
    with pytest.raises(ConfigError, match=r"flow\.lamda \(did you mean lambda\?\)"):   # a TV-L1 key too
        flow_stage.run(_ctx(tmp_path, lamda=0.2))
    assert not (tmp_path / "toy").exists()


def test_flow_section_declarations_keep_defaults_and_checks():
    from pipeline.tvl1.params import PARAM_KEYS, FlowParams

    tvl1 = TVL1Params.from_params({"lambda": 1, "nscales": 3.0, "impl": "torch"}, others=(FlowParams,))
    assert tvl1.as_dict() == {"tau": 0.25, "lambda": 1.0, "theta": 0.3, "nscales": 3, "warps": 5, "epsilon": 0.01,
                              "inner_iterations": 30, "outer_iterations": 10, "scale_step": 0.8, "gamma": 0.0,
                              "median_filtering": 5, "use_initial_flow": False}
    assert list(PARAM_KEYS) == list(tvl1.as_dict()) and PARAM_KEYS["lambda"] == "lambda_"
    with pytest.raises(ConfigError, match="unknown key"):           # the TV-L1 keys alone do not cover impl
        TVL1Params.from_params({"impl": "torch"})
    cfg = FlowParams.from_params({"tau": 0.3, "compression": None, "remap_subpixel": 32}, others=(TVL1Params,))
    assert (cfg.impl, cfg.batch_pairs, cfg.gpu_memory_gb, cfg.compression, cfg.remap_subpixel) == \
        ("auto", "auto", 20.0, None, 32)
    for bad, match in [({"channel_order": "rgba"}, "channel_order"), ({"kernels": "cuda"}, "kernels"),
                       ({"triton_block": 48}, "triton_block"), ({"triton_warps": 3}, "triton_warps"),
                       ({"batch_pairs": 0}, "batch_pairs"), ({"batch_pairs": "max"}, "batch_pairs"),
                       ({"batch_pairs": 2.5}, "batch_pairs"), ({"gpu_memory_gb": 0.5}, "gpu_memory_gb"),
                       ({"check_every": 0}, "check_every"),
                       ({"remap_subpixel": 16}, "remap_subpixel"), ({"compression": "zstd"}, "compression")]:
        with pytest.raises(ConfigError, match=match):
            FlowParams.from_params(bad, others=(TVL1Params,))
    with pytest.raises(ConfigError, match=r"params.yaml: flow.theta must be > 0"):
        TVL1Params.from_params({"theta": 0}, others=(FlowParams,))


def test_torch_fail_fast_stops_at_the_first_failed_video(tmp_path):
    """The batched path applies fail_fast as the runner does: the bad video (first by frame size) stops the
    run before any other video is solved; without fail_fast the others are written."""
    _faces(tmp_path, "a_bad", _video(40, 3).astype(np.float32))
    for name in ("b", "c"):
        _faces(tmp_path, name, _video(40, 3))
    ctx = _ctx(tmp_path, impl="torch")
    fast = StageContext(**{**ctx.__dict__, "parallel": ParallelParams(backend="sequential", fail_fast=True)})
    with pytest.raises(StageFailed) as info:
        flow_stage.run(fast)
    assert list(info.value.failures) == ["a_bad"]
    assert not list(ctx.paths.flow.glob("*.h5")) and not list(ctx.paths.flow.glob(".*partial"))
    with pytest.raises(StageFailed):
        flow_stage.run(ctx)
    assert sorted(p.name for p in ctx.paths.flow.glob("*.h5")) == ["b.h5", "c.h5"]
