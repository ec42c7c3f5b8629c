"""The static training step (fixed-size buffers, the sentinel window, warm-up) against the eager
step, on the CPU; the CUDA graph of it against the same step run eagerly, on a GPU."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.iaenet import build_model
from pipeline.learning.data import prepare
from pipeline.learning.loop import train_model
from pipeline.learning.presets import load_model_preset
from pipeline.learning.recipe import TrainRecipe
from pipeline.learning.step import StepTensors, TrainStep

BATCH = 8


def _preset(dropout: float = 0.0) -> dict:
    preset = copy.deepcopy(load_model_preset("iaenet_casme2"))
    preset["model"]["base"]["dim"] = 16
    preset["model"]["encoder"]["dims"] = [16, 16, 32]
    preset["model"]["heads"]["dim"] = 16
    preset["model"]["csfm"]["dropout"] = dropout
    return preset


def _prep(device: str = "cpu", width: int = 8):
    """Three subjects' random features with intervals: enough training windows for a few batches."""
    import pandas as pd

    rng = np.random.default_rng(0)
    lengths = {"a": 300, "b": 260, "c": 280}
    feats = {v: rng.normal(size=(n, width)).astype(np.float32) for v, n in lengths.items()}
    rows = []
    for v, n in lengths.items():
        for on in range(20, 2 * n - 80, 70):
            length = int(rng.integers(8, 60))
            rows.append((v, v.upper(), on, on + length, "micro" if length < 16 else "macro"))
    ann = pd.DataFrame(rows, columns=["video", "subject", "onset", "offset", "type"])
    ann["apex"] = (ann.onset + ann.offset) // 2
    preset = _preset()
    prep = prepare(feats, ann, {v: v.upper() for v in lengths}, preset, device)
    return prep, preset


def _tensors(prep) -> StepTensors:
    return StepTensors(prep.train_rows, prep.train_cls, prep.train_reg, prep.train_mask)


RECIPE_KEYS = ("epochs", "warmup_epochs", "batch_size")


def _cfg(preset, **train) -> TrainRecipe:
    """The training settings: ``epochs``, ``warmup_epochs`` and ``batch_size`` are the recipe's (the
    preset's ``train`` section, which TrainRecipe reads them from), the rest runtime params."""
    recipe = {k: train.pop(k) for k in RECIPE_KEYS if k in train}
    preset = {**preset, "train": {**preset["train"], **recipe}}
    cfg = TrainRecipe.from_preset(preset, {"precision": "fp32", **train})
    assert all(getattr(cfg, k) == v for k, v in recipe.items())
    return cfg


def _pair(prep, preset, seed: int = 1):
    torch.manual_seed(seed)
    a = build_model(preset, prep.bank.width).to(prep.bank.data.device)
    b = copy.deepcopy(a)
    return a, b


def test_sentinel_pads_a_short_batch_without_changing_loss_or_gradients(one_thread) -> None:
    prep, preset = _prep()
    cfg = _cfg(preset)
    assert len(prep.train) > 2 * BATCH
    eager_model, static_model = _pair(prep, preset)
    eager = TrainStep(eager_model, prep.bank, _tensors(prep), cfg.loss_spec(), 1e-3, 0.0, BATCH)
    static = TrainStep(static_model, prep.bank, _tensors(prep), cfg.loss_spec(), 1e-3, 0.0, BATCH, static=True)
    idx = torch.tensor([3, 0, 7, 11, 5])                       # a short batch: 3 sentinel rows in the static one
    eager.step(idx, 1e-3)
    static.step(idx, 1e-3)
    assert static.sel.tolist() == [3, 0, 7, 11, 5] + [static.sentinel] * 3
    assert eager.take_sums() == pytest.approx(static.take_sums(), rel=1e-6)
    for (name, p), q in zip(eager_model.named_parameters(), static_model.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-8), name
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), name


def test_warm_up_leaves_the_model_as_built_and_the_optimizer_new(one_thread) -> None:
    prep, preset = _prep()
    cfg = _cfg(preset)
    built, warmed = _pair(prep, preset)
    step = TrainStep(warmed, prep.bank, _tensors(prep), cfg.loss_spec(), 1e-2, 0.01, BATCH, static=True,
                     warm_idx=torch.arange(BATCH))
    for p, q in zip(built.parameters(), warmed.parameters()):
        assert torch.equal(p, q)
    states = list(step.opt.state.values())
    assert len(states) == len(list(warmed.parameters()))          # the warm-up made the state ...
    assert all(float(v.abs().sum()) == 0 for s in states for v in s.values())   # ... and it was zeroed
    assert step.take_sums() == [0.0, 0.0, 0.0]


def test_static_training_follows_the_eager_training(one_thread) -> None:
    """Whole epochs, short last batches included, after a warm-up: the same losses and weights."""
    prep, preset = _prep()
    cfg = _cfg(preset)
    eager_model, static_model = _pair(prep, preset)
    eager = TrainStep(eager_model, prep.bank, _tensors(prep), cfg.loss_spec(), 1e-3, 0.01, BATCH)
    static = TrainStep(static_model, prep.bank, _tensors(prep), cfg.loss_spec(), 1e-3, 0.01, BATCH, static=True,
                       warm_idx=torch.arange(BATCH))
    gen = torch.Generator().manual_seed(0)
    n = len(prep.train)
    assert n % BATCH
    for epoch in range(3):
        perm = torch.randperm(n, generator=gen)
        for b in range(0, n, BATCH):
            lr = 1e-3 * (epoch + 1) / 3
            eager.step(perm[b:b + BATCH], lr)
            static.step(perm[b:b + BATCH], lr)
        steps = -(-n // BATCH)
        assert eager.take_sums(steps) == pytest.approx(static.take_sums(steps), rel=1e-4)
    for (name, p), q in zip(eager_model.named_parameters(), static_model.parameters()):
        assert torch.allclose(p, q, rtol=1e-3, atol=1e-5), name


def test_a_batch_larger_than_the_buffer_is_refused(one_thread) -> None:
    prep, preset = _prep()
    model, _ = _pair(prep, preset)
    step = TrainStep(model, prep.bank, _tensors(prep), _cfg(preset).loss_spec(), 1e-3, 0.0, BATCH, static=True)
    with pytest.raises(ValueError, match="batch of 9"):
        step.step(torch.arange(BATCH + 1), 1e-3)


def test_cuda_graph_setting_on_a_cpu_trains_eagerly(one_thread) -> None:
    prep, preset = _prep()
    cfg = _cfg(preset, epochs=2, warmup_epochs=0, batch_size=BATCH)
    graphed = _cfg(preset, epochs=2, warmup_epochs=0, batch_size=BATCH, cuda_graphs=True)
    assert graphed.cuda_graphs and not cfg.cuda_graphs
    train_idx = np.flatnonzero(prep.train_subject != "A")
    _, _, h1 = train_model(prep, train_idx, preset, cfg, 4)
    _, _, h2 = train_model(prep, train_idx, preset, graphed, 4)
    assert h1 == h2


def test_cuda_graphs_enter_the_run_digest_only_where_they_take_effect() -> None:
    preset = _preset()
    eager, graphed = _cfg(preset), _cfg(preset, cuda_graphs=True)
    assert graphed.identity(cuda=False) == eager.identity(cuda=False) == eager.identity(cuda=True)
    assert graphed.identity(cuda=True) == {**eager.identity(cuda=True), "cuda_graphs": True}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_replays_the_static_step_gpu(precision: str) -> None:
    """The captured step against the same static step run eagerly on the GPU (no dropout)."""
    prep, preset = _prep("cuda", width=64)
    cfg = _cfg(preset)
    cfg.precision = precision
    eager_model, graph_model = _pair(prep, preset)
    warm = torch.arange(BATCH, device="cuda")
    eager = TrainStep(eager_model, prep.bank, _tensors(prep), cfg.loss_spec(), 1e-3, 0.01, BATCH, static=True,
                      warm_idx=warm)
    eager.graph = None                                     # the static step, eagerly: a reference on the same card
    graphed = TrainStep(graph_model, prep.bank, _tensors(prep), cfg.loss_spec(), 1e-3, 0.01, BATCH, static=True,
                        warm_idx=warm)
    assert graphed.graph is not None
    n = len(prep.train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).cuda()
    for b in range(0, n, BATCH):
        eager.step(perm[b:b + BATCH], 1e-3)
        graphed.step(perm[b:b + BATCH], 1e-3)
    steps = -(-n // BATCH)
    tol = 1e-4 if precision == "fp32" else 2e-2
    assert eager.take_sums(steps) == pytest.approx(graphed.take_sums(steps), rel=tol)
    for (name, p), q in zip(eager_model.named_parameters(), graph_model.parameters()):
        assert torch.allclose(p, q, rtol=10 * tol, atol=10 * tol), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_folds_depend_only_on_their_seed_gpu() -> None:
    """train_model with train.cuda_graphs: the same fold twice (another fold between) gives the same
    losses; dropout is on, as in the recipe."""
    prep, _ = _prep("cuda", width=64)
    preset = _preset(dropout=0.2)
    preset["inference"]["min_length"] = 0      # 3 epochs give short intervals, which min_length would drop
    cfg = _cfg(preset, epochs=3, warmup_epochs=1, batch_size=BATCH, cuda_graphs=True)
    train_idx = np.flatnonzero(prep.train_subject != "A")
    test_idx = np.flatnonzero(prep.test_subject == "A")
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        _, p1, h1 = train_model(prep, train_idx, preset, cfg, 7, test_idx)
        train_model(prep, np.flatnonzero(prep.train_subject != "B"), preset, cfg, 8)   # state must not leak
        _, p2, h2 = train_model(prep, train_idx, preset, cfg, 7, test_idx)
    assert len(h1) == 3 and all(np.isfinite(h["loss"]) for h in h1)
    assert [h["loss"] for h in h1] == pytest.approx([h["loss"] for h in h2], rel=1e-5)
    assert len(p1) == len(p2) > 0 and set(p1["epoch"]) == {2, 3}
    assert p1["score"].to_numpy(float) == pytest.approx(p2["score"].to_numpy(float), rel=1e-4)
