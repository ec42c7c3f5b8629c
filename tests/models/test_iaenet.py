"""IAENet: published parameter counts and shapes, losses on known inputs, overfitting a tiny
set, checkpoint round trip, bf16 autocast against fp32."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from models.blocks import make_block, registered_blocks
from models.errors import ModelConfigError, ModelInputError
from models.iaenet import (IAENetEnsemble, build_model, count_parameters, level_geometry, load_checkpoint, mean_outputs,
                           save_checkpoint)
from models.losses import iaenet_loss, interval_iou, sigmoid_focal_loss
from pipeline.learning.data import prepare
from pipeline.learning.loop import train_model
from pipeline.learning.postprocess import predict_video
from pipeline.learning.presets import load_model_preset, resolve_preset
from pipeline.learning.recipe import TrainRecipe

LOG2 = math.log(2.0)


def tiny_preset(name: str = "iaenet_casme2") -> dict:
    """The published preset's geometry and recipe with a tiny network (fast on CPU)."""
    p = copy.deepcopy(load_model_preset(name))
    p["model"]["base"]["dim"] = 32
    p["model"]["encoder"]["dims"] = [32, 32, 64]
    p["model"]["csfm"]["dropout"] = 0.0
    p["model"]["heads"]["dim"] = 32
    return p


@pytest.mark.parametrize("name,params,points", [("iaenet_casme2", 30_173_198, 28), ("iaenet_samm", 24_009_102, 56)])
def test_published_parameter_counts_and_shapes(name: str, params: int, points: int) -> None:
    model = build_model(load_model_preset(name), 2048)
    assert count_parameters(model) == params
    model.eval()
    with torch.no_grad():
        logits, dists = model(torch.randn(3, 64, 2048))
    assert logits.shape == (3, points, 2) and dists.shape == (3, points, 2)
    assert (dists >= 0).all()
    assert sum(level_geometry(load_model_preset(name))[0]) == points


def test_input_width_follows_features() -> None:
    model = build_model(tiny_preset(), 4096)
    assert model(torch.randn(1, 64, 4096))[0].shape == (1, 28, 2)
    with pytest.raises(ValueError, match="4096"):
        model(torch.randn(1, 64, 2048))


def test_registry_and_bad_presets() -> None:
    assert {"base", "encoder", "tam", "decoder", "csfm", "heads"} <= set(registered_blocks())
    with pytest.raises(ModelConfigError, match="unknown block 'nope'"):
        make_block("nope")
    bad = tiny_preset()
    bad["levels"]["strides"] = [4, 8, 16]
    with pytest.raises(ModelConfigError, match="do not match the network"):
        build_model(bad, 16)


def test_tam_weights_time_steps() -> None:
    tam = make_block("tam")
    with torch.no_grad():
        tam.gate.weight.fill_(1.0)
        tam.gate.bias.fill_(0.0)
    x = torch.tensor([[[1.0, -1.0], [3.0, -3.0]]])      # channel means 2 and -2
    out = tam(x)
    expected = x * torch.sigmoid(torch.tensor([2.0, -2.0]))
    assert torch.allclose(out, expected)


def test_resolve_preset_overrides_only_non_null() -> None:
    p = load_model_preset("iaenet_samm")
    r = resolve_preset(p, {"lr": 1e-3, "epochs": None, "reg_weight": 0.1})
    assert r["train"]["lr"] == 1e-3 and r["train"]["epochs"] == 30 and r["loss"]["reg_weight"] == 0.1
    assert p["train"]["lr"] == 4e-4


def test_focal_loss_known_values() -> None:
    logits = torch.zeros(1, 1, 2)
    # positive macro at p=0.5: 0.25 * 0.5**2 * log 2; negative micro channel: 0.75 * 0.5**2 * log 2
    got = sigmoid_focal_loss(logits, torch.tensor([[1]]))
    assert got.item() == pytest.approx(0.25 * 0.25 * LOG2 + 0.75 * 0.25 * LOG2, rel=1e-6)
    # a confident correct negative costs almost nothing; a confident wrong one a lot
    x = torch.tensor([[[-4.0, 4.0]]])
    p = torch.sigmoid(torch.tensor(4.0)).item()
    expected = 0.75 * (1 - p) ** 2 * -math.log(p) + 0.25 * (1 - p) ** 2 * -math.log(p)   # both right
    assert sigmoid_focal_loss(x, torch.tensor([[2]])).item() == pytest.approx(expected, rel=1e-5)
    masked = sigmoid_focal_loss(torch.zeros(1, 2, 2), torch.tensor([[1, 0]]), mask=torch.tensor([[True, False]]))
    assert masked.item() == pytest.approx(got.item(), rel=1e-6)


def test_iou_and_total_loss_known_values() -> None:
    assert interval_iou(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 3.0])).item() == pytest.approx(0.5)
    logits = torch.zeros(1, 2, 2)
    labels = torch.tensor([[2, 0]])                      # one micro positive, one background point
    targets = torch.tensor([[[1.0, 3.0], [0.0, 0.0]]])
    dists = torch.tensor([[[1.0, 1.0], [5.0, 5.0]]])
    out = iaenet_loss(logits, dists, labels, targets, reg_weight=0.05)
    focal = (0.25 + 3 * 0.75) * 0.25 * LOG2              # 1 positive + 3 negative class slots at p=0.5
    assert out["cls"].item() == pytest.approx(focal / (1 + 1), rel=1e-6)     # / (positives + batch)
    assert out["reg"].item() == pytest.approx(4 * 0.5, rel=1e-6)             # micro weight 4 * (1 - IoU)
    assert out["loss"].item() == pytest.approx(focal / 2 + 0.05 * 2.0, rel=1e-6)
    two = iaenet_loss(torch.zeros(2, 2, 2), dists.repeat(2, 1, 1), torch.tensor([[2, 0], [0, 0]]),
                      targets.repeat(2, 1, 1))
    assert two["cls"].item() == pytest.approx((0.25 + 7 * 0.75) * 0.25 * LOG2 / (1 + 2), rel=1e-6)
    macro = iaenet_loss(logits, dists, torch.tensor([[1, 0]]), targets, reg_weight=0.5)
    assert macro["reg"].item() == pytest.approx(0.5, rel=1e-6)
    none = iaenet_loss(logits, dists, torch.zeros(1, 2, dtype=torch.long), targets)
    assert none["reg"].item() == 0 and none["cls"].item() == pytest.approx(4 * 0.75 * 0.25 * LOG2 / 1, rel=1e-6)


def _toy_set(d: int = 16, seed: int = 0):
    """One 512-frame video whose features mark two macro and one micro interval."""
    rng = np.random.default_rng(seed)
    n = 252                                            # feature steps (frames 0..511)
    feats = rng.normal(0, 0.1, (n, d)).astype(np.float32)
    ann = pd.DataFrame({"video": "v", "subject": "s1", "onset": [100, 300, 400], "offset": [140, 312, 450],
                        "type": ["macro", "micro", "macro"]})
    for on, off, t in zip(ann.onset, ann.offset, ann.type):
        feats[on // 2:off // 2 + 1, 0 if t == "macro" else 1] += 2.0
        feats[on // 2:on // 2 + 2, 2] += 2.0           # onset and offset cues
        feats[off // 2 - 1:off // 2 + 1, 3] += 2.0
    return {"v": feats}, ann


def _best_iou(pred: pd.DataFrame, on: int, off: int, kind: str) -> float:
    p = pred[pred.type == kind]
    inter = np.clip(np.minimum(p.offset, off) - np.maximum(p.onset, on) + 1, 0, None)
    union = np.maximum(p.offset, off) - np.minimum(p.onset, on) + 1
    return float((inter / union).iloc[:2].max())      # among the two best of the class


def test_tiny_model_overfits_and_checkpoint_round_trip(tmp_path, one_thread) -> None:
    preset = tiny_preset()
    preset["train"].update(lr=1e-3, epochs=150, warmup_epochs=0)
    cfg = TrainRecipe.from_preset(preset, {"predict_from_epoch": 150})
    feats, ann = _toy_set()
    prep = prepare(feats, ann, {"v": "s1"}, preset)
    model, preds, hist = train_model(prep, np.arange(len(prep.train)), preset, cfg, seed=1,
                                     test_idx=np.arange(len(prep.test)))
    first, last = hist[0]["loss"], hist[-1]["loss"]
    assert last < first / 10, (first, last)
    assert set(preds.epoch) == {150}
    assert _best_iou(preds, 100, 140, "macro") >= 0.5
    assert _best_iou(preds, 400, 450, "macro") >= 0.5
    assert _best_iou(preds, 300, 312, "micro") >= 0.5
    # checkpoint round trip: same predictions from the reloaded model
    path = tmp_path / "fold" / "model.pt"
    save_checkpoint(path, model, preset, {"train": {"seed": 0}}, {"backbone": "toy"})
    loaded, blob = load_checkpoint(path)
    assert blob["provenance"]["backbone"] == "toy" and blob["in_dim"] == 16
    a = predict_video(model, feats["v"], preset, video="v")
    b = predict_video(loaded, feats["v"], preset, video="v")
    pd.testing.assert_frame_equal(a, b)
    assert a[["onset", "offset"]].values.tolist() == preds[preds.epoch == 150][["onset", "offset"]].values.tolist()


def test_load_checkpoint_refuses_bad_files(tmp_path) -> None:
    with pytest.raises(ModelInputError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ModelInputError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.pt")
    model = build_model(tiny_preset(), 16)
    save_checkpoint(tmp_path / "m.pt", model, tiny_preset(), {}, {})
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    blob["in_dim"] = 8
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(ModelInputError, match="do not match"):
        load_checkpoint(tmp_path / "bad.pt")


def _bf16_vs_fp32(model: torch.nn.Module, x: torch.Tensor, device: str) -> tuple[float, float]:
    model = model.to(device).eval()
    x = x.to(device)
    with torch.no_grad():
        l32, d32 = model(x)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            l16, d16 = model(x)
    err_l = ((l16.float() - l32).abs().max() / l32.abs().max()).item()
    err_d = ((d16.float() - d32).abs().max() / d32.abs().max().clamp(min=1e-6)).item()
    return err_l, err_d


# Tolerance of bf16 autocast against fp32 (outputs, relative to their largest magnitude): 5 %.
BF16_TOL = 0.05


def test_bf16_autocast_close_to_fp32_cpu() -> None:
    torch.manual_seed(0)
    err_l, err_d = _bf16_vs_fp32(build_model(tiny_preset(), 64), torch.randn(4, 64, 64), "cpu")
    assert err_l < BF16_TOL and err_d < BF16_TOL


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_close_to_fp32_gpu() -> None:
    torch.manual_seed(0)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for name in ("iaenet_casme2", "iaenet_samm"):
            model = build_model(load_model_preset(name), 2048)
            err_l, err_d = _bf16_vs_fp32(model, torch.randn(64, 64, 2048), "cuda")
            assert err_l < BF16_TOL and err_d < BF16_TOL, (name, err_l, err_d)
        # training in bf16 still overfits the toy set
        preset = tiny_preset()
        preset["train"].update(lr=1e-3, epochs=150, warmup_epochs=0)
        cfg = TrainRecipe.from_preset(preset, {"precision": "bf16"})
        feats, ann = _toy_set()
        prep = prepare(feats, ann, {"v": "s1"}, preset, device="cuda")
        _, _, hist = train_model(prep, np.arange(len(prep.train)), preset, cfg, seed=1)
        assert hist[-1]["loss"] < hist[0]["loss"] / 10
    finally:
        torch.backends.cudnn.allow_tf32 = True


def test_published_presets_have_no_input_norm() -> None:
    """The paper's IAENet feeds the features as they are: no extra module, same state_dict keys."""
    for name in ("iaenet_casme2", "iaenet_samm"):
        model = build_model(load_model_preset(name), 64)
        assert model.input_norm is None
        assert not any(k.startswith("input_norm") for k in model.state_dict())


def test_input_norm_standardises_with_training_statistics_and_is_saved(tmp_path) -> None:
    preset = tiny_preset()
    preset["model"]["input_norm"] = {}
    model = build_model(preset, 3)
    x = torch.randn(2, 64, 3)
    norm = model.input_norm
    assert torch.equal(norm(x.transpose(1, 2)), x.transpose(1, 2))        # identity until fitted
    rows = torch.tensor([[0.0, 10.0, 1e-4], [2.0, 30.0, 3e-4], [4.0, 50.0, 5e-4]])
    norm.fit(rows)
    assert torch.allclose(norm.mean, torch.tensor([2.0, 30.0, 3e-4]))
    out = norm(rows.T[None])[0].T                                           # [N, C] after standardising
    assert torch.allclose(out[:, :2], torch.tensor([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]]), atol=1e-3)
    assert out[:, 2].abs().max() < 1.0        # a near-constant channel is not blown up (eps)
    with pytest.raises(ModelConfigError, match="input_norm"):
        norm.fit(torch.zeros(5, 4))
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, preset, {}, {})
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded.input_norm.mean, norm.mean) and torch.equal(loaded.input_norm.std, norm.std)


def test_train_model_fits_input_norm_on_training_subjects_only(one_thread) -> None:
    preset = tiny_preset()
    preset["model"]["input_norm"] = {}
    preset["train"].update(epochs=1, warmup_epochs=0)
    cfg = TrainRecipe.from_preset(preset, {})
    feats, ann = _toy_set()
    held_out = feats["v"] * 0 + 1000.0                       # a held-out subject far from the training scale
    ann2 = pd.concat([ann, ann.assign(video="w", subject="s2")], ignore_index=True)
    prep = prepare({"v": feats["v"], "w": held_out}, ann2, {"v": "s1", "w": "s2"}, preset)
    train_idx, _ = prep.fold_windows("s2")
    model, _, _ = train_model(prep, train_idx, preset, cfg, seed=1)
    assert torch.allclose(model.input_norm.mean, torch.from_numpy(feats["v"].mean(0)), atol=1e-5)


def test_train_model_with_ema_predicts_and_returns_the_weight_average(one_thread) -> None:
    preset = tiny_preset()
    preset["train"].update(epochs=2, warmup_epochs=0, ema_decay=0.9)
    cfg = TrainRecipe.from_preset(preset, {"predict_from_epoch": 2})
    feats, ann = _toy_set()
    prep = prepare(feats, ann, {"v": "s1"}, preset)
    model, preds, _ = train_model(prep, np.arange(len(prep.train)), preset, cfg, seed=1,
                                  test_idx=np.arange(len(prep.test)))
    assert not any(p.requires_grad for p in model.parameters())       # the average, not the trained copy
    again = predict_video(model, feats["v"], preset, video="v")
    pd.testing.assert_frame_equal(preds.drop(columns="epoch").reset_index(drop=True), again.reset_index(drop=True),
                                  check_like=True)


def test_input_norm_per_video_normalises_each_video_in_training_and_in_spotting(one_thread) -> None:
    """``input_norm.per_video``: the bank holds each video minus its own per-channel median (``median``),
    also divided by its own noise scale (``robust``), in ``prepare`` (training) and in ``predict_video``
    (spot) alike; the input statistics are fitted on those rows; ``none`` (the default) leaves the
    features as they are."""
    preset = tiny_preset()
    preset["train"].update(epochs=1, warmup_epochs=0)
    preset["inference"].update(min_length=0)     # an untrained model's intervals are short: keep every one
    feats, ann = _toy_set()
    d = feats["v"].shape[1]
    video = feats["v"] * np.linspace(0.5, 20.0, d, dtype=np.float32) + np.linspace(-5.0, 100.0, d, dtype=np.float32)
    med = np.median(video, 0)
    mad = 1.4826 * np.median(np.abs(video - med), 0)
    expect = {"none": video, "median": video - med, "robust": (video - med) / mad}
    for how, want in expect.items():
        p = dict(preset, model=dict(preset["model"], input_norm={"per_video": how}))
        rows = prepare({"v": video}, ann, {"v": "s1"}, p).bank.video_rows("v").numpy()
        assert np.allclose(rows, want, rtol=1e-4, atol=1e-4), how
    # spot: a video shifted by a constant and scaled is the same video once normalised robustly
    robust = dict(preset, model=dict(preset["model"], input_norm={"per_video": "robust"}))
    model = build_model(robust, d).eval()
    a = predict_video(model, video, robust, video="v")
    b = predict_video(model, video * 3.0 + 7.0, robust, video="v")
    pd.testing.assert_frame_equal(a, b, atol=1e-4)
    plain = dict(preset, model=dict(preset["model"], input_norm={}))
    assert len(a) and not predict_video(model, video * 3.0 + 7.0, plain, video="v").equals(a)
    bad = dict(preset, model=dict(preset["model"], input_norm={"per_video": "mean"}))
    with pytest.raises(ModelConfigError, match="per_video"):
        build_model(bad, 3)


def test_mean_outputs_averages_probabilities_not_logits() -> None:
    l1, l2 = torch.logit(torch.tensor([[[0.9, 0.2]]])), torch.logit(torch.tensor([[[0.5, 0.2]]]))
    d1, d2 = torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[3.0, 5.0]]])
    logits, dists = mean_outputs([(l1, d1), (l2, d2)])
    assert torch.allclose(torch.sigmoid(logits), torch.tensor([[[0.7, 0.2]]]), atol=1e-6)
    assert torch.equal(dists, torch.tensor([[[2.0, 4.0]]]))
    assert mean_outputs([(l1, d1)])[0] is l1                       # one model: its outputs as they are


def test_an_ensemble_preset_trains_its_members_with_their_own_seeds_and_predicts_their_average(one_thread,
                                                                                             tmp_path) -> None:
    """``model.ensemble: 2``: member 0 is the single model of the same seed, member 1 another seed's; every
    epoch's predictions and the saved model's (what spot loads) are the members' averaged outputs."""
    preset = tiny_preset()
    preset["train"].update(epochs=2, warmup_epochs=1, ema_decay=0.9)
    preset["inference"]["min_length"] = 0
    feats, ann = _toy_set()
    prep = prepare(feats, ann, {"v": "s1"}, preset)
    cfg = TrainRecipe.from_preset(preset, {"predict_from_epoch": 1})
    train_idx, test_idx = np.arange(len(prep.train)), np.arange(len(prep.test))
    single, single_preds, hist1 = train_model(prep, train_idx, preset, cfg, seed=3, test_idx=test_idx)
    pair = copy.deepcopy(preset)
    pair["model"]["ensemble"] = 2
    model, preds, hist2 = train_model(prep, train_idx, pair, cfg, seed=3, test_idx=test_idx)
    assert isinstance(model, IAENetEnsemble) and len(model.members) == 2 and hist1 == hist2
    first, second = (m.state_dict() for m in model.members)
    assert all(torch.equal(a, b) for a, b in zip(single.state_dict().values(), first.values()))
    assert not all(torch.equal(a, b) for a, b in zip(first.values(), second.values()))
    assert not preds.equals(single_preds)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, pair, {}, {})
    loaded, _ = load_checkpoint(path)
    assert isinstance(loaded, IAENetEnsemble)
    spotted = predict_video(loaded, feats["v"], pair, video="v", epoch=2)
    last = preds[preds.epoch == 2].drop(columns="epoch").reset_index(drop=True)
    pd.testing.assert_frame_equal(spotted.reset_index(drop=True), last, atol=1e-5)
    for bad in (0, True, 1.5):
        with pytest.raises(ModelConfigError, match="model.ensemble"):
            build_model(dict(pair, model=dict(pair["model"], ensemble=bad)), 16)
