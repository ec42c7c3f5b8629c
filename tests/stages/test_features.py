"""Stage ``features``: the published recipe point by point, batching, the stage's files and bad input."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from models.i3d import build_i3d, init_random
from models.weights import RANDOM_INIT
from helpers.params import assert_section_refuses
from pipeline.errors import ConfigError, StageFailed
from pipeline.extract.extractor import FeatureExtractor
from pipeline.extract.params import FeaturesParams
from pipeline.extract.prepare import clip_count, clip_views, prepare_flow, prepare_rgb
from pipeline.extract.reader import Failed, PrefetchReader, VideoInput, VideoProbe, probe_video, read_video
from pipeline.extract.writer import video_digest, weights_identity
from pipeline.io.h5io import atomic_h5, file_digest, read_attr_json

SIZE = 32  # crops and model input in these tests (small so that CPU runs stay short)
DS = "tiny"


def realistic_video(n_frames: int, size: int, channels: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth, slowly moving frames (uint8 [T, H, W, C]) and smooth flow in pixels (float16 [T-1, H, W, 2])."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n_frames // 4 + 2, 6, 6, channels))
    t = np.linspace(0, coarse.shape[0] - 1.001, n_frames)
    i0, w = t.astype(int), (t - t.astype(int))[:, None, None, None]
    frames_c = coarse[i0] * (1 - w) + coarse[i0 + 1] * w  # smooth in time
    x = torch.from_numpy(frames_c).permute(0, 3, 1, 2).float()
    frames = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    frames = frames.permute(0, 2, 3, 1).numpy() + rng.normal(0, 4, (n_frames, size, size, channels))
    flow_c = torch.from_numpy(rng.normal(0, 6, (n_frames - 1, 2, 4, 4))).float()
    flow = torch.nn.functional.interpolate(flow_c, size=(size, size), mode="bilinear", align_corners=False)
    return np.clip(frames, 0, 255).astype(np.uint8), flow.permute(0, 2, 3, 1).numpy().astype(np.float16)


def write_faces(path: Path, frames: np.ndarray, video: str) -> None:
    """A faces file in the crop stage's layout."""
    with atomic_h5(path, f"faces-{video}-{frames.shape}", {"size": frames.shape[1]}) as f:
        f.create_dataset("frames", data=frames, chunks=(1,) + frames.shape[1:], compression="gzip")
        f.attrs["video"] = video
        f.attrs["fps"] = 30.0


def write_flow(path: Path, flow: np.ndarray, video: str) -> None:
    """A flow file in the flow stage's layout."""
    with atomic_h5(path, f"flow-{video}-{flow.shape}", {"impl": "test"}) as f:
        f.create_dataset("flow", data=flow.astype(np.float16), chunks=(1,) + flow.shape[1:], compression="gzip")
        f.attrs["impl"] = "test"


def make_video(ws_root: Path, video: str, n_frames: int, size: int = SIZE, channels: int = 3, seed: int = 0,
               flow_frames: int | None = None, flow_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    frames, flow = realistic_video(n_frames, size, channels, seed)
    if flow_frames is not None or flow_size is not None:
        flow = realistic_video((flow_frames or n_frames - 1) + 1, flow_size or size, 3, seed)[1]
    write_faces(ws_root / "data" / DS / "faces" / f"{video}.h5", frames, video)
    write_flow(ws_root / "data" / DS / "flow" / f"{video}.h5", flow, video)
    return frames, flow


def setup_dataset(workspace, videos: dict[str, int], **features) -> None:
    workspace.preset(DS, layout="generic", root=f"data/raw/{DS}", target_fps=30)
    rows = [{"video": v, "subject": "s1", "fps": 30, "n_frames": n, "source": v, "kind": "frames", "color": 1,
             "source_fps": 30} for v, n in videos.items()]
    (workspace.root / "data" / DS / "resample").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(workspace.root / "data" / DS / "resample" / "videos.csv", index=False)
    workspace.set_params("features", **{"allow_random_init": True, "input_size": SIZE, "batch_size": 4,
                                        "device": "cpu", "flow_quantize": "none", **features})  # float flow: the
    # tests compare with the stored arrays (params.yaml's jpeg: tests/extract/test_flow_jpeg.py)


def cfg(**kw) -> FeaturesParams:
    return FeaturesParams.from_params({"allow_random_init": True, "input_size": SIZE, "device": "cpu", **kw})


def as_input(video: str, frames: np.ndarray | None, flow: np.ndarray | None) -> VideoInput:
    t, h, w, c = frames.shape if frames is not None else (flow.shape[0] + 1, *flow.shape[1:3], 3)
    return VideoInput(VideoProbe(video, Path(f"{video}-faces.h5"), Path(f"{video}-flow.h5"), t, h, w, c, "f", "o"),
                      frames, flow)


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor(cfg(batch_size=4))


# ------------------------------------------------------------------ recipe


@pytest.mark.parametrize("n_frames,expected", [(2051, 1022), (9, 1), (8, 0), (10, 1), (11, 2), (12, 2), (1, 0)])
def test_clip_count(n_frames: int, expected: int) -> None:
    assert clip_count(n_frames, 8, 2) == expected


def test_rgb_is_scaled_to_minus_one_one_without_the_last_frame() -> None:
    frames = np.zeros((5, SIZE, SIZE, 3), np.uint8)
    frames[1], frames[2, ..., 1], frames[4] = 255, 51, 200
    out = prepare_rgb(torch.from_numpy(frames), SIZE)
    assert out.shape == (4, SIZE, SIZE, 3) and out.dtype == torch.float32
    assert (out[0] == -1).all() and (out[1] == 1).all()
    torch.testing.assert_close(out[2, ..., 1], torch.full((SIZE, SIZE), 51 / 127.5 - 1))
    assert (out[3] == -1).all()  # frame 3 is black; frame 4 (the last) is dropped


def test_grayscale_is_replicated_to_three_channels() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 1), dtype=np.uint8)
    gray = prepare_rgb(torch.from_numpy(frames), SIZE)
    color = prepare_rgb(torch.from_numpy(np.repeat(frames, 3, axis=3)), SIZE)
    assert gray.shape == (3, SIZE, SIZE, 3)
    assert torch.equal(gray, color) and torch.equal(gray[..., 0], gray[..., 2])


def test_flow_is_clipped_to_the_bound_and_divided_by_it() -> None:
    flow = np.zeros((3, SIZE, SIZE, 2), np.float16)
    flow[0, ..., 0], flow[0, ..., 1], flow[1] = 30, -40, 7.5
    out = prepare_flow(torch.from_numpy(flow), SIZE, bound=15.0)
    assert out.shape == (3, SIZE, SIZE, 2)
    assert (out[0, ..., 0] == 1).all() and (out[0, ..., 1] == -1).all() and (out[1] == 0.5).all()
    assert (prepare_flow(torch.from_numpy(flow), SIZE, bound=10.0)[1] == 0.75).all()


def test_crops_are_resized_to_the_input_size_and_flow_clipped_before_resizing() -> None:
    frames = np.zeros((3, 96, 96, 3), np.uint8)
    frames[:, :, 48:] = 255
    out = prepare_rgb(torch.from_numpy(frames), SIZE)
    assert out.shape == (2, SIZE, SIZE, 3)
    q = SIZE // 2 - 4
    assert out[0, :, :q].max() == -1 and out[0, :, -q:].min() == 1
    flow = np.zeros((2, 96, 96, 2), np.float16)
    flow[:, :, 48:] = 100.0  # clipped to 15 first: after resizing no value passes 1
    fout = prepare_flow(torch.from_numpy(flow), SIZE, bound=15.0)
    assert fout.shape == (2, SIZE, SIZE, 2) and abs(fout.max().item() - 1) < 1e-5  # not 100 / 15
    torch.testing.assert_close(fout[:, :, -q:], torch.ones_like(fout[:, :, -q:]))
    assert torch.equal(prepare_rgb(torch.from_numpy(frames[:, :SIZE, :SIZE]), SIZE),
                       torch.from_numpy(frames[:2, :SIZE, :SIZE]).float() / 127.5 - 1)  # right size: untouched


def test_clip_views_are_views_covering_frames_2i_to_2i_plus_8() -> None:
    x = torch.arange(11.0)[:, None, None, None].expand(11, 2, 2, 3).contiguous()
    views = clip_views(x, 8, 2)
    assert views.shape == (2, 3, 8, 2, 2) and views.data_ptr() == x.data_ptr()
    assert views[1, 0, :, 0, 0].tolist() == list(range(2, 10))


@functools.lru_cache(maxsize=4)
def _random_i3d(channels: int, seed: int) -> torch.nn.Module:
    return init_random(build_i3d(channels), seed).eval()


def _manual_clip_features(frames: np.ndarray, flow: np.ndarray, i: int, seed_rgb: int = 0,
                          seed_flow: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of clip i computed directly from frames [2i, 2i+8) and flow fields [2i, 2i+8)."""
    rgb = torch.from_numpy(frames[2 * i:2 * i + 8]).float() / 127.5 - 1  # [8, H, W, 3]
    fl = torch.from_numpy(flow[2 * i:2 * i + 8].astype(np.float32)).clamp(-15, 15) / 15
    m_rgb, m_flow = _random_i3d(3, seed_rgb), _random_i3d(2, seed_flow)
    with torch.no_grad():
        return (m_rgb.features(rgb.permute(3, 0, 1, 2)[None])[0],
                m_flow.features(fl.permute(3, 0, 1, 2)[None])[0])


def test_clip_i_is_frames_2i_to_2i_plus_8_and_batches_span_videos(extractor: FeatureExtractor) -> None:
    a = realistic_video(13, SIZE, seed=1)  # 3 clips
    b = realistic_video(12, SIZE, seed=2)  # 2 clips
    t0 = time.perf_counter()
    results = list(extractor.run([as_input("a", *a), as_input("b", *b)]))  # batch 4: a's 3 + b's first
    wall = time.perf_counter() - t0
    spent = extractor.host_seconds  # what bench_features reports as host_fraction
    assert set(spent) == {"reader", "to_device", "launch", "device_wait"} and spent["launch"] > 0
    assert all(v >= 0 for v in spent.values()) and sum(spent.values()) <= wall
    assert [r.probe.video for r in results] == ["a", "b"]
    fa, fb = results[0].features, results[1].features
    assert fa["rgb"].shape == fa["flow"].shape == (3, 1024) and fb["rgb"].shape == (2, 1024)
    for feats, (frames, flow) in ((fa, a), (fb, b)):
        for i in range(feats["rgb"].shape[0]):
            rgb, fl = _manual_clip_features(frames, flow, i)
            torch.testing.assert_close(torch.from_numpy(feats["rgb"][i]), rgb, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(torch.from_numpy(feats["flow"][i]), fl, rtol=1e-4, atol=1e-4)
    alone = extractor.extract(as_input("b", *b))
    for s in ("rgb", "flow"):
        np.testing.assert_allclose(alone[s], fb[s], rtol=1e-4, atol=1e-5)


def test_a_clip_depends_only_on_its_eight_frames(extractor: FeatureExtractor) -> None:
    frames, flow = realistic_video(17, SIZE, seed=3)  # clips 0..4
    base = extractor.extract(as_input("v", frames, flow))
    changed_frames, changed_flow = frames.copy(), flow.copy()
    changed_frames[5] = 255 - changed_frames[5]  # frame 5 is in clips 0, 1, 2
    changed_frames[16] = 0  # the last frame is dropped: no clip sees it
    changed_flow[12] = -changed_flow[12] + 3  # field 12 is in flow clips 3, 4
    got = extractor.extract(as_input("v", changed_frames, changed_flow))
    diff_rgb = np.abs(got["rgb"] - base["rgb"]).max(axis=1)
    diff_flow = np.abs(got["flow"] - base["flow"]).max(axis=1)
    assert (diff_rgb[:3] > 1e-3).all() and (diff_rgb[3:] == 0).all()
    assert (diff_flow[:3] == 0).all() and (diff_flow[3:] > 1e-3).all()


def test_batches_kept_in_flight_do_not_change_results_or_their_order(extractor: FeatureExtractor) -> None:
    """``inflight`` batches queued on the device: the same features, yielded in input order, for any depth."""
    videos = [as_input(name, *realistic_video(n, SIZE, seed=10 + k))
              for k, (name, n) in enumerate([("a", 13), ("b", 8), ("c", 21), ("d", 12), ("e", 11)])]
    failed = Failed("bad", "unreadable")
    items = videos[:2] + [failed] + videos[2:]  # b has no clip; 3 + 0 + 7 + 2 + 2 clips in batches of 4
    runs = {}
    for depth in (1, 2, 5):
        runs[depth] = list(extractor.with_options(inflight=depth).run(items))
    for depth, results in runs.items():
        got = [r.video if isinstance(r, Failed) else r.probe.video for r in results]
        assert sorted(got) == ["a", "b", "bad", "c", "d", "e"], depth
        assert [v for v in got if v != "bad"] == ["a", "b", "c", "d", "e"], depth
        for r, ref in zip([r for r in results if not isinstance(r, Failed)],
                          [r for r in runs[1] if not isinstance(r, Failed)]):
            assert r.features["rgb"].shape[0] == clip_count(r.probe.n_frames)
            assert all(np.array_equal(r.features[s], ref.features[s]) for s in ("rgb", "flow")), depth
    with pytest.raises(ConfigError, match="inflight must be at least 1"):
        FeaturesParams.from_params({"inflight": 0})
    with pytest.raises(ConfigError, match="with_options takes"):
        extractor.with_options(batch_size=8)


def test_cpu_runs_are_deterministic(extractor: FeatureExtractor) -> None:
    item = as_input("v", *realistic_video(13, SIZE, seed=4))
    one, two = extractor.extract(item), extractor.extract(item)
    assert all(np.array_equal(one[s], two[s]) for s in ("rgb", "flow"))


# ------------------------------------------------------------------ the stage


def test_stage_writes_features_records_provenance_and_resumes(workspace) -> None:
    frames, flow = make_video(workspace.root, "v1", 14, seed=1)
    make_video(workspace.root, "v2", 11, channels=1, seed=2)
    make_video(workspace.root, "short", 8, seed=3)
    setup_dataset(workspace, {"v1": 14, "v2": 11, "short": 8})
    workspace.run("features", DS)
    out = workspace.out(DS, "features")
    with h5py.File(out / "v1.h5", "r") as f:
        assert f["rgb"].shape == f["flow"].shape == (3, 1024) and f["rgb"].dtype == np.float32
        attrs = {k: read_attr_json(f, k) for k in f.attrs}
        rgb = f["rgb"][()]
    assert attrs["backbone"] == "i3d" and attrs["dim"] == 1024 and attrs["dim_concat"] == 2048
    assert attrs["weights_rgb"] == attrs["weights_flow"] == RANDOM_INIT
    assert (attrs["seed_rgb"], attrs["seed_flow"]) == (0, 1)
    assert (attrs["clip"], attrs["stride"], attrs["input_size"], attrs["precision"]) == (8, 2, SIZE, "fp32")
    assert attrs["faces_digest"] == file_digest(workspace.root / "data" / DS / "faces" / "v1.h5")
    assert attrs["flow_digest"] == file_digest(workspace.root / "data" / DS / "flow" / "v1.h5")
    assert attrs["n_clips"] == 3 and attrs["n_frames"] == 14
    r0, _ = _manual_clip_features(frames, flow, 0)
    torch.testing.assert_close(torch.from_numpy(rgb[0]), r0, rtol=1e-4, atol=1e-4)
    with h5py.File(out / "v2.h5", "r") as f:
        assert f["rgb"].shape == (2, 1024)  # grayscale source works
    # a too-short video: no file, one line in skipped.csv
    assert not (out / "short.h5").exists()
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["video"].tolist() == ["short"] and skipped["n_frames"].tolist() == [8]
    # rerun: complete files with the same digest are kept as they are
    digest_v1, mtime = file_digest(out / "v1.h5"), (out / "v1.h5").stat().st_mtime_ns
    workspace.run("features", DS)
    assert (out / "v1.h5").stat().st_mtime_ns == mtime
    # the digest follows the params that alter values, not the operational ones
    base = FeaturesParams.from_params(workspace.context("features", DS).section())
    probe = probe_video("v1", workspace.root / "data" / DS / "faces" / "v1.h5",
                        workspace.root / "data" / DS / "flow" / "v1.h5")
    weights = weights_identity(base)
    assert video_digest(base, probe, weights) == digest_v1
    faster = FeaturesParams(**{**base.__dict__, "batch_size": 2, "prefetch": 5, "device": "auto"})
    assert video_digest(faster, probe, weights) == digest_v1
    other = FeaturesParams(**{**base.__dict__, "flow_bound": 10.0})
    assert video_digest(other, probe, weights) != digest_v1
    assert video_digest(base, probe, {**weights, "rgb": "0" * 64}) != digest_v1


def test_faces_and_flow_that_disagree_fail_that_video_only(workspace) -> None:
    make_video(workspace.root, "good", 11, seed=1)
    make_video(workspace.root, "short_flow", 12, seed=2, flow_frames=9)
    make_video(workspace.root, "small_flow", 12, seed=3, flow_size=SIZE // 2)
    setup_dataset(workspace, {"good": 11, "short_flow": 12, "small_flow": 12, "missing": 20})
    with pytest.raises(StageFailed) as info:
        workspace.run("features", DS)
    failures = info.value.failures
    assert set(failures) == {"short_flow", "small_flow", "missing"}
    assert "short_flow.h5" in failures["short_flow"] and "9 flow fields" in failures["short_flow"] \
        and "12 frames" in failures["short_flow"] and "rerun the flow stage" in failures["short_flow"]
    assert f"{SIZE // 2}x{SIZE // 2}" in failures["small_flow"] and f"{SIZE}x{SIZE}" in failures["small_flow"]
    assert "missing.h5" in failures["missing"] and "not found" in failures["missing"]
    assert (workspace.out(DS, "features") / "good.h5").is_file()


def test_fail_fast_stops_at_a_bad_input_and_a_rerun_resumes(workspace) -> None:
    """The runner's rules (pipeline.core.runner.run_batched): fail_fast stops at the first failed video, here one
    whose inputs fail their probe, before any model runs; without it the others are computed, complete ones
    skipped on the next run."""
    make_video(workspace.root, "good", 11, seed=1)
    setup_dataset(workspace, {"good": 11, "missing": 20})
    workspace.set_params("parallel", fail_fast=True)
    with pytest.raises(StageFailed) as info:
        workspace.run("features", DS)
    assert set(info.value.failures) == {"missing"}
    out = workspace.out(DS, "features")
    assert not (out / "good.h5").exists()
    workspace.set_params("parallel", fail_fast=False)
    with pytest.raises(StageFailed):
        workspace.run("features", DS)
    mtime = (out / "good.h5").stat().st_mtime_ns
    with pytest.raises(StageFailed) as info:
        workspace.run("features", DS)          # nothing left to compute: the bad input still fails the stage
    assert set(info.value.failures) == {"missing"} and (out / "good.h5").stat().st_mtime_ns == mtime


def test_weights_for_the_wrong_stream_stop_the_stage(workspace, tmp_path: Path) -> None:
    make_video(workspace.root, "v", 11)
    flow_ckpt = tmp_path / "flow_imagenet.pt"
    torch.save(build_i3d(2).state_dict(), flow_ckpt)
    setup_dataset(workspace, {"v": 11}, weights={"rgb": str(flow_ckpt), "flow": str(flow_ckpt)},
                  allow_random_init=False)
    with pytest.raises(ConfigError, match=r"flow_imagenet\.pt.*rgb stream.*flow weights.*swap"):
        workspace.run("features", DS)
    assert not (workspace.out(DS, "features") / "v.h5").exists()


def test_missing_weights_are_refused_and_the_entry_point_exits_2(workspace) -> None:
    make_video(workspace.root, "v", 11)
    setup_dataset(workspace, {"v": 11}, allow_random_init=False)
    with pytest.raises(ConfigError, match=r"features\.weights\.rgb is not set"):
        workspace.run("features", DS)
    from pipeline.features import main

    assert main(["--dataset", DS]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of absent CUDA")
def test_cuda_asked_for_but_absent_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        FeatureExtractor(cfg(device="cuda"))


def test_bad_params_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown key.*batchsize"):
        FeaturesParams.from_params({"batchsize": 3})
    with pytest.raises(ConfigError, match=r"precision = 'fp8' is not one of fp32, tf32, bf16"):
        FeaturesParams.from_params({"precision": "fp8"})
    with pytest.raises(ConfigError, match="fuse applies to backbone i3d only"):
        FeaturesParams.from_params({"backbone": "i3d_r50", "fuse": True})
    assert FeaturesParams.from_params({}).identity() == FeaturesParams.from_params({"batch_size": 7}).identity()
    with pytest.raises(ConfigError, match="space_to_depth rewrites the fused"):
        FeaturesParams.from_params({"space_to_depth": True})
    # a key added later enters the digest only when set: outputs made before it keep their digests
    fused = FeaturesParams.from_params({"fuse": True})
    assert "space_to_depth" not in fused.identity()
    assert FeaturesParams.from_params({"fuse": True, "space_to_depth": True}).identity() == \
        {**fused.identity(), "space_to_depth": True}


def test_a_misspelt_key_is_refused_with_the_closest_one() -> None:
    assert_section_refuses(FeaturesParams, [
        ({"batch_sise": 8}, r"features\.batch_sise \(did you mean batch_size\?\)"),
        ({"weights_rgb": "a.pt"}, r"features\.weights_rgb"),   # the weights are nested: weights: {rgb, flow}
    ])


def test_nested_weights_are_accepted_as_before_and_stay_out_of_the_digest() -> None:
    for given in (None, {}, {"rgb": None}, {"rgb": "", "flow": None}):
        cfg = FeaturesParams.from_params({"weights": given})
        assert cfg.weights == {"rgb": None, "flow": None} and cfg.weights_rgb is None, given
    cfg = FeaturesParams.from_params({"weights": {"rgb": "r.pt", "flow": "f.pt"}})
    assert (cfg.weights_path("rgb"), cfg.weights_flow) == ("r.pt", "f.pt")
    assert cfg.identity() == FeaturesParams.from_params({}).identity()
    assert "weights" not in cfg.identity() and "batch_size" not in cfg.identity()
    assert_section_refuses(FeaturesParams, [
        ({"weights": {"rgb": "r.pt", "depth": "d.pt"}}, r"features\.weights must be a mapping with keys rgb and flow"),
        ({"weights": "r.pt"}, r"features\.weights = 'r\.pt' is invalid"),
        ({"flow_bound": 0}, r"features\.flow_bound must be positive"),
        ({"input_size": 16}, r"features\.input_size must be at least 32"),
    ])


def test_space_to_depth_stem_gives_the_same_features_on_cpu() -> None:
    item = as_input("v", *realistic_video(13, SIZE, seed=21))
    plain = FeatureExtractor(cfg()).extract(item)
    s2d = FeatureExtractor(cfg(fuse=True, space_to_depth=True))
    assert s2d.provenance()["space_to_depth"] is True
    got = s2d.extract(item)
    for s in ("rgb", "flow"):
        torch.testing.assert_close(torch.from_numpy(got[s]), torch.from_numpy(plain[s]), rtol=1e-4,
                                   atol=1e-4 * float(np.abs(plain[s]).max()))


def test_probe_and_reader_read_what_the_crop_and_flow_stages_wrote(tmp_path: Path) -> None:
    frames, flow = realistic_video(10, 32, 1, seed=5)
    write_faces(tmp_path / "faces" / "v.h5", frames, "v")
    write_flow(tmp_path / "flow" / "v.h5", flow, "v")
    probe = probe_video("v", tmp_path / "faces" / "v.h5", tmp_path / "flow" / "v.h5")
    assert (probe.n_frames, probe.height, probe.channels) == (10, 32, 1)
    with PrefetchReader([probe, probe], prefetch=1) as reader:
        items = list(reader)
    assert len(items) == 2 and np.array_equal(items[1].frames, frames) and np.array_equal(items[0].flow, flow)
    assert np.array_equal(read_video(probe).frames, frames)
    with PrefetchReader([probe] * 3, prefetch=1, workers=1) as reader:  # process-pool decoding, order kept
        assert [np.array_equal(i.flow, flow) for i in reader] == [True] * 3
    # one stream: only its array is read, in threads and in reader processes alike
    for workers in (0, 1):
        with PrefetchReader([probe], streams=("rgb",), workers=workers) as reader:
            (item,) = list(reader)
        assert item.flow is None and np.array_equal(item.frames, frames)
        with PrefetchReader([probe], streams=("flow",), workers=workers) as reader:
            (item,) = list(reader)
        assert item.frames is None and np.array_equal(item.flow, flow)


def test_one_stream_from_its_array_alone_equals_that_stream_of_both(extractor: FeatureExtractor) -> None:
    frames, flow = realistic_video(15, SIZE, seed=9)
    both = extractor.extract(as_input("v", frames, flow))
    rgb = extractor.subset(("rgb",)).extract(as_input("v", frames, None))
    fl = extractor.subset(("flow",)).extract(as_input("v", None, flow))
    assert set(rgb) == {"rgb"} and set(fl) == {"flow"}
    assert np.array_equal(rgb["rgb"], both["rgb"]) and np.array_equal(fl["flow"], both["flow"])
    with pytest.raises(ValueError, match="v: no flow array was read"):
        extractor.extract(as_input("v", frames, None))


def stage_files(tmp_path: Path) -> tuple[VideoProbe, np.ndarray, np.ndarray]:
    """A faces file written by the crop stage's writer (its default Blosc codec) and a flow file in the flow
    stage's layout and default filter (lzf, one field per chunk); returns the probe and h5py's plain reads."""
    from pipeline.cropping.params import CropParams
    from pipeline.cropping.writer import FrameWriter

    frames, flow = realistic_video(37, SIZE, 3, seed=7)  # 37 frames: the last 8-frame chunk is partial
    faces_path, flow_path = tmp_path / "faces" / "v.h5", tmp_path / "flow" / "v.h5"
    with atomic_h5(faces_path, "faces-v") as f:
        writer = FrameWriter(f, len(frames), SIZE, 3, CropParams(size=SIZE))
        for start in range(0, len(frames), writer.chunk):
            writer.write(start, frames[start:start + writer.chunk])
    with atomic_h5(flow_path, "flow-v") as f:
        f.create_dataset("flow", data=flow, chunks=(1, SIZE, SIZE, 2), compression="lzf")
    with h5py.File(faces_path, "r") as f:
        assert f["frames"].id.get_create_plist().get_filter(0)[0] == 32001  # Blosc, the crop default
        plain_frames = f["frames"][()]
    with h5py.File(flow_path, "r") as f:
        plain_flow = f["flow"][()]
    assert np.array_equal(plain_frames, frames) and np.array_equal(plain_flow, flow)
    return probe_video("v", faces_path, flow_path), plain_frames, plain_flow


def test_threaded_chunk_reader_returns_exactly_the_plain_h5py_read(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    probe, plain_frames, plain_flow = stage_files(tmp_path)
    with ThreadPoolExecutor(3) as pool:
        item = read_video(probe, pool)
    assert item.frames.dtype == np.uint8 and item.flow.dtype == np.float16
    assert np.array_equal(item.frames, plain_frames) and np.array_equal(item.flow, plain_flow)
    with PrefetchReader([probe] * 3, prefetch=1, threads=2) as reader:
        items = list(reader)
    assert len(items) == 3
    for it in items:
        assert np.array_equal(it.frames, plain_frames) and np.array_equal(it.flow, plain_flow)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (page-locked memory)")
def test_reader_decodes_straight_into_pinned_tensors_on_gpu(tmp_path: Path) -> None:
    probe, plain_frames, plain_flow = stage_files(tmp_path)
    with PrefetchReader([probe] * 2, prefetch=1, threads=2, pin=True) as reader:
        items = list(reader)
    assert len(items) == 2
    for it in items:
        assert it.frames.is_pinned() and it.flow.is_pinned()
        assert it.frames.dtype == torch.uint8 and it.flow.dtype == torch.float16
        assert np.array_equal(it.frames.numpy(), plain_frames) and np.array_equal(it.flow.numpy(), plain_flow)


# ------------------------------------------------------------------ GPU: fast path against fp32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_channels_last_fused_path_matches_fp32_on_gpu() -> None:
    videos = [as_input(f"v{k}", *realistic_video(41, 224, seed=10 + k)) for k in range(3)]
    plain = FeatureExtractor(cfg(device="cuda", input_size=224, batch_size=16))
    fast = FeatureExtractor(cfg(device="cuda", input_size=224, batch_size=48, precision="bf16",
                                channels_last=True, fuse=True))
    fast_s2d = FeatureExtractor(cfg(device="cuda", input_size=224, batch_size=48, precision="bf16",
                                    channels_last=True, fuse=True, space_to_depth=True))
    cpu = FeatureExtractor(cfg(device="cpu", input_size=224, batch_size=16))
    ref = {r.probe.video: r.features for r in plain.run(videos)}
    for path in (fast, fast_s2d):
        got = {r.probe.video: r.features for r in path.run(videos)}
        for v in ref:
            for s in ("rgb", "flow"):
                a, b = torch.from_numpy(ref[v][s]), torch.from_numpy(got[v][s])
                assert a.shape == b.shape == (17, 1024)
                cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
                assert cos.min() >= 0.999, (path.cfg.space_to_depth, v, s, cos.min().item())
    on_cpu = cpu.extract(videos[0])
    for s in ("rgb", "flow"):
        cos = torch.nn.functional.cosine_similarity(torch.from_numpy(on_cpu[s]), torch.from_numpy(ref["v0"][s]), dim=1)
        assert cos.min() >= 0.99999, (s, cos.min().item())


def test_stage_removes_features_of_videos_no_longer_in_the_tables(workspace) -> None:
    make_video(workspace.root, "v1", 11, seed=1)
    make_video(workspace.root, "v2", 11, seed=2)
    setup_dataset(workspace, {"v1": 11, "v2": 11})
    workspace.run("features", DS)
    out = workspace.out(DS, "features")
    assert sorted(p.name for p in out.glob("*.h5")) == ["v1.h5", "v2.h5"]
    setup_dataset(workspace, {"v1": 11})          # v2 left the dataset
    workspace.run("features", DS)
    assert sorted(p.name for p in out.glob("*.h5")) == ["v1.h5"]
