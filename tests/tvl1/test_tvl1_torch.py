"""The PyTorch Dual TV-L1 against OpenCV: each routine, then the whole algorithm.

Small images (48-64 px) and reduced parameters keep this file fast on CPU; the
default-parameter accuracy at 224 px is checked by benchmarks/bench_flow.py.
"""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import pytest
import torch

from pipeline.tvl1 import kernels as K
from pipeline.errors import ConfigError, InputError
from pipeline.synthetic.flow_truth import endpoint_error, warped_pair
from pipeline.tvl1.opencv import opencv_flow_pair, opencv_remap_subpixel
from pipeline.tvl1.params import TVL1Params
from pipeline.tvl1.solver import TorchTVL1

SMALL = dict(nscales=3, warps=2, outer_iterations=3, inner_iterations=20)


@pytest.fixture(autouse=True)
def _one_thread():
    cv2.setNumThreads(1)


def _rand(shape, seed=0, scale=255.0):
    return (np.random.default_rng(seed).random(shape) * scale).astype(np.float32)


# ------------------------------------------------------------------ routines
@pytest.mark.parametrize("factor", [0.8, 0.5, 0.7])
def test_pyramid_resize_matches_opencv(factor):
    img = _rand((37, 53))
    ref = cv2.resize(img, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    size = K.opencv_resized_size(37, 53, factor)
    assert size == ref.shape
    out = K.resize_linear(torch.from_numpy(img)[None], size, (1 / factor, 1 / factor))[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-3)


def test_flow_upsampling_matches_opencv():
    small = _rand((29, 42), scale=3.0)
    ref = cv2.resize(small, (53, 37), interpolation=cv2.INTER_LINEAR)
    out = K.resize_linear(torch.from_numpy(small)[None], (37, 53))[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_remap_cubic_matches_installed_opencv_and_other_mode_does_not():
    rng = np.random.default_rng(1)
    img = _rand((37, 53), seed=2)
    mx = (np.arange(53)[None, :] + rng.normal(0, 3, (37, 53))).astype(np.float32)
    my = (np.arange(37)[:, None] + rng.normal(0, 3, (37, 53))).astype(np.float32)
    ref = cv2.remap(img, mx, my, cv2.INTER_CUBIC)   # BORDER_CONSTANT 0, as tvl1flow.cpp
    mode = opencv_remap_subpixel()
    assert mode in (0, 32)
    args = (torch.from_numpy(img)[None, None], torch.from_numpy(mx)[None], torch.from_numpy(my)[None])
    out = K.remap_cubic(*args, subpixel=mode)[0, 0].numpy()
    np.testing.assert_allclose(out, ref, atol=2e-3)
    other = K.remap_cubic(*args, subpixel=32 - mode)[0, 0].numpy()
    assert np.abs(other - ref).max() > 0.1


def test_median_network_is_exact():
    rng = np.random.default_rng(3)
    for n in (9, 25):
        vals = rng.normal(size=(n, 500)).astype(np.float32)
        out = K.median_select([torch.from_numpy(v) for v in vals]).numpy()
        np.testing.assert_array_equal(out, np.median(vals, axis=0))


@pytest.mark.parametrize("ksize", [3, 5])
def test_median_blur_matches_opencv(ksize):
    u = np.random.default_rng(4).normal(size=(23, 31)).astype(np.float32)
    out = K.median_blur(torch.from_numpy(u)[None], ksize)[0].numpy()
    np.testing.assert_array_equal(out, cv2.medianBlur(u, ksize))


def test_gradients_and_divergence_follow_opencv_discretisation():
    src = torch.from_numpy(_rand((6, 7), seed=5))
    dx, dy = K.centered_gradient(src)
    s = src.numpy()
    assert dx[2, 3] == pytest.approx(0.5 * (s[2, 4] - s[2, 2]))
    assert dx[2, 0] == pytest.approx(0.5 * (s[2, 1] - s[2, 0]))      # half one-sided at the border
    assert dy[0, 3] == pytest.approx(0.5 * (s[1, 3] - s[0, 3]))
    fx, fy = K.forward_gradient(src)
    assert fx[1, -1] == 0 and fy[-1, 2] == 0 and fx[-1, 2] == pytest.approx(s[-1, 3] - s[-1, 2])
    v1, v2 = torch.from_numpy(_rand((6, 7), 6)), torch.from_numpy(_rand((6, 7), 7))
    div = K.divergence(v1, v2).numpy()
    a, b = v1.numpy(), v2.numpy()
    assert div[0, 0] == pytest.approx(a[0, 0] + b[0, 0])
    assert div[3, 4] == pytest.approx(a[3, 4] - a[3, 3] + b[3, 4] - b[2, 4])
    # -div is the adjoint of the forward gradient for duals that are 0 on the last column (p.1)
    # / last row (p.2) -- which OpenCV's duals always are, as the forward gradient is 0 there
    v1[:, -1] = 0
    v2[-1, :] = 0
    u = torch.from_numpy(_rand((6, 7), 8))
    gx, gy = K.forward_gradient(u)
    assert float((gx * v1 + gy * v2).sum()) == pytest.approx(-float((u * K.divergence(v1, v2)).sum()), rel=1e-4)


# ------------------------------------------------------------- whole algorithm
def _pairs(size, n, amplitude=1.5):
    return [warped_pair(size, amplitude, seed) for seed in range(n)]


@pytest.mark.parametrize("kw", [SMALL, dict(SMALL, gamma=0.05), dict(SMALL, median_filtering=0, scale_step=0.7)])
def test_torch_matches_opencv_and_truth(kw):
    params = TVL1Params(**kw)
    pairs = _pairs(64, 3)
    solver = TorchTVL1(params, "cpu", remap_subpixel=opencv_remap_subpixel())
    flows = solver.flow(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])).numpy()
    assert flows.shape == (3, 64, 64, 2) and flows.dtype == np.float32
    for (i0, i1, truth), f in zip(pairs, flows):
        ref = opencv_flow_pair(i0, i1, params)
        agreement = endpoint_error(f, ref)
        assert agreement <= 0.02, agreement
        assert endpoint_error(f, truth, 4) <= 1.1 * endpoint_error(ref, truth, 4) + 1e-3
        assert endpoint_error(f, truth, 4) < 0.5              # and it is a real flow, not zeros
    # the early stop really stopped pairs before the iteration cap
    cap = sum(params.warps * params.outer_iterations * params.inner_iterations * (0.8 ** (2 * s)) for s in range(3))
    assert 0 < max(solver.stats.per_pair_iterations) < cap


def test_batch_freezing_equals_solving_each_pair_alone():
    # short outer iterations and a loose epsilon: pairs stop at different iterations, and a
    # stopped pair must see neither more iterations nor the median filter of later outers
    params = TVL1Params(nscales=3, warps=2, outer_iterations=8, inner_iterations=3, epsilon=0.03)
    pairs = _pairs(48, 3, amplitude=2.0)
    i0 = np.stack([p[0] for p in pairs])
    i1 = np.stack([p[1] for p in pairs])
    i1[1] = i0[1]                                 # one pair converges at once, others keep going
    solver = TorchTVL1(params, "cpu", check_every=2)
    together = solver.flow(i0, i1).numpy()
    assert len(set(solver.stats.per_pair_iterations)) == 3      # the pairs did stop at different points
    for k in range(3):
        alone = TorchTVL1(params, "cpu", check_every=1).flow(i0[k:k + 1], i1[k:k + 1]).numpy()[0]
        np.testing.assert_allclose(together[k], alone, atol=1e-5)


def test_constant_frames_give_zero_flow():
    params = TVL1Params(**SMALL)
    frames = np.full((2, 40, 40), 128, np.uint8)
    flow = TorchTVL1(params, "cpu").flow(frames, frames).numpy()
    assert np.isfinite(flow).all() and np.abs(flow).max() == 0.0
    ref = opencv_flow_pair(frames[0], frames[1], params)
    assert np.abs(ref).max() == 0.0


def test_bad_shapes_are_refused():
    solver = TorchTVL1(TVL1Params(**SMALL), "cpu")
    with pytest.raises(InputError, match="differ"):
        solver.flow(np.zeros((1, 40, 40), np.uint8), np.zeros((1, 40, 44), np.uint8))
    with pytest.raises(InputError, match="differ in size"):
        opencv_flow_pair(np.zeros((40, 40), np.uint8), np.zeros((44, 40), np.uint8), TVL1Params())
    with pytest.raises(ConfigError, match="median_filtering"):
        TVL1Params(median_filtering=7)
    with pytest.raises(ConfigError, match="use_initial_flow"):
        TVL1Params(use_initial_flow=True)


def test_out_of_memory_halves_the_batch_and_retries(caplog):
    params = TVL1Params(**SMALL)
    pairs = _pairs(40, 5, amplitude=1.0)
    i0 = np.stack([p[0] for p in pairs])
    i1 = np.stack([p[1] for p in pairs])
    reference = TorchTVL1(params, "cpu", max_batch=8).flow_batched(i0, i1).numpy()
    solver = TorchTVL1(params, "cpu", max_batch=8, oom_above=1)
    with caplog.at_level(logging.WARNING, logger="pipeline.tvl1.solver"):
        out = solver.flow_batched(i0, i1).numpy()
    assert solver.max_batch == 1
    assert sum("out of GPU memory" in r.message for r in caplog.records) == 2   # 5 -> 2 -> 1
    np.testing.assert_allclose(out, reference, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compiled_graphs_match_eager_cpu():
    params = TVL1Params(**SMALL)
    pairs = _pairs(64, 4)
    i0 = np.stack([p[0] for p in pairs])
    i1 = np.stack([p[1] for p in pairs])
    cpu = TorchTVL1(params, "cpu").flow(i0, i1).numpy()
    fast = TorchTVL1(params, "cuda", compile=True, cuda_graphs=True, max_batch=4).flow_batched(i0, i1).cpu().numpy()
    assert endpoint_error(fast, cpu) <= 0.01


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("M2ES_SLOW_TESTS"), reason="CPU inductor compile takes ~2 min; "
                    "set M2ES_SLOW_TESTS=1")
def test_compiled_matches_eager_on_cpu():
    params = TVL1Params(nscales=2, warps=1, outer_iterations=2, inner_iterations=10)
    pairs = _pairs(48, 2)
    i0 = np.stack([p[0] for p in pairs])
    i1 = np.stack([p[1] for p in pairs])
    eager = TorchTVL1(params, "cpu").flow(i0, i1).numpy()
    compiled = TorchTVL1(params, "cpu", compile=True).flow(i0, i1).numpy()
    np.testing.assert_allclose(compiled, eager, atol=1e-4)
