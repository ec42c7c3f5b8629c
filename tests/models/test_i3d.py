"""Inception I3D: the port's layout and key names, SAME padding, features, weights loading."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.errors import ModelConfigError
from models.i3d import MaxPool3dSamePadding, Unit3D, build_i3d, init_random, same_pad
from models.weights import RANDOM_INIT, load_backbone, sha256_file

# The port's table (pytorch_i3d.py), written out independently of models/i3d.py.
PORT_UNITS = {  # name: (in, out, kernel)
    "Conv3d_1a_7x7": (None, 64, 7), "Conv3d_2b_1x1": (64, 64, 1), "Conv3d_2c_3x3": (64, 192, 3),
}
PORT_MIXED = {
    "Mixed_3b": (192, [64, 96, 128, 16, 32, 32]), "Mixed_3c": (256, [128, 128, 192, 32, 96, 64]),
    "Mixed_4b": (480, [192, 96, 208, 16, 48, 64]), "Mixed_4c": (512, [160, 112, 224, 24, 64, 64]),
    "Mixed_4d": (512, [128, 128, 256, 24, 64, 64]), "Mixed_4e": (512, [112, 144, 288, 32, 64, 64]),
    "Mixed_4f": (528, [256, 160, 320, 32, 128, 128]), "Mixed_5b": (832, [256, 160, 320, 32, 128, 128]),
    "Mixed_5c": (832, [384, 192, 384, 48, 128, 128]),
}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def port_layout(in_channels: int) -> dict[str, tuple[int, ...]]:
    """Every state_dict key of the port's InceptionI3d(400, in_channels) with its shape."""
    layout: dict[str, tuple[int, ...]] = {}

    def unit(name: str, cin: int, cout: int, k: int) -> None:
        layout[f"{name}.conv3d.weight"] = (cout, cin, k, k, k)
        for key in BN_KEYS:
            layout[f"{name}.bn.{key}"] = () if key == "num_batches_tracked" else (cout,)

    for name, (cin, cout, k) in PORT_UNITS.items():
        unit(name, cin or in_channels, cout, k)
    for name, (cin, o) in PORT_MIXED.items():
        unit(f"{name}.b0", cin, o[0], 1)
        unit(f"{name}.b1a", cin, o[1], 1)
        unit(f"{name}.b1b", o[1], o[2], 3)
        unit(f"{name}.b2a", cin, o[3], 1)
        unit(f"{name}.b2b", o[3], o[4], 3)
        unit(f"{name}.b3b", cin, o[5], 1)
    layout["logits.conv3d.weight"] = (400, 1024, 1, 1, 1)
    layout["logits.conv3d.bias"] = (400,)
    return layout


@pytest.mark.parametrize("channels", [3, 2])
def test_state_dict_has_the_ports_keys_and_shapes(channels: int) -> None:
    state = build_i3d(channels).state_dict()
    expected = port_layout(channels)
    assert set(state) == set(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert len(state) == 344


def test_batch_norm_and_unit_settings_follow_the_port() -> None:
    model = build_i3d(3)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(bns) == 57
    assert all(bn.eps == 0.001 and bn.momentum == 0.01 for bn in bns)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert sum(c.bias is not None for c in convs) == 1  # only logits
    assert model.Conv3d_1a_7x7.conv3d.stride == (2, 2, 2)
    assert model.MaxPool3d_4a_3x3.stride == (2, 2, 2) and model.MaxPool3d_2a_3x3.stride == (1, 2, 2)


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (224, 7, 2, (2, 3)), (8, 7, 2, (2, 3)), (7, 7, 2, (3, 3)), (112, 3, 2, (0, 1)), (56, 3, 1, (1, 1)),
    (2, 2, 2, (0, 0)), (3, 2, 2, (0, 1)), (4, 1, 1, (0, 0)), (5, 3, 2, (1, 1)),
])
def test_same_pad_is_tensorflows(size: int, kernel: int, stride: int, expected: tuple[int, int]) -> None:
    assert same_pad(size, kernel, stride) == expected
    before, after = expected
    assert (size + before + after - kernel) // stride + 1 == -(-size // stride)  # ceil(size / stride) outputs


def _port_unit(unit: Unit3D, x: torch.Tensor) -> torch.Tensor:
    """The port's Unit3D forward: always F.pad with its formula, then an unpadded conv."""
    pads = [same_pad(s, k, st) for s, k, st in zip(x.shape[2:], unit.kernel_shape, unit.stride)]
    x = F.pad(x, (pads[2][0], pads[2][1], pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
    x = unit.bn(unit.conv3d(x))
    return F.relu(x)


def _port_pool(pool: MaxPool3dSamePadding, x: torch.Tensor) -> torch.Tensor:
    pads = [same_pad(s, k, st) for s, k, st in zip(x.shape[2:], pool.kernel_size, pool.stride)]
    x = F.pad(x, (pads[2][0], pads[2][1], pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
    return F.max_pool3d(x, pool.kernel_size, pool.stride)


@pytest.mark.parametrize("shape", [(8, 16, 16), (7, 15, 13), (4, 9, 10)])
@pytest.mark.parametrize("kernel,stride", [((7, 7, 7), (2, 2, 2)), ((3, 3, 3), (1, 1, 1)), ((1, 1, 1), (1, 1, 1))])
def test_unit3d_padding_matches_the_ports_f_pad(shape: tuple[int, ...], kernel: tuple, stride: tuple) -> None:
    torch.manual_seed(0)
    unit = init_random(Unit3D(3, 5, kernel, stride), 1).eval()
    with torch.no_grad():
        unit.bn.running_mean.uniform_(-0.5, 0.5)
        unit.bn.running_var.uniform_(0.5, 2.0)
        x = torch.randn(2, 3, *shape)
        torch.testing.assert_close(unit(x), _port_unit(unit, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(8, 16, 16), (7, 15, 13), (2, 7, 7)])
@pytest.mark.parametrize("kernel,stride", [((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2)), ((2, 2, 2), (2, 2, 2)),
                                           ((3, 3, 3), (1, 1, 1))])
def test_maxpool_same_padding_matches_the_port_on_relu_inputs(shape: tuple, kernel: tuple, stride: tuple) -> None:
    pool = MaxPool3dSamePadding(kernel_size=kernel, stride=stride)
    x = torch.relu(torch.randn(2, 4, *shape, generator=torch.Generator().manual_seed(3)))
    ref = _port_pool(pool, x)
    assert torch.equal(pool(x), ref)
    pool.separable = True   # the fused model's 2-D-per-frame then time pooling: the same maxima
    assert torch.equal(pool(x), ref)
    assert torch.equal(pool(x.contiguous(memory_format=torch.channels_last_3d)), ref)


def test_mixed_5c_of_an_8_frame_clip_has_one_time_step_and_features_are_its_mean() -> None:
    model = init_random(build_i3d(3), 0).eval()
    x = torch.randn(1, 3, 8, 224, 224, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    with torch.no_grad():
        m5c = model.mixed_5c(x)
        feats = model.features(x)
        logits = model(x)
    assert m5c.shape == (1, 1024, 1, 7, 7)
    assert feats.shape == (1, 1024)
    torch.testing.assert_close(feats, m5c.mean(dim=(2, 3, 4)))
    # at 224 px and T' = 1 the port's head (7x7 average, 1x1x1 conv) is a linear map of the features
    torch.testing.assert_close(logits[:, :, 0], model.logits.conv3d(feats[:, :, None, None, None]).flatten(1),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size,spatial", [(112, 4), (64, 2)])
def test_other_input_sizes_pool_adaptively(size: int, spatial: int) -> None:
    model = init_random(build_i3d(2), 0).eval()
    x = torch.randn(2, 2, 8, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert model.mixed_5c(x).shape == (2, 1024, 1, spatial, spatial)
        feats = model.features(x)
    assert feats.shape == (2, 1024) and torch.isfinite(feats).all() and feats.std() > 0


def test_random_init_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a = init_random(build_i3d(3), 7).state_dict()
    b = init_random(build_i3d(3), 7).state_dict()
    c = init_random(build_i3d(3), 8).state_dict()
    key = "Mixed_4d.b1b.conv3d.weight"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a[key], c[key])
    model = build_i3d(3)  # default init draws from the global RNG; init_random must not
    before = torch.get_rng_state()
    init_random(model, 7)
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(state, before)  # sanity: the check above can see RNG use


def test_cpu_features_are_deterministic() -> None:
    model = init_random(build_i3d(3), 0).eval()
    x = torch.randn(3, 3, 8, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model.features(x), model.features(x))


def test_fused_model_computes_the_same_features() -> None:
    model = init_random(build_i3d(3), 0).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics so that folding is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.8, 1.2)
                m.bias.uniform_(-0.1, 0.1)
    fused = model.fused_for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fused.modules())
    assert all(m.separable for m in fused.modules() if isinstance(m, MaxPool3dSamePadding))
    x = torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(4))
    s2d = model.fused_for_inference(space_to_depth=True)
    assert s2d.Conv3d_1a_7x7.s2d_weight.shape == (64, 24, 4, 4, 4) and fused.Conv3d_1a_7x7.s2d_weight is None
    with torch.no_grad():
        ref, got, got_s2d = model.features(x), fused.features(x), s2d.features(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    torch.testing.assert_close(got_s2d, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert set(s2d.state_dict()) - set(fused.state_dict()) == {"Conv3d_1a_7x7.s2d_weight"}


@pytest.mark.parametrize("channels,shape", [(3, (8, 224, 224)), (2, (8, 224, 224)), (3, (9, 57, 63)),
                                            (2, (7, 32, 33)), (3, (1, 5, 6))])
def test_space_to_depth_stem_equals_the_strided_convolution(channels: int, shape: tuple[int, ...]) -> None:
    """The 7x7x7 stride-2 stem as a 4x4x4 convolution over 8 input phases: same output, SAME padding
    included, for even and odd sizes and clips shorter than the kernel."""
    gen = torch.Generator().manual_seed(channels * 100 + shape[-1])
    unit = init_random(Unit3D(channels, 64, (7, 7, 7), stride=(2, 2, 2)), 5).eval()
    with torch.no_grad():
        unit.bn.running_mean.normal_(0, 0.5, generator=gen)
        unit.bn.running_var.uniform_(0.5, 2.0, generator=gen)
        unit.bn.bias.normal_(0, 0.5, generator=gen)
    x = torch.randn(2, channels, *shape, generator=gen)
    with torch.no_grad():
        ref = unit(x)
        with pytest.raises(ValueError, match="fold the BatchNorm first"):
            unit.to_space_to_depth()
        unit.fold_batch_norm()
        unit.to_space_to_depth()
        assert unit.s2d_weight.shape == (64, channels * 8, 4, 4, 4)
        got = unit(x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())



# ------------------------------------------------------------------ weights


def _checkpoint(tmp_path: Path, channels: int, name: str, seed: int = 3, drop_nbt: bool = False,
                prefix: str = "") -> tuple[Path, dict[str, torch.Tensor]]:
    model = init_random(build_i3d(channels), seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.1)
    state = model.state_dict()
    if drop_nbt:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / name
    torch.save({prefix + k: v for k, v in state.items()}, path)
    return path, model.state_dict()


@pytest.mark.parametrize("stream,channels", [("rgb", 3), ("flow", 2)])
def test_checkpoint_in_the_ports_layout_loads_strictly(tmp_path: Path, stream: str, channels: int) -> None:
    path, state = _checkpoint(tmp_path, channels, f"{stream}_imagenet.pt")
    bb = load_backbone("i3d", stream, path)
    loaded = bb.model.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    assert bb.weights == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_file(path)
    assert bb.dim == 1024 and bb.path == str(path) and not bb.model.training
    # the port itself would load it with strict=True: the file is a plain state_dict
    fresh = build_i3d(channels)
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)


def test_old_checkpoints_without_num_batches_tracked_and_dataparallel_prefix_load(tmp_path: Path) -> None:
    path, state = _checkpoint(tmp_path, 3, "old.pt", drop_nbt=True, prefix="module.")
    loaded = load_backbone("i3d", "rgb", path).model.state_dict()
    assert torch.equal(loaded["Mixed_5c.b2b.bn.running_mean"], state["Mixed_5c.b2b.bn.running_mean"])


def test_weights_of_the_other_stream_are_refused_with_a_hint(tmp_path: Path) -> None:
    flow_path, _ = _checkpoint(tmp_path, 2, "flow_imagenet.pt")
    rgb_path, _ = _checkpoint(tmp_path, 3, "rgb_imagenet.pt")
    with pytest.raises(ModelConfigError, match=r"flow_imagenet\.pt.*rgb stream.*2 input channels.*flow weights.*swap"):
        load_backbone("i3d", "rgb", flow_path)
    with pytest.raises(ModelConfigError, match=r"rgb_imagenet\.pt.*flow stream.*3 input channels.*rgb weights"):
        load_backbone("i3d", "flow", rgb_path)


def test_wrong_keys_and_shapes_name_the_file_and_the_layout(tmp_path: Path) -> None:
    _, state = _checkpoint(tmp_path, 3, "x.pt")
    renamed = {k.replace("Mixed_4c", "Mixed4c"): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(ModelConfigError, match=r"renamed\.pt.*missing key.*Mixed_4c.*unexpected key.*Mixed4c"
                                          r".*Expected the InceptionI3d layout"):
        load_backbone("i3d", "rgb", tmp_path / "renamed.pt")
    charades = dict(state, **{"logits.conv3d.weight": torch.zeros(157, 1024, 1, 1, 1),
                              "logits.conv3d.bias": torch.zeros(157)})
    torch.save(charades, tmp_path / "charades.pt")
    with pytest.raises(ModelConfigError, match=r"charades\.pt.*wrong shape.*logits\.conv3d\.weight \(157, 1024"):
        load_backbone("i3d", "rgb", tmp_path / "charades.pt")


def test_missing_or_unreadable_weights_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"nope\.pt.*not found.*features\.weights\.rgb"):
        load_backbone("i3d", "rgb", tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelConfigError, match=r"junk\.pt.*weights_only=True"):
        load_backbone("i3d", "rgb", tmp_path / "junk.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ModelConfigError, match=r"list\.pt.*not a state_dict"):
        load_backbone("i3d", "flow", tmp_path / "list.pt")


def test_no_weights_needs_allow_random_init_and_records_the_seed() -> None:
    with pytest.raises(ModelConfigError, match=r"features\.weights\.flow is not set.*allow_random_init: true"):
        load_backbone("i3d", "flow", None)
    bb = load_backbone("i3d", "flow", None, allow_random_init=True, seed=5)
    assert bb.weights == RANDOM_INIT and bb.seed == 5
    again = load_backbone("i3d", "flow", None, allow_random_init=True, seed=5)
    assert torch.equal(bb.model.Conv3d_1a_7x7.conv3d.weight, again.model.Conv3d_1a_7x7.conv3d.weight)
    with pytest.raises(ModelConfigError, match="backbone 'c3d'"):
        load_backbone("c3d", "rgb", None, allow_random_init=True)


# ------------------------------------------------------------------ pytorchvideo I3D-R50


def test_i3d_r50_features_and_kinetics_checkpoint_with_flow_inflation(tmp_path: Path) -> None:
    pytest.importorskip("pytorchvideo.models.hub")
    from models.i3d_r50 import build_i3d_r50

    rgb = init_random(build_i3d_r50(3), 11)
    path = tmp_path / "I3D_8x8_R50.pyth"
    torch.save({"model_state": rgb.net.state_dict()}, path)  # pytorchvideo's checkpoint format
    rgb_bb = load_backbone("i3d_r50", "rgb", path)
    flow_bb = load_backbone("i3d_r50", "flow", path)
    assert rgb_bb.dim == flow_bb.dim == 2048 and rgb_bb.weights == flow_bb.weights == sha256_file(path)
    w = rgb.net.blocks[0].conv.weight
    inflated = flow_bb.model.net.blocks[0].conv.weight
    assert inflated.shape == (64, 2, 5, 7, 7)
    torch.testing.assert_close(inflated, w.mean(dim=1, keepdim=True).expand(-1, 2, -1, -1, -1))
    assert torch.equal(flow_bb.model.net.blocks[6].proj.weight, rgb.net.blocks[6].proj.weight)
    x = torch.randn(2, 2, 8, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = flow_bb.model.features(x)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    flow_ckpt = tmp_path / "flow.pt"
    torch.save(flow_bb.model.net.state_dict(), flow_ckpt)
    with pytest.raises(ModelConfigError, match=r"flow\.pt.*rgb stream.*2 input channels.*swap"):
        load_backbone("i3d_r50", "rgb", flow_ckpt)
