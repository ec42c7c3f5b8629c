"""One IAENet training step (gather, forward, loss, backward, AdamW), eager or as a CUDA graph.

Why a graph: a step of the published recipe (batch 128, 64 steps of 2048-wide features, the
30M-parameter CAS(ME)^2 model) is about 515 GFLOP, a millisecond or two of an H100's bf16
work, but eager PyTorch dispatches ~550 operators for it with bf16 autocast, each one or more
kernel launches and one Python call (``bench_train.py`` counts them). On the lent
machines a step took ~25 ms and the GPU was at most 44% busy during training (the fourth
lease's end-to-end run): the host, not the GPU, set the pace. Captured once per model as a
CUDA graph, a step is a handful of small copies and one replay.

Static buffers. A graph replays fixed addresses and shapes, so the batch is a row of window
indices copied into a ``[batch_size]`` buffer; the last, short batch of an epoch is padded
with a *sentinel* window appended to the training tensors: zero features (the bank's padding
row), background labels and no valid point. The loss normalises by the real window count
(a tensor) and counts only valid points, so the sentinel adds nothing to the loss or its
gradients: the step is the published one, with a fixed shape.

The graph's optimizer is AdamW with ``capturable=True`` and the learning rate in a device
tensor (the same update; the schedule writes the tensor before each replay). Capture needs
a few warm-up steps, which create the optimizer's state; the parameters are copied back and
the state zeroed afterwards, so training starts from the model as built. The dropout masks
differ from the eager run's (the graph draws them from its own generator offsets), so a
graphed fold is not bit-identical to an eager one; each fold's result still depends only on
its seed. ``train.cuda_graphs`` (params.yaml) selects it; on a CPU the eager step runs.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from models.losses import iaenet_loss

from pipeline.learning.postprocess import autocast
from pipeline.learning.windows import FeatureBank

log = logging.getLogger(__name__)

WARMUP_STEPS = 3


@dataclass
class StepTensors:
    """The training windows of a run on the device: row indices [W, steps] into the feature
    bank, point classes [W, P], targets [W, P, 2], valid points [W, P]."""

    rows: torch.Tensor
    cls: torch.Tensor
    reg: torch.Tensor
    mask: torch.Tensor

    def with_sentinel(self, pad_row: int) -> tuple["StepTensors", int]:
        """A copy with one window appended that pads a short batch: every row the bank's zero
        padding row, background labels, no valid point. Returns (tensors, sentinel index)."""
        steps, points = self.rows.shape[1], self.cls.shape[1]
        dev = self.rows.device
        out = StepTensors(
            rows=torch.cat([self.rows, torch.full((1, steps), pad_row, dtype=self.rows.dtype, device=dev)]),
            cls=torch.cat([self.cls, torch.zeros(1, points, dtype=self.cls.dtype, device=dev)]),
            reg=torch.cat([self.reg, torch.zeros(1, points, 2, dtype=self.reg.dtype, device=dev)]),
            mask=torch.cat([self.mask, torch.zeros(1, points, dtype=self.mask.dtype, device=dev)]))
        return out, len(self.rows)


@dataclass
class LossSpec:
    """The loss settings of the recipe (``TrainConfig``'s loss fields) and the step's precision."""

    alpha: float
    gamma: float
    micro_weight: float
    reg_weight: float
    precision: str = "fp32"


class TrainStep:
    """AdamW steps of one model on batches of training windows; holds the optimizer.

    ``step(idx, lr)`` trains on the windows ``idx`` (a 1-D long tensor on the device, at most
    ``batch_size``) at learning rate ``lr``; ``take_sums(steps)`` returns the (loss, cls, reg)
    summed since the last call, divided by ``steps``, and resets them. ``static=False``: the
    eager step, as the published code runs it. ``static=True``: fixed-size buffers padded with the sentinel, and
    on CUDA the step captured as a graph (see the module docstring); on a CPU the static
    step runs eagerly, which is how the tests check it against the eager one. ``warm_idx``: the
    windows of the warm-up steps of a static step (on CUDA the first windows when not given).
    """

    def __init__(self, model: torch.nn.Module, bank: FeatureBank, tensors: StepTensors, loss: LossSpec,
                 lr: float, weight_decay: float, batch_size: int, static: bool = False,
                 warm_idx: torch.Tensor | None = None) -> None:
        self.model, self.bank, self.loss = model, bank, loss
        self.device = bank.data.device
        self.batch_size = int(batch_size)
        self.static = bool(static)
        self.graph: torch.cuda.CUDAGraph | None = None
        self._capturing = False
        self.sums = torch.zeros(3, device=self.device)
        if not self.static:
            self.tensors = tensors
            self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
            return
        self.tensors, self.sentinel = tensors.with_sentinel(bank.pad_row)
        cuda = self.device.type == "cuda"
        self.lr = torch.tensor(float(lr), dtype=torch.float32, device=self.device)
        self.opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=weight_decay, fused=True,
                                     capturable=cuda)
        self.sel = torch.full((self.batch_size,), self.sentinel, dtype=torch.long, device=self.device)
        self.n_real = torch.zeros((), dtype=torch.float32, device=self.device)
        # warm-up and capture on one side stream: the libraries' per-stream handles and workspaces are
        # then made by the warm-up, not in the middle of the capture
        self._stream = torch.cuda.Stream(self.device) if cuda else None
        if cuda and warm_idx is None:   # a capture needs the optimizer's state made beforehand
            warm_idx = torch.arange(min(self.batch_size, len(tensors.rows)), device=self.device)
        if warm_idx is not None:
            self._warm_up(warm_idx, lr)
        if cuda:
            self._capture()

    # -- the step itself ------------------------------------------------------------------

    def _body(self, sel: torch.Tensor, n_real: int | torch.Tensor) -> None:
        """Gather, forward, loss, backward, optimizer step; add the losses to ``sums``."""
        t = self.tensors
        x = self.bank.gather(t.rows[sel])
        with autocast(self.device, self.loss.precision, cache=not self._capturing):
            logits, dists = self.model(x)
        losses = iaenet_loss(logits.float(), dists.float(), t.cls[sel], t.reg[sel], t.mask[sel], batch_size=n_real,
                             alpha=self.loss.alpha, gamma=self.loss.gamma, micro_weight=self.loss.micro_weight,
                             reg_weight=self.loss.reg_weight)
        losses["loss"].backward()
        self.opt.step()
        self.sums += torch.stack([losses["loss"].detach(), losses["cls"].detach(), losses["reg"].detach()])

    def step(self, idx: torch.Tensor, lr: float) -> None:
        """One optimizer step on the training windows ``idx`` at learning rate ``lr``."""
        n = len(idx)
        if not 0 < n <= self.batch_size:
            raise ValueError(f"TrainStep: a batch of {n} windows (batch size {self.batch_size})")
        if not self.static:
            for group in self.opt.param_groups:
                group["lr"] = lr
            self.opt.zero_grad(set_to_none=True)
            self._body(idx, n)
            return
        self._load(idx, lr)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.opt.zero_grad(set_to_none=True)
            self._body(self.sel, self.n_real)

    def take_sums(self, steps: int = 1) -> list[float]:
        """(loss, cls, reg) summed over the steps since the last call, divided by ``steps`` (the
        epoch's mean with its step count); one device sync; the sums restart at zero."""
        out = (self.sums / steps).tolist()
        self.sums.zero_()
        return out

    # -- static buffers and the graph -------------------------------------------------------

    def _load(self, idx: torch.Tensor, lr: float) -> None:
        """Write a batch into the static buffers: indices, sentinel padding, real count, lr."""
        n = len(idx)
        self.sel[:n].copy_(idx, non_blocking=True)
        if n < self.batch_size:
            self.sel[n:].fill_(self.sentinel)
        self.n_real.fill_(float(n))
        self.lr.fill_(float(lr))

    def _warm_up(self, idx: torch.Tensor, lr: float) -> None:
        """A few real steps (they create the optimizer's state and, on CUDA, let the libraries
        pick their kernels), then the parameters copied back and the state zeroed: the model
        is again the model as built and the optimizer as new."""
        saved = [p.detach().clone() for p in self.model.parameters()]
        side = self._stream
        if side is not None:
            side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side) if side is not None else nullcontext():
            for _ in range(WARMUP_STEPS):
                self._load(idx[:self.batch_size], lr)
                self.opt.zero_grad(set_to_none=True)
                self._body(self.sel, self.n_real)
        if side is not None:
            torch.cuda.current_stream(self.device).wait_stream(side)
        with torch.no_grad():
            for p, s in zip(self.model.parameters(), saved):
                p.copy_(s)
            for state in self.opt.state.values():
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        value.zero_()
        self.sums.zero_()

    def _capture(self) -> None:
        """Record gather, forward, loss, backward and AdamW as one CUDA graph (after warm-up)."""
        self.opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        self._capturing = True
        try:
            with torch.cuda.graph(graph, stream=self._stream):
                self._body(self.sel, self.n_real)
        except RuntimeError as exc:   # capture runs nothing: the model and optimizer are as they were
            log.warning("capturing the training step as a CUDA graph failed (%s); training with eager steps "
                        "(set train.cuda_graphs: false to silence this)", exc)
            self.opt.zero_grad(set_to_none=True)
            return
        finally:
            self._capturing = False
        self.graph = graph
        log.debug("training step captured as a CUDA graph (batch %d)", self.batch_size)

