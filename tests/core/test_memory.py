"""Sizing GPU batches from free memory (pipeline.core.memory): the rule with injected byte counts, its edge
cases, and the flow stage passing the sized batch through (on the CPU: the fixed CPU batch, same files)."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest

from pipeline import flow as flow_stage
from pipeline.core.memory import (
    CONTEXT_BYTES,
    GIB,
    MARGIN,
    MIB,
    DeviceMemory,
    batch_for_memory,
    budget_bytes,
    resolve_batch,
)
from pipeline.errors import ConfigError
from pipeline.tvl1.batch import CPU_BATCH_PAIRS, batch_pairs_for
from pipeline.tvl1.params import FlowParams, TVL1Params
from pipeline.tvl1.solver import TorchTVL1

PAIR_224 = 76 * 224 * 224          # the Triton solver's bytes per 224-px pair (3.6 MiB)


def test_rule_sizes_from_the_budget_on_a_large_card():
    """80 GiB card, nearly all free, 20 GiB budget: the budget less the context and the margin, per pair."""
    n = batch_for_memory(79 * GIB, 80 * GIB, PAIR_224, budget=20 * GIB)
    assert n == int((20 * GIB - CONTEXT_BYTES) * (1 - MARGIN)) // PAIR_224
    assert 4000 < n < 5000                        # ~4,555 pairs: about the 4,096 that ran before, within 20 GiB
    assert n * PAIR_224 + CONTEXT_BYTES <= 20 * GIB


@pytest.mark.parametrize("total_gib", [24, 40, 80, 141])
def test_default_budget_fits_a_24_gb_card_and_every_larger_one(total_gib):
    """The modelled peak (batch x bytes per pair + the CUDA context) stays within 20 GiB whatever the card."""
    free = total_gib * GIB - 300 * MIB
    n = batch_for_memory(free, total_gib * GIB, PAIR_224, budget=budget_bytes(20))
    assert n * PAIR_224 + CONTEXT_BYTES <= 20 * GIB
    assert n == batch_for_memory(79 * GIB, 80 * GIB, PAIR_224, budget=20 * GIB)   # the budget binds, not the card


def test_rule_follows_free_memory_when_less_than_the_budget():
    """Another process holds most of the card: the free bytes bind; what this process holds counts too."""
    n = batch_for_memory(6 * GIB, 24 * GIB, PAIR_224, budget=20 * GIB)
    assert n == int(6 * GIB * (1 - MARGIN)) // PAIR_224
    assert batch_for_memory(79 * GIB, 80 * GIB, PAIR_224, budget=20 * GIB, used=10 * GIB) == \
        int((20 * GIB - CONTEXT_BYTES - 10 * GIB) * (1 - MARGIN)) // PAIR_224
    assert batch_for_memory(79 * GIB, 80 * GIB, PAIR_224) == int(79 * GIB * (1 - MARGIN)) // PAIR_224  # no budget
    assert batch_for_memory(79 * GIB, 80 * GIB, PAIR_224, budget=20 * GIB, limit=100) == 100
    fixed = batch_for_memory(79 * GIB, 80 * GIB, PAIR_224, budget=20 * GIB, fixed=2 * GIB)
    assert fixed == (int((20 * GIB - CONTEXT_BYTES) * (1 - MARGIN)) - 2 * GIB) // PAIR_224


def test_tiny_memory_gives_one_item_or_an_error_naming_the_knob():
    one = batch_for_memory(int(PAIR_224 / (1 - MARGIN)) + 1, 8 * GIB, PAIR_224)
    assert one == 1
    with pytest.raises(ConfigError, match=r"flow\.batch_pairs: auto: one 224x224 pair needs 3\.6 MiB"):
        batch_for_memory(2 * MIB, 8 * GIB, PAIR_224, param="flow.batch_pairs", item="224x224 pair")
    with pytest.raises(ConfigError, match="batch_pairs.*gpu_memory_gb"):   # the budget is all used already
        batch_for_memory(70 * GIB, 80 * GIB, PAIR_224, budget=20 * GIB, used=19 * GIB, param="batch_pairs")
    with pytest.raises(ConfigError, match="gpu_memory_gb = 1"):
        budget_bytes(1)
    assert budget_bytes(None) is None and budget_bytes(20) == 20 * GIB
    with pytest.raises(ValueError):
        batch_for_memory(GIB, GIB, 0)


def test_resolve_batch_numbers_pass_auto_sizes_cpu_is_fixed():
    card = DeviceMemory(free=79 * GIB, total=80 * GIB)
    assert resolve_batch(512, "cuda", PAIR_224, budget_gb=20, cpu_batch=64, param="p", memory=card) == 512
    assert resolve_batch("auto", "cpu", PAIR_224, budget_gb=20, cpu_batch=64, param="p") == 64
    assert resolve_batch("auto", "cuda", PAIR_224, budget_gb=20, cpu_batch=64, param="p", memory=card) == \
        batch_for_memory(79 * GIB, 80 * GIB, PAIR_224, budget=20 * GIB)
    # a lower cap already set on the process (set_per_process_memory_fraction, as the GPU test does) binds
    capped = DeviceMemory(free=10 * GIB, total=80 * GIB, used=0, cap=10 * GIB)
    assert resolve_batch("auto", "cuda", PAIR_224, budget_gb=20, cpu_batch=64, param="p", memory=capped) == \
        int(10 * GIB * (1 - MARGIN)) // PAIR_224


def test_flow_batch_pairs_for_uses_the_solvers_bytes_and_the_budget():
    """The flow stage's sizing: the knob as it is, auto from the device (injected here) at the solver's bytes
    per pair within flow.gpu_memory_gb, the CPU batch on the CPU; too little memory names the knob."""
    cfg = FlowParams.from_params({"gpu_memory_gb": 12}, others=(TVL1Params,))
    assert cfg.batch_pairs == "auto"
    solver = TorchTVL1(TVL1Params(), "cpu")                   # torch kernels: 351 B per pixel
    assert batch_pairs_for(cfg, solver, (224, 224)) == CPU_BATCH_PAIRS
    card = DeviceMemory(free=79 * GIB, total=80 * GIB)
    assert batch_pairs_for(cfg, solver, (112, 112), memory=card) == \
        batch_for_memory(79 * GIB, 80 * GIB, 351 * 112 * 112, budget=12 * GIB)
    fixed = FlowParams.from_params({"batch_pairs": 300}, others=(TVL1Params,))
    assert batch_pairs_for(fixed, solver, (224, 224), memory=card) == 300
    with pytest.raises(ConfigError, match=r"flow\.batch_pairs: auto: one 224x224 pair"):
        batch_pairs_for(cfg, solver, (224, 224), memory=DeviceMemory(free=8 * MIB, total=24 * GIB))


def _faces(root, video: str, n: int, seed: int):
    from pipeline.core.paths import DataPaths
    from pipeline.io.h5io import atomic_h5
    from pipeline.synthetic.flow_truth import warped_pair

    frames = np.stack([warped_pair(40, 0.7 * (k + 1), seed)[0] for k in range(n)])
    frames = np.repeat(frames[..., None], 3, -1)
    paths = DataPaths("toy", root)
    with atomic_h5(paths.h5(paths.faces, video), digest=f"faces-{video}", params={}) as f:
        f.create_dataset("frames", data=frames, chunks=(1, *frames.shape[1:]))


def _run_flow(root, batch_pairs, **extra):
    from pipeline.core.paths import DataPaths
    from pipeline.core.runner import ParallelParams
    from pipeline.core.stage import StageContext

    section = {"impl": "torch", "device": "cpu", "nscales": 2, "warps": 1, "outer_iterations": 1,
               "inner_iterations": 5, "batch_pairs": batch_pairs, "compile": False, "cuda_graphs": False,
               "remap_subpixel": 0, **extra}
    ctx = StageContext(stage="flow", dataset={"name": "toy"}, params={"flow": section},
                       paths=DataPaths("toy", root), parallel=ParallelParams(backend="sequential"))
    flow_stage.run(ctx)
    out = {}
    for path in sorted(ctx.paths.flow.glob("*.h5")):
        with h5py.File(path, "r") as f:
            out[path.stem] = f["flow"][()]
    return out


def test_flow_stage_auto_on_cpu_writes_the_same_flow_as_a_fixed_batch(tmp_path):
    """batch_pairs: auto on the CPU runs the stage (CPU batch) and writes bit-identical flow to a batch of 3."""
    for root in (tmp_path / "auto", tmp_path / "three"):
        _faces(root, "a", 5, 1)
        _faces(root, "b", 4, 2)
    auto = _run_flow(tmp_path / "auto", "auto")
    three = _run_flow(tmp_path / "three", 3)
    assert sorted(auto) == ["a", "b"]
    for video in auto:
        assert np.array_equal(auto[video], three[video]), video


def test_flow_stage_solves_in_batches_of_the_sized_value(tmp_path, caplog):
    """The stage hands the solver the sized batch: with auto on the CPU a batch of exactly CPU_BATCH_PAIRS
    pairs is solved (the testing hook refuses one pair more than it allows), and a number the same way."""
    _faces(tmp_path / "auto", "a", 2 * CPU_BATCH_PAIRS + 1, 1)   # two batches' worth: a larger batch would show
    _faces(tmp_path / "ten", "a", 21, 1)
    with caplog.at_level(logging.WARNING, logger="pipeline.tvl1.solver"):
        _run_flow(tmp_path / "auto", "auto", debug_oom_above_batch=CPU_BATCH_PAIRS - 1)
        _run_flow(tmp_path / "ten", 10, debug_oom_above_batch=9)
    retries = [r.getMessage() for r in caplog.records if "out of GPU memory" in r.getMessage()]
    assert len(retries) == 2, retries                   # one retry each: the halved batch is kept after it
    assert f"batch of {CPU_BATCH_PAIRS} pairs" in retries[0] and "batch of 10 pairs" in retries[1]
