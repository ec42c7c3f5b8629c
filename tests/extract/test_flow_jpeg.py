"""``features.flow_quantize`` (:mod:`pipeline.extract.flow_jpeg`): the flow as the published tooling stored it
(0-255 levels at ±15 px, one grayscale JPEG per component, OpenCV's quality 95) and its I3D extractor read it
(``k * 2 / 255 - 1``); hand-made fields with known levels, the JPEG step against OpenCV and PIL directly, the
reader, both backbones, the digest, and the repository's per-dataset values."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.core.params import digest, load_dataset, load_params, stage_params
from pipeline.extract.extractor import FeatureExtractor
from pipeline.extract.flow_jpeg import dequantize, flow_levels, jpeg_roundtrip, level_values, quantize_flow
from pipeline.extract.params import ROI_FLOW, FeaturesParams
from pipeline.extract.prepare import prepare_flow
from pipeline.extract.reader import PrefetchReader, VideoProbe, probe_video, read_video
from pipeline.extract.roi_flow import RoiFlowExtractor, read_landmarks, roi_features
from pipeline.extract.writer import video_digest, weights_identity
from extract.test_roi_flow import add_landmarks
from stages.test_features import SIZE, _random_i3d, as_input, cfg, realistic_video, write_faces, write_flow

REPO = Path(__file__).resolve().parents[2]

# hand-made flow (px) -> the published level: round((f + 15) * 8.5), halves to even, clipped to 0..255
KNOWN = [(-20.0, 0), (-15.0, 0), (-14.0, 8), (-13.0, 17), (-12.0, 26), (-0.5, 123), (0.0, 128), (2.0, 144),
         (14.5, 251), (15.0, 255), (40.0, 255)]


def textured(n: int = 3, size: int = 48, seed: int = 0) -> np.ndarray:
    """A flow field with detail at every scale (JPEG cannot keep it exactly), float16 px."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 6, (n, size, size, 2)).astype(np.float16)


def test_levels_of_hand_made_flow_follow_the_published_rounding_and_clipping() -> None:
    flow = np.array([f for f, _ in KNOWN], np.float16).reshape(1, 1, -1, 1).repeat(2, axis=-1)
    levels = flow_levels(flow, 15.0)
    assert levels.dtype == np.uint8
    assert levels[0, 0, :, 0].tolist() == [k for _, k in KNOWN]
    # half levels go to the even one (np.round), not up (-14 px is 8.5 -> 8, 2 px is 144.5 -> 144)
    assert flow_levels(np.float32([-14.0, 2.0]), 15.0).tolist() == [8, 144]
    # what the published extractor fed I3D for them: k * 2 / 255 - 1 (0 px reads as +1/255, not 0)
    table = level_values()
    assert table[0] == -1.0 and table[255] == 1.0 and table[128] == np.float32(1 / 255)
    assert dequantize(np.uint8([0, 128, 255]), 15.0).tolist() == [-15.0, np.float32(np.float32(1 / 255) * 15), 15.0]


def test_a_flat_field_survives_the_jpeg_step_exactly_and_matches_opencv() -> None:
    flat = np.zeros((2, 40, 40, 2), np.float16)
    flat[..., 0], flat[1, ..., 1] = 3.0, -7.25
    levels = flow_levels(flat)
    assert np.array_equal(quantize_flow(flat), levels)  # a constant image is JPEG's lossless case
    for t in range(2):
        for c in range(2):
            ok, buf = cv2.imencode(".jpg", levels[t, :, :, c])  # OpenCV's default quality (95)
            assert ok and np.array_equal(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE), levels[t, :, :, c])


def test_a_textured_field_goes_through_the_published_store_and_read_exactly(tmp_path: Path) -> None:
    flow = textured()
    levels, decoded = flow_levels(flow), quantize_flow(flow)
    assert not np.array_equal(decoded, levels)  # JPEG changed it: not what `none` reads
    assert np.abs(decoded.astype(int) - levels.astype(int)).max() <= 16
    image = pytest.importorskip("PIL.Image")
    for t in range(flow.shape[0]):
        # the published writer: its int array (np.round(...).astype(int)) through cv2.imwrite with default params,
        # read back by PIL as its extractor did
        published = np.round((flow[t].astype(np.float32) + 15) * (255.0 / 30)).astype(int)
        published[published >= 255], published[published <= 0] = 255, 0
        for c, name in enumerate("uv"):
            path = str(tmp_path / f"{name}{t:06d}.jpg")
            assert cv2.imwrite(path, published[:, :, c])
            assert np.array_equal(np.array(image.open(path)), decoded[t, :, :, c]), (t, name)
    # another quality gives other pixels: the step really is quality 95
    assert not np.array_equal(jpeg_roundtrip(levels, 75), decoded)


def flow_files(tmp_path: Path, flow: np.ndarray) -> VideoProbe:
    frames = np.zeros((flow.shape[0] + 1, *flow.shape[1:3], 1), np.uint8)
    write_faces(tmp_path / "faces.h5", frames, "v")
    write_flow(tmp_path / "flow.h5", flow, "v")
    return probe_video("v", tmp_path / "faces.h5", tmp_path / "flow.h5")


def test_the_reader_hands_jpeg_levels_and_i3d_reads_the_published_values(tmp_path: Path) -> None:
    zero = np.zeros((9, SIZE, SIZE, 2), np.float16)
    probe = flow_files(tmp_path, zero)
    jpeg = read_video(probe, streams=("flow",), flow_quantize="jpeg", flow_bound=15.0).flow
    none = read_video(probe, streams=("flow",), flow_quantize="none").flow
    assert jpeg.dtype == np.uint8 and (jpeg == 128).all()
    assert none.dtype == np.float16 and np.array_equal(none, zero)
    # what I3D is fed: 0 px is +1/255 through the published path, 0 without it
    assert (prepare_flow(torch.from_numpy(jpeg), SIZE) == np.float32(1 / 255)).all()
    assert (prepare_flow(torch.from_numpy(none), SIZE) == 0).all()
    # the prefetching reader (threads and reader processes) passes the setting on
    flow = textured(9, SIZE, seed=3)
    probe = flow_files(tmp_path / "t", flow)
    for workers in (0, 1):
        with PrefetchReader([probe], streams=("flow",), workers=workers, flow_quantize="jpeg") as reader:
            (item,) = list(reader)
        assert np.array_equal(item.flow, quantize_flow(flow))


def test_both_backbones_read_the_quantised_flow(tmp_path: Path) -> None:
    _, flow = realistic_video(12, SIZE, seed=4)
    levels = quantize_flow(flow)
    # i3d: the flow stream is the network on the published extractor's input, (level * 2 / 255) - 1 in float64
    ext = FeatureExtractor(cfg(batch_size=4)).subset(("flow",))
    from_levels = ext.extract(as_input("v", None, levels))["flow"]
    published = torch.from_numpy((levels[2:10].astype(float) * 2 / 255 - 1).astype(np.float32))  # clip 1
    with torch.no_grad():
        want = _random_i3d(2, 1).features(published.permute(3, 0, 1, 2)[None])[0]
    torch.testing.assert_close(torch.from_numpy(from_levels[1]), want, rtol=1e-4, atol=1e-4)
    plain = ext.extract(as_input("v", None, flow))["flow"]
    assert not np.allclose(from_levels, plain, rtol=1e-4, atol=1e-4)
    # roi_flow: the statistics of the dequantised flow in px
    probe = flow_files(tmp_path, flow)
    add_landmarks(probe.faces, SIZE, [40, 30, 200, 190])
    roi = RoiFlowExtractor(FeaturesParams.from_params({"backbone": ROI_FLOW, "flow_quantize": "jpeg"}))
    got = roi.extract(read_video(probe, streams=("flow",), flow_quantize="jpeg"))
    want = roi_features(dequantize(levels, 15.0), read_landmarks(probe.faces, "v", SIZE, SIZE), roi.roi)
    assert all(np.array_equal(got[s], want[s]) for s in ("rgb", "flow"))
    plain_roi = roi.extract(read_video(probe, streams=("flow",)))
    assert not np.array_equal(got["flow"], plain_roi["flow"])


def test_none_keeps_the_old_digests_and_jpeg_changes_them() -> None:
    probe = VideoProbe("v", Path("a"), Path("b"), 10, 32, 32, 3, "fd", "od")
    for backbone in ("i3d", ROI_FLOW):
        old = FeaturesParams.from_params({"backbone": backbone, "allow_random_init": True})
        none = FeaturesParams.from_params({"backbone": backbone, "allow_random_init": True, "flow_quantize": "none"})
        jpeg = FeaturesParams.from_params({"backbone": backbone, "allow_random_init": True, "flow_quantize": "jpeg"})
        assert "flow_quantize" not in none.identity() and none.identity() == old.identity()
        assert jpeg.identity()["flow_quantize"] == "jpeg"
        assert FeaturesParams.from_params(jpeg.identity()).identity() == jpeg.identity()  # a valid features section
        w = weights_identity(old)
        assert video_digest(none, probe, w) == video_digest(old, probe, w) != video_digest(jpeg, probe, w)
    # roi_flow: the bound matters once the flow is quantised at it, not before
    roi = {"backbone": ROI_FLOW}
    assert digest(FeaturesParams.from_params({**roi, "flow_bound": 10.0}).identity()) == \
        digest(FeaturesParams.from_params(roi).identity())
    assert FeaturesParams.from_params({**roi, "flow_quantize": "jpeg", "flow_bound": 10.0}).identity() != \
        FeaturesParams.from_params({**roi, "flow_quantize": "jpeg"}).identity()
    with pytest.raises(Exception, match="flow_quantize"):
        FeaturesParams.from_params({"flow_quantize": "png"})


@pytest.mark.parametrize("dataset,expected", [("casme2", "jpeg"), ("samm_lv", "jpeg"), ("generic", "jpeg"),
                                              ("synth_casme2", "none"), ("synth_samm", "none")])
def test_real_datasets_read_the_published_jpeg_flow_and_the_cpu_presets_the_float_flow(dataset: str,
                                                                                       expected: str) -> None:
    params = load_params(REPO / "params.yaml")
    section = stage_params(params, "features", load_dataset(dataset, REPO / "configs" / "datasets"))
    assert FeaturesParams.from_params(section).flow_quantize == expected


def test_spot_refuses_flow_read_otherwise_than_for_the_model_s_training_features() -> None:
    from extract.test_roi_flow import I3D_PROVENANCE  # recorded before the key: float flow
    from pipeline.spot.errors import ModelMismatch
    from pipeline.spot.recipe import check_feature_recipe

    section = {"allow_random_init": True}
    check_feature_recipe(section, I3D_PROVENANCE, 2048, Path("m.pt"))
    check_feature_recipe({**section, "flow_quantize": "jpeg"}, {**I3D_PROVENANCE, "flow_quantize": "jpeg"}, 2048,
                         Path("m.pt"))
    with pytest.raises(ModelMismatch, match="features.flow_quantize: model trained on none flow, this run jpeg"):
        check_feature_recipe({**section, "flow_quantize": "jpeg"}, I3D_PROVENANCE, 2048, Path("m.pt"))
    with pytest.raises(ModelMismatch, match="features.flow_quantize: model trained on jpeg flow, this run none"):
        check_feature_recipe(section, {**I3D_PROVENANCE, "flow_quantize": "jpeg"}, 2048, Path("m.pt"))
    # what the stage records: the setting, in every features file's provenance
    assert FeatureExtractor(cfg(flow_quantize="jpeg")).subset(("flow",)).provenance()["flow_quantize"] == "jpeg"
    assert RoiFlowExtractor(FeaturesParams.from_params({"backbone": ROI_FLOW})).provenance()["flow_quantize"] == "none"
