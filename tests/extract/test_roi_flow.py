"""Backbone ``roi_flow`` (:mod:`pipeline.extract.roi_flow`): landmark-region flow statistics with the head's
own motion removed, on the I3D clip grid; its params, digest and provenance; ``m2es spot``'s checks; the stage."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.core.params import digest
from pipeline.errors import ConfigError, InputError, StageFailed
from pipeline.extract.params import NO_WEIGHTS, ROI_FLOW, ROI_VERSION, FeaturesParams, RoiParams
from pipeline.extract.prepare import clip_count
from pipeline.extract.reader import Failed, VideoInput, VideoProbe
from pipeline.extract.roi_flow import (DIM, REGIONS, ROWS, STATS, RoiFlowExtractor, feature_names, field_stats,
                                       field_stats_spans, interocular, make_plan, read_landmarks, roi_features)
from pipeline.extract.writer import video_digest, weights_identity
from pipeline.io.artifacts import read_features
from pipeline.io.h5io import atomic_h5, file_digest, read_attr_json
from pipeline.spot.errors import ModelMismatch
from pipeline.spot.recipe import check_feature_recipe
from stages.test_features import DS, make_video, setup_dataset  # the features stage tests' inputs

# dlib's 68 landmarks of a synthetic CAS(ME)^2 subject, in units of its crop's side (x, y)
TEMPLATE = np.array([
    0.121, 0.37, 0.127, 0.47, 0.145, 0.559, 0.157, 0.654, 0.186, 0.749, 0.246, 0.825, 0.322, 0.891, 0.405, 0.95,
    0.494, 0.967, 0.589, 0.95, 0.666, 0.896, 0.749, 0.831, 0.802, 0.749, 0.837, 0.66, 0.855, 0.559, 0.873, 0.464,
    0.879, 0.364, 0.169, 0.281, 0.216, 0.24, 0.281, 0.228, 0.346, 0.234, 0.405, 0.263, 0.595, 0.263, 0.654, 0.234,
    0.719, 0.228, 0.784, 0.24, 0.825, 0.287, 0.506, 0.334, 0.506, 0.405, 0.506, 0.47, 0.506, 0.541, 0.423, 0.577,
    0.464, 0.589, 0.506, 0.601, 0.547, 0.589, 0.583, 0.577, 0.24, 0.34, 0.287, 0.311, 0.34, 0.317, 0.388, 0.352,
    0.334, 0.358, 0.281, 0.358, 0.607, 0.352, 0.654, 0.317, 0.707, 0.317, 0.754, 0.34, 0.713, 0.358, 0.66, 0.358,
    0.305, 0.648, 0.376, 0.642, 0.447, 0.648, 0.5, 0.654, 0.547, 0.642, 0.618, 0.642, 0.683, 0.642, 0.624, 0.731,
    0.553, 0.766, 0.5, 0.778, 0.447, 0.772, 0.37, 0.731, 0.328, 0.654, 0.447, 0.678, 0.5, 0.683, 0.547, 0.672,
    0.66, 0.654, 0.553, 0.725, 0.5, 0.731, 0.447, 0.731]).reshape(68, 2)
S = 64  # crop side in the synthetic flow tests
ROI = RoiParams.from_params({})
ROW = {name: i for i, name in enumerate(ROWS)}
STAT = {name: i for i, name in enumerate(STATS)}
# the literal identities of i3d features before roi_flow existed (computed on the unchanged code)
I3D_DEFAULT_IDENTITY_DIGEST = "35a6cdd66f1cfd66fe75466368ee6d3b0bdc3c0dab35f9a7541183121f3d308d"
I3D_RANDOM_INIT_VIDEO_DIGEST = "a47c9b5a6ec4016bb92a7246ecfd1f09b35ece1ee034fe39732f23eebfe1e2da"


def crop_landmarks(size: int = S) -> np.ndarray:
    """The template's landmarks in a ``size`` crop's pixels (pixel centres at integers)."""
    return TEMPLATE * size - 0.5


def grid(size: int = S) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    return xs, ys


def similarity_flow(n: int, size: int = S, seed: int = 0, shear: float = 0.0) -> np.ndarray:
    """Head motion only: per field a random similarity (rotation, scale, translation; + ``shear``: affine)."""
    rng = np.random.default_rng(seed)
    xs, ys = grid(size)
    out = np.empty((n, size, size, 2))
    for t in range(n):
        a, s = np.deg2rad(rng.uniform(-2, 2)), 1 + rng.uniform(-0.02, 0.02)
        tx, ty = rng.uniform(-1.5, 1.5, 2)
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        x, y = xs - cx, ys - cy
        out[t, ..., 0] = s * (np.cos(a) * x - np.sin(a) * y) + shear * y + cx + tx - xs
        out[t, ..., 1] = s * (np.sin(a) * x + np.cos(a) * y) + cy + ty - ys
    return out


def bump(centre: np.ndarray, amplitude: tuple[float, float], sigma: float, size: int = S) -> np.ndarray:
    """A local motion: a Gaussian of displacement ``amplitude`` (dx, dy) px around ``centre``, [size, size, 2]."""
    xs, ys = grid(size)
    g = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma ** 2))
    return np.stack([g * amplitude[0], g * amplitude[1]], axis=-1)


def feats(flow: np.ndarray, roi: RoiParams = ROI, **kw) -> dict[str, np.ndarray]:
    """roi_flow features of ``flow`` stored as the flow stage stores it (float16), as [N, rows, stats]."""
    out = roi_features(flow.astype(np.float16), crop_landmarks(flow.shape[1]), roi, **kw)
    return {k: v.reshape(v.shape[0], len(ROWS), len(STATS)) for k, v in out.items()}


def roi(**kw) -> RoiParams:
    return RoiParams.from_params(kw)


# ------------------------------------------------------------------ head motion removed


@pytest.mark.parametrize("mode,shear", [("similarity", 0.0), ("affine", 0.0), ("affine", 0.02)])
def test_pure_head_motion_leaves_no_residual_in_any_region(mode: str, shear: float) -> None:
    flow = similarity_flow(24, shear=shear)
    out = feats(flow, roi(head_motion=mode))
    expr = [ROW[name] for name, _ in REGIONS]
    head_mag = out["flow"][:, ROW["head"], STAT["mag"]]
    assert head_mag.min() > 2.0  # the head moved: percent of the inter-ocular distance per field
    for stream in ("flow", "rgb"):
        residual = np.abs(out[stream][:, expr])
        # displacement (% IOD) and strain (%) of the head-free flow: float16 rounding only
        assert residual[..., :4].max() < 0.05, (stream, residual[..., :4].max())
        assert residual[..., 4:].max() < 0.3, (stream, residual[..., 4:].max())
    # the same flow without removing the head motion: every region moves (the check above can fail)
    raw = feats(flow, roi(head_motion="none"))["flow"][:, expr, STAT["mag"]]
    assert raw.min() > 1.0


def test_a_similarity_cannot_remove_shear_but_an_affine_model_can() -> None:
    flow = similarity_flow(16, shear=0.05)
    sim = feats(flow, roi(head_motion="similarity"))["flow"][:, :-1, STAT["mag"]]
    aff = feats(flow, roi(head_motion="affine"))["flow"][:, :-1, STAT["mag"]]
    assert sim.max() > 1.0 and aff.max() < 0.05


def test_nose_mode_removes_a_translation_of_the_whole_face() -> None:
    flow = np.zeros((12, S, S, 2))
    flow[..., 0], flow[..., 1] = 1.25, -0.5
    out = feats(flow, roi(head_motion="nose"))["flow"]
    assert np.abs(out[:, :-1, :4]).max() < 0.01
    iod = interocular(crop_landmarks())
    np.testing.assert_allclose(out[:, ROW["head"], STAT["dx"]], 125 / iod, rtol=1e-3)  # the head row keeps it


# ------------------------------------------------------------------ a local motion


def test_a_mouth_corner_motion_moves_that_region_and_not_the_far_ones() -> None:
    lm = crop_landmarks()
    iod = interocular(lm)
    local = bump(lm[54], (0.8, -0.6), 0.08 * iod)
    alone = np.zeros((30, S, S, 2))
    alone[12:20] = local  # the expression: fields 12..19
    flow = similarity_flow(30, seed=3) + alone  # under the head's own motion
    out = feats(flow)
    mouth = out["flow"][:, ROW["mouth_l"]]
    assert mouth[:, STAT["mag"]].max() > 0.5  # % IOD per field
    assert mouth[:, STAT["dx"]].max() > 0 > mouth[:, STAT["dy"]].min()  # right and up, as moved
    # the head-free mouth corner is the local motion alone
    np.testing.assert_allclose(mouth, feats(alone, roi(head_motion="none"))["flow"][:, ROW["mouth_l"]], atol=0.05)
    near = {"mouth_l", "cheek_l", "upper_lip", "lower_lip", "head"}
    far = [ROW[r] for r in ROWS if r not in near]
    for stream in ("flow", "rgb"):
        peak = np.abs(out[stream][:, ROW["mouth_l"], :4]).max()
        assert np.abs(out[stream][:, far, :4]).max() < 0.03 * peak, stream
    assert out["flow"][:, ROW["mouth_l"], STAT["strain"]].max() > 5 * out["flow"][:, far, STAT["strain"]].max()
    # clips 0-2 end before field 12 and clip 10 starts at field 20: the clip's own motion is quiet there
    quiet = np.abs(mouth[[0, 1, 2, 10], :4]).max()
    assert quiet < 0.03 * np.abs(mouth[:, :4]).max()


# ------------------------------------------------------------------ the clip grid and the sliding reference


@pytest.mark.parametrize("n_frames", [8, 9, 10, 11, 17, 40, 101])
@pytest.mark.parametrize("clip,stride", [(8, 2), (4, 3)])
def test_clip_count_is_the_i3d_paths(n_frames: int, clip: int, stride: int) -> None:
    flow = np.zeros((n_frames - 1, 32, 32, 2), np.float16)
    out = roi_features(flow, crop_landmarks(32), ROI, clip=clip, stride=stride)
    n = clip_count(n_frames, clip, stride)
    assert out["rgb"].shape == out["flow"].shape == (n, DIM)
    assert out["rgb"].dtype == out["flow"].dtype == np.float32


def test_clip_i_covers_fields_2i_to_2i_plus_8_and_the_reference_reaches_k_back() -> None:
    K, j = 5, 20
    flow = np.zeros((41, S, S, 2))
    flow[j] = bump(crop_landmarks()[51], (0.0, 1.0), 3.0)  # one field moves the upper lip
    out = feats(flow, roi(reference_pairs=K))
    moved = {s: set(np.flatnonzero(np.abs(out[s][:, ROW["upper_lip"]]).max(1) > 1e-3)) for s in ("flow", "rgb")}
    assert moved["flow"] == {i for i in range(len(out["flow"])) if 2 * i <= j < 2 * i + 8}
    # the accumulated displacement at field t sums fields t-K+1..t: field j shows at fields j..j+K-1
    assert moved["rgb"] == {i for i in range(len(out["rgb"])) if 2 * i <= j + K - 1 and j < 2 * i + 8}


def test_slow_drift_cancels_against_the_sliding_reference() -> None:
    lm, K = crop_landmarks(), 6
    rate = bump(lm[22], (0.0, -0.03), 3.0)  # the brow creeps up 0.03 px per field, all video long
    flow = np.repeat(rate[None], 120, 0)
    out = feats(flow, roi(reference_pairs=K))
    acc = out["rgb"][:, ROW["brow_l_inner"], STAT["dy"]]
    inst = out["flow"][:, ROW["brow_l_inner"], STAT["dy"]]
    # after the first K fields the accumulated displacement stays K fields' worth: it does not grow with time
    steady = acc[K:]
    np.testing.assert_allclose(steady, steady[0], rtol=1e-3)
    np.testing.assert_allclose(steady, K * inst[K:], rtol=2e-3)
    assert acc[0] < 0 and abs(acc[-1]) < 2 * abs(acc[1])
    # a motion that stops: the displacement against the reference returns to zero K fields later
    flow = np.zeros((60, S, S, 2))
    flow[10:16] = bump(lm[48], (-0.5, 0.2), 3.0)
    out = feats(flow, roi(reference_pairs=K))["rgb"][:, ROW["mouth_r"]]
    assert np.abs(out[5:8, :4]).max() > 0.5  # clips over fields 10..22
    assert np.abs(out[(15 + K) // 2 + 1:, :4]).max() < 1e-3  # clips starting at field 16 + K or later


def test_field_statistics_do_not_depend_on_the_chunks_the_fields_are_cut_into() -> None:
    flow = (similarity_flow(30, seed=5) + bump(crop_landmarks()[57], (0.3, 0.6), 4.0)).astype(np.float16)
    plan = make_plan(crop_landmarks(), S, S, ROI)
    whole = field_stats(flow, plan, 7, chunk=30)
    for chunk in (1, 3, 8):  # chunks shorter and longer than the sliding reference's carry
        cut = field_stats(flow, plan, 7, chunk=chunk)
        for a, b in zip(whole, cut):  # the same sums; only BLAS's blocking of other shapes rounds differently
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_several_spans_in_one_pass_equal_a_pass_per_span() -> None:
    flow = (similarity_flow(30, seed=6) + bump(crop_landmarks()[48], (0.4, -0.2), 4.0)).astype(np.float16)
    plan = make_plan(crop_landmarks(), S, S, ROI)
    for chunk in (4, 30):  # the carry (max span - 1 = 11 fields) longer and shorter than a chunk
        inst, accs = field_stats_spans(flow, plan, [1, 5, 12], chunk=chunk)
        for k, acc in zip([1, 5, 12], accs):
            one_inst, one_acc = field_stats(flow, plan, k, chunk=chunk)
            np.testing.assert_array_equal(acc, one_acc)
            np.testing.assert_array_equal(inst, one_inst)


def test_displacements_are_in_percent_of_the_interocular_distance_whatever_the_crop_size() -> None:
    small, large = np.zeros((10, 64, 64, 2)), np.zeros((10, 128, 128, 2))
    small[...] = bump(crop_landmarks(64)[8], (0.5, 0.0), 4.0, size=64)
    large[...] = bump(crop_landmarks(128)[8], (1.0, 0.0), 8.0, size=128)  # the same motion at twice the resolution
    a, b = feats(small, roi(head_motion="none")), feats(large, roi(head_motion="none"))
    np.testing.assert_allclose(a["flow"][:, ROW["chin"], :4], b["flow"][:, ROW["chin"], :4], rtol=0.05, atol=0.02)
    assert a["flow"][:, ROW["chin"], STAT["dx"]].min() > 0.3


# ------------------------------------------------------------------ landmarks from the faces file


def write_faces_with_landmarks(path: Path, video: str, box: list[int] | None, landmarks: np.ndarray | None,
                               boxes: np.ndarray | None = None, reference_frame: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_h5(path, f"faces-{video}") as f:
        f.create_dataset("frames", data=np.zeros((3, S, S, 3), np.uint8))
        f.attrs["video"] = video
        f.attrs["reference_frame"] = reference_frame
        if box is not None:
            f.attrs["box"] = box
        if boxes is not None:
            f.create_dataset("boxes", data=boxes)
        if landmarks is not None:
            f.attrs["landmarks"] = landmarks.astype(np.float32)
    return path


def reference_landmarks(box: list[int]) -> np.ndarray:
    """Landmarks in reference-frame pixels that the crop of ``box`` (square) puts on the template."""
    side = box[2] - box[0]
    return TEMPLATE * side + np.array(box[:2]) - 0.5


def test_reference_frame_landmarks_are_mapped_into_the_crop_grid_through_its_box(tmp_path: Path) -> None:
    box = [140, 60, 300, 220]  # 160 px in the reference frame, cropped to 64 px
    path = write_faces_with_landmarks(tmp_path / "v.h5", "v", box, reference_landmarks(box))
    np.testing.assert_allclose(read_landmarks(path, "v", S, S), crop_landmarks(), atol=1e-3)
    # track mode: the box of the reference frame itself (boxes dataset) wins over attr box
    other = [100, 20, 260, 180]
    boxes = np.array([box, other, box], np.int32)
    path = write_faces_with_landmarks(tmp_path / "t.h5", "t", box, reference_landmarks(other), boxes, 1)
    np.testing.assert_allclose(read_landmarks(path, "t", S, S), crop_landmarks(), atol=1e-3)


@pytest.mark.parametrize("box,landmarks,match", [
    ([0, 0, 100, 100], None, r"video 'v' has no reference landmarks .*rerun the crop stage.*features.backbone: i3d"),
    (None, np.zeros((68, 2)), r"video 'v' has no usable crop box"),
    ([0, 0, 100, 100], np.zeros((5, 2)), r"video 'v' has landmarks of shape \(5, 2\)"),
])
def test_missing_or_bad_landmarks_are_an_input_error_naming_the_video_and_the_fix(
        tmp_path: Path, box, landmarks, match: str) -> None:
    path = write_faces_with_landmarks(tmp_path / "v.h5", "v", box, landmarks)
    with pytest.raises(InputError, match=match):
        read_landmarks(path, "v", S, S)
    # the engine reports such a video as failed and goes on with the next one
    good = write_faces_with_landmarks(tmp_path / "g.h5", "g", [0, 0, 64, 64], reference_landmarks([0, 0, 64, 64]))
    flow = np.zeros((10, S, S, 2), np.float16)
    items = [VideoInput(VideoProbe(v, p, tmp_path / "flow.h5", 11, S, S, 3, "f", "o"), None, flow)
             for v, p in (("v", path), ("g", good))]
    bad, ok = list(RoiFlowExtractor(FeaturesParams.from_params({"backbone": ROI_FLOW})).run(items))
    assert isinstance(bad, Failed) and bad.video == "v" and "roi_flow" in bad.reason
    assert ok.features["flow"].shape == (2, DIM)


# ------------------------------------------------------------------ params, identity and digest


def test_i3d_identity_and_digest_are_unchanged_by_roi_flow() -> None:
    default = FeaturesParams.from_params({})
    assert digest(default.identity()) == I3D_DEFAULT_IDENTITY_DIGEST
    assert "roi" not in default.identity()
    # roi knobs set for an i3d run do not touch its digest
    tuned = FeaturesParams.from_params({"roi": {"reference_pairs": 3, "head_motion": "nose"}})
    assert digest(tuned.identity()) == I3D_DEFAULT_IDENTITY_DIGEST
    cfg = FeaturesParams.from_params({"allow_random_init": True})
    probe = VideoProbe("v", Path("a"), Path("b"), 10, 32, 32, 3, "fd", "od")
    assert video_digest(cfg, probe, weights_identity(cfg)) == I3D_RANDOM_INIT_VIDEO_DIGEST


def test_roi_flow_identity_holds_its_knobs_and_no_network_knob() -> None:
    # the network knobs (a synthetic preset's fuse and input size, weights) are accepted and ignored
    cfg = FeaturesParams.from_params({"backbone": ROI_FLOW, "precision": "bf16", "input_size": 64, "fuse": True,
                                      "weights": {"rgb": "/nowhere/rgb.pt"}})
    assert cfg.identity() == {"backbone": ROI_FLOW, "clip": 8, "stride": 2, "roi": ROI.as_params()}
    assert FeaturesParams.from_params(cfg.identity()).identity() == cfg.identity()  # a valid features section
    assert weights_identity(cfg) == {"rgb": NO_WEIGHTS, "flow": NO_WEIGHTS}  # no weights file read or needed
    probe = VideoProbe("v", Path("a"), Path("b"), 10, 32, 32, 3, "fd", "od")
    base = video_digest(cfg, probe, weights_identity(cfg))
    assert base == video_digest(FeaturesParams.from_params({"backbone": ROI_FLOW}), probe, weights_identity(cfg))
    for key, value in (("reference_pairs", 4), ("region_scale", 0.3), ("rigid_scale", 0.2), ("head_motion", "nose")):
        other = FeaturesParams.from_params({"backbone": ROI_FLOW, "roi": {key: value}})
        assert video_digest(other, probe, weights_identity(other)) != base, key
    assert video_digest(FeaturesParams.from_params({"backbone": ROI_FLOW, "stride": 3}), probe,
                        weights_identity(cfg)) != base
    assert base != digest({"stage": cfg.identity(), "inputs": {"faces": "fd", "flow": "od"},
                           "weights": weights_identity(cfg), "version": 1})  # ROI_VERSION is in it


@pytest.mark.parametrize("section,match", [
    ({"roi": {"refernce_pairs": 3}}, r"features\.roi\.refernce_pairs \(did you mean reference_pairs\?\)"),
    ({"roi": {"head_motion": "rigid"}}, r"features\.roi\.head_motion = 'rigid' is not one of"),
    ({"roi": {"reference_pairs": 0}}, r"features\.roi\.reference_pairs must be at least 1"),
    ({"roi": {"region_scale": "big"}}, r"features\.roi\.region_scale"),
    ({"roi": 3}, r"features\.roi = 3 is invalid"),
    ({"backbone": "roi"}, r"features\.backbone = 'roi' is not one of i3d, i3d_r50, roi_flow"),
    ({"backbone": ROI_FLOW, "space_to_depth": True}, r"space_to_depth rewrites the fused i3d model's stem"),
])
def test_bad_roi_params_are_refused_naming_the_key(section, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FeaturesParams.from_params(section)


def test_feature_names_follow_the_layout() -> None:
    names = feature_names("flow")
    assert len(names) == DIM == len(ROWS) * len(STATS) == 96
    assert names[6 * ROW["mouth_l"] + STAT["strain"]] == "mouth_l.strain" and names[-1] == "head.strain"


# ------------------------------------------------------------------ m2es spot's check of the recipe


def roi_provenance(**roi_kw) -> dict:
    cfg = FeaturesParams.from_params({"backbone": ROI_FLOW, "roi": roi_kw})
    prov = RoiFlowExtractor(cfg).provenance()
    return dict(prov, feature_width=2 * DIM)


I3D_PROVENANCE = {"backbone": "i3d", "weights_rgb": "random-init", "weights_flow": "random-init", "seed_rgb": 0,
                  "seed_flow": 1, "clip": 8, "stride": 2, "input_size": 224, "flow_bound": 15.0,
                  "feature_width": 2048}


def test_spot_takes_a_roi_flow_model_with_its_own_recipe() -> None:
    check_feature_recipe({"backbone": ROI_FLOW, "device": "cpu"}, roi_provenance(), 2 * DIM, Path("m.pt"))
    check_feature_recipe({"backbone": ROI_FLOW, "roi": {"head_motion": "nose"}}, roi_provenance(head_motion="nose"),
                         2 * DIM, Path("m.pt"))


@pytest.mark.parametrize("section,provenance,match", [
    ({"backbone": "i3d", "allow_random_init": True}, roi_provenance(),
     r"trained on roi_flow features but this run would compute i3d features.*set features\.backbone: roi_flow"),
    ({"backbone": ROI_FLOW}, I3D_PROVENANCE,
     r"trained on i3d features but this run would compute roi_flow features.*set features\.backbone: i3d"),
    ({"backbone": ROI_FLOW, "roi": {"reference_pairs": 6}}, roi_provenance(),
     r"features\.roi\.reference_pairs: model trained with 12, this run 6.*features\.roi \{"),
    ({"backbone": ROI_FLOW}, roi_provenance(head_motion="affine"),
     r"features\.roi\.head_motion: model trained with 'affine', this run 'similarity'"),
    ({"backbone": ROI_FLOW}, dict(roi_provenance(), roi_version=ROI_VERSION + 1),
     rf"trained on version {ROI_VERSION + 1} roi_flow features but this code computes version {ROI_VERSION}"),
    ({"backbone": ROI_FLOW, "stride": 4}, roi_provenance(), r"features\.stride: model trained with 2, this run 4"),
])
def test_spot_refuses_a_model_of_the_other_backbone_or_other_roi_knobs(section, provenance, match: str) -> None:
    with pytest.raises(ModelMismatch, match=match):
        check_feature_recipe(section, provenance, int(provenance["feature_width"]), Path("m.pt"))


# ------------------------------------------------------------------ the stage


def add_landmarks(faces: Path, size: int, box: list[int]) -> None:
    """Give a test faces file what the crop stage stores: the reference landmarks, box and frame."""
    with h5py.File(faces, "r+") as f:
        f.attrs["landmarks"] = (reference_landmarks(box) * 1.0).astype(np.float32)
        f.attrs["box"] = box
        f.attrs["reference_frame"] = 0
        f.attrs["size"] = size


def test_the_features_stage_computes_roi_flow_without_weights(workspace) -> None:
    root = workspace.root
    faces = root / "data" / DS / "faces"
    for video, n, seed in (("v1", 21, 1), ("v2", 12, 2), ("nolm", 14, 3)):
        make_video(root, video, n, seed=seed)
        if video != "nolm":
            add_landmarks(faces / f"{video}.h5", 32, [40, 30, 200, 190])
    make_video(root, "short", 8, seed=4)
    setup_dataset(workspace, {"v1": 21, "v2": 12, "nolm": 14, "short": 8}, backbone=ROI_FLOW,
                  allow_random_init=False)
    with pytest.raises(StageFailed, match=r"nolm: .*nolm.* has no reference landmarks.*rerun the crop stage") as err:
        workspace.run("features", DS)
    assert set(err.value.failures) == {"nolm"}
    out = workspace.out(DS, "features")
    assert not (out / "nolm.h5").exists() and not (out / "short.h5").exists()
    with h5py.File(out / "v1.h5", "r") as f:
        assert f["rgb"].shape == f["flow"].shape == (clip_count(21), DIM) and f["flow"].dtype == np.float32
        attrs = {k: read_attr_json(f, k) for k in f.attrs}
        stamp = f.attrs["m2es_digest"]
    assert attrs["backbone"] == ROI_FLOW and attrs["dim"] == DIM and attrs["dim_concat"] == 2 * DIM
    assert attrs["roi"] == ROI.as_params() and attrs["roi_version"] == ROI_VERSION
    assert attrs["roi_regions"] == list(ROWS) and attrs["roi_stats"] == list(STATS)
    assert attrs["weights_rgb"] == attrs["weights_flow"] == NO_WEIGHTS and (attrs["clip"], attrs["stride"]) == (8, 2)
    assert attrs["faces_digest"] == file_digest(faces / "v1.h5")
    assert attrs["m2es_params"] == FeaturesParams.from_params({"backbone": ROI_FLOW}).identity()
    feats_, _ = read_features(out / "v2.h5")  # what train reads: both datasets side by side
    assert feats_.shape == (clip_count(12), 2 * DIM) and np.abs(feats_).max() > 0
    # the same features as the function on the files' arrays
    with h5py.File(root / "data" / DS / "flow" / "v1.h5", "r") as f:
        flow = f["flow"][()]
    want = roi_features(flow, read_landmarks(faces / "v1.h5", "v1", 32, 32), ROI)
    with h5py.File(out / "v1.h5", "r") as f:
        assert np.array_equal(f["rgb"][()], want["rgb"]) and np.array_equal(f["flow"][()], want["flow"])
    # a rerun skips the complete files; other roi knobs recompute them
    (faces / "nolm.h5").unlink()
    (root / "data" / DS / "flow" / "nolm.h5").unlink()
    setup_dataset(workspace, {"v1": 21, "v2": 12, "short": 8}, backbone=ROI_FLOW, allow_random_init=False)
    workspace.run("features", DS)
    with h5py.File(out / "v1.h5", "r") as f:
        assert f.attrs["m2es_digest"] == stamp
    setup_dataset(workspace, {"v1": 21, "v2": 12, "short": 8}, backbone=ROI_FLOW, allow_random_init=False,
                  roi={"reference_pairs": 4})
    workspace.run("features", DS)
    with h5py.File(out / "v1.h5", "r") as f:
        assert f.attrs["m2es_digest"] != stamp and read_attr_json(f, "roi")["reference_pairs"] == 4
