"""Run under ``TRITON_INTERPRET=1``: the Triton TV-L1 kernel against the torch kernels on the CPU.

Prints one JSON line per case: max / mean end-point difference between the two flows
and the per-pair iteration counts of each. Used by ``tests/tvl1/test_tvl1_triton.py`` (the
interpreter must be switched on before Triton is imported, hence a separate process).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

from pipeline.synthetic.flow_truth import warped_pair
from pipeline.tvl1.opencv import TVL1Params
from pipeline.tvl1.solver import TorchTVL1

CASES = {
    "median5_exact": (dict(nscales=3, warps=2), 0),
    "median3_subpixel32": (dict(nscales=2, warps=2, median_filtering=3, outer_iterations=3), 32),
    "no_median_few_iterations": (dict(nscales=2, warps=1, median_filtering=0, outer_iterations=2,
                                      inner_iterations=7), 0),
}


def main() -> None:
    """Solve the same pairs with both kernels for every case named on the command line."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    torch.set_num_threads(1)
    size = 32
    pairs = [warped_pair(size, 1.5, seed) for seed in range(2)]
    i0 = np.stack([p[0] for p in pairs])
    i1 = np.stack([p[1] for p in pairs])
    for name in sys.argv[1:]:
        kw, subpixel = CASES[name]
        params = TVL1Params(**kw)
        ref = TorchTVL1(params, "cpu", remap_subpixel=subpixel)
        tri = TorchTVL1(params, "cpu", remap_subpixel=subpixel, kernels="triton", triton_block=1024,
                        triton_warps=4)
        a = ref.flow(i0, i1).numpy()
        b = tri.flow(i0, i1).numpy()
        d = np.linalg.norm(a - b, axis=-1)
        print(json.dumps({"case": name, "max": float(d.max()), "mean": float(d.mean()),
                          "finite": bool(np.isfinite(b).all()),
                          "iters_torch": ref.stats.per_pair_iterations,
                          "iters_triton": tri.stats.per_pair_iterations,
                          "efficiency_triton": tri.stats.efficiency}))


if __name__ == "__main__":
    main()
