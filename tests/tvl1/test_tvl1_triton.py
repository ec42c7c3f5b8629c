"""The Triton TV-L1 kernel (one program per pair) against the torch kernels.

On this CPU-only machine the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``,
in a subprocess because the switch must precede Triton's import); on a GPU the
``gpu``-marked test compares the compiled kernel with the eager torch solver.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.tvl1 import triton_solver as TT
from pipeline.errors import ConfigError, InputError
from pipeline.synthetic.flow_truth import endpoint_error, warped_pair
from pipeline.tvl1.kernels import median_network
from pipeline.tvl1.backend import resolve_kernels
from pipeline.tvl1.params import FlowParams, TVL1Params
from pipeline.tvl1.solver import TorchTVL1

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not TT.HAVE_TRITON, reason="triton is not installed")


def _interpret(*cases: str) -> dict[str, dict]:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "tests.helpers.triton_vs_torch", *cases], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {r["case"]: r for r in rows}


def test_triton_kernel_matches_torch_kernels_in_the_interpreter():
    """Same flow (float noise only) and the same early stop, iteration for iteration."""
    res = _interpret("median5_exact", "median3_subpixel32", "no_median_few_iterations")
    assert set(res) == {"median5_exact", "median3_subpixel32", "no_median_few_iterations"}
    for name, r in res.items():
        assert r["finite"], name
        assert r["mean"] < 1e-4 and r["max"] < 5e-3, (name, r)
        # every pair leaves every warp after the same iteration as the torch solver
        np.testing.assert_allclose(r["iters_triton"], r["iters_torch"], rtol=0, atol=1e-9, err_msg=name)
        assert r["efficiency_triton"] == 1.0
    # the iteration cap is honoured: 1 warp x 2 outer x 7 inner per level, in full-size equivalents
    (h0, w0), (h1, w1) = TorchTVL1(TVL1Params(nscales=2), "cpu").pyramid_sizes(32, 32)
    cap = 14 * (1 + h1 * w1 / (h0 * w0))
    assert max(res["no_median_few_iterations"]["iters_triton"]) == pytest.approx(cap)


@pytest.mark.parametrize("n", [9, 25])
def test_written_out_median_network_is_median_network(n):
    """The compare-exchange lines of tvl1/triton_median.py are exactly median_network(n)."""
    src = (REPO / "pipeline" / "tvl1" / "triton_median.py").read_text()
    fn = "_median5" if n == 25 else "_median3"
    body = src.split(f"def {fn}(")[1].split("@triton.jit")[0]
    got = []
    for line in body.splitlines():
        line = line.strip()
        if m := re.fullmatch(r"v(\d+), v(\d+) = tl.minimum\(v\1, v\2\), tl.maximum\(v\1, v\2\)", line):
            got.append((int(m[1]), int(m[2]), True, True))
        elif m := re.fullmatch(r"v(\d+) = tl.minimum\(v\1, v(\d+)\)", line):
            got.append((int(m[1]), int(m[2]), True, False))
        elif m := re.fullmatch(r"v(\d+) = tl.maximum\(v(\d+), v\1\)", line):
            got.append((int(m[2]), int(m[1]), False, True))
    assert tuple(got) == median_network(n)
    assert f"return v{n // 2}" in body


def test_supports_names_what_it_cannot_do():
    assert "gamma" in TT.supports(TVL1Params(gamma=0.1), torch.device("cuda"))
    if not TT.interpreting():
        assert "not CUDA" in TT.supports(TVL1Params(), torch.device("cpu"))
        with pytest.raises(InputError, match="flow.kernels"):
            TorchTVL1(TVL1Params(), "cpu", kernels="triton")


def test_resolve_kernels():
    cpu = torch.device("cpu")
    assert resolve_kernels("torch", TVL1Params(), cpu) == "torch"
    assert resolve_kernels("auto", TVL1Params(gamma=0.2), torch.device("cuda")) == "torch"
    if not TT.interpreting():
        assert resolve_kernels("auto", TVL1Params(), cpu) == "torch"
        with pytest.raises(ConfigError, match="flow.kernels is triton"):
            resolve_kernels("triton", TVL1Params(), cpu)
    with pytest.raises(ConfigError, match="triton_block"):
        FlowParams.from_params({"triton_block": 100})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_triton_matches_torch_kernels_at_224():
    """Default parameters, face pairs at 224 px: the compiled kernel against the eager solver."""
    params = TVL1Params()
    pairs = [warped_pair(224, 1.5, seed) for seed in range(6)]
    i0 = np.stack([p[0] for p in pairs])
    i1 = np.stack([p[1] for p in pairs])
    ref = TorchTVL1(params, "cuda")
    tri = TorchTVL1(params, "cuda", kernels="triton")
    a = ref.flow(i0, i1).cpu().numpy()
    b = tri.flow(i0, i1).cpu().numpy()
    assert np.isfinite(b).all()
    assert endpoint_error(b, a) <= 0.02
    for (_, _, truth), fa, fb in zip(pairs, a, b):
        assert endpoint_error(fb, truth, 4) <= 1.1 * endpoint_error(fa, truth, 4) + 1e-3
    assert tri.stats.efficiency == 1.0
