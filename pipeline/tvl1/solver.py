"""Batched Dual TV-L1 optical flow in PyTorch: OpenCV's algorithm on many pairs at once.

:class:`TorchTVL1` solves a batch of same-sized grayscale pairs with exactly the
schedule of OpenCV's ``OpticalFlowDual_TVL1::calc`` (see :mod:`pipeline.tvl1.kernels`
for the per-routine correspondence):

* pyramid by repeated ``resize(INTER_LINEAR, fx = fy = scale_step)`` down to 16 px,
  zero flow at the coarsest scale, flow upsampled with ``resize(INTER_LINEAR)`` and
  multiplied by ``1 / scale_step`` between scales, dual variables reset per scale;
* per warp: cubic warp of ``I1`` and its centred gradient, then up to
  ``outer_iterations`` x ``inner_iterations`` iterations, the 5x5 median filter of the
  flow before every outer iteration, and OpenCV's early stop -- a pair stops the warp
  after the first iteration whose sum of squared flow updates is
  ``<= epsilon^2 * pixels``.

GPU engineering: the whole batch stays on the device; the early stop is evaluated on
the device every iteration and a converged pair is *frozen* by a mask (its state no
longer changes, exactly as if it had left the loop), while the host looks at the masks
only every ``check_every`` iterations (one synchronisation per chunk) and ends the warp
when every pair has stopped. The chunk of ``check_every`` iterations is optionally
compiled (``torch.compile``: one fused kernel chain per iteration) and captured as a
CUDA graph, so the inner loop costs one graph launch per chunk. Running out of GPU
memory halves the batch and retries (:meth:`TorchTVL1.flow_batched`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from pipeline.tvl1 import kernels as K
from pipeline.tvl1 import triton_solver as TT
from pipeline.errors import InputError
from pipeline.tvl1.params import TVL1Params

log = logging.getLogger(__name__)

MIN_PYRAMID_SIDE = 16  # OpenCV stops the pyramid before a level narrower than this
#: peak device bytes per pixel of one pair, by kernels: Triton 19 float32 planes (both pyramids, gradients,
#: flow, duals, the kernel's scratch: 3.6 MiB per 224-px pair, measured by benchmarks/bench_flow.py on an
#: H200), the eager torch kernels 16.8 MiB per 224-px pair (same benchmark)
PAIR_BYTES_PER_PIXEL = {"triton": 76, "torch": 351}


@dataclass
class SolveStats:
    """Work done by the last solve: iterations the batch ran vs iterations the pairs needed.

    Both are counted in full-resolution iteration equivalents (an iteration at a level
    with a fraction ``f`` of the pixels counts ``f``); ``pair_iterations`` sums over
    pairs, ``batch_iterations`` counts each executed batch iteration once per pair slot.
    """

    pairs: int = 0
    batch_iterations: float = 0.0
    pair_iterations: float = 0.0
    chunks: int = 0
    seconds: float = 0.0
    per_pair_iterations: list[float] = field(default_factory=list)

    @property
    def efficiency(self) -> float:
        """Fraction of executed pair-iterations that a pair actually needed (1 = no stall)."""
        return self.pair_iterations / self.batch_iterations if self.batch_iterations else 1.0


@dataclass
class _Workspace:
    """Device buffers of one (batch, height, width) level; CUDA graphs are bound to them."""

    u: list[torch.Tensor]
    p: list[torch.Tensor]
    active: torch.Tensor
    count: torch.Tensor
    consts: list[torch.Tensor]          # i1wx, i1wy, grad, rho_c
    eps: torch.Tensor                   # OpenCV's scaledEpsilon = epsilon^2 * pixels (float32, 0-d)
    graphs: dict[int, Any] = field(default_factory=dict)


class TorchTVL1:
    """OpenCV's Dual TV-L1 for batches of pairs on a torch device.

    ``compile`` wraps the iteration chunk, the median filter and the warp step in
    ``torch.compile`` (the eager path computes the same thing; tests compare them);
    ``cuda_graphs`` captures each chunk of ``check_every`` iterations as a CUDA graph
    (CUDA only). ``remap_subpixel`` selects how warp positions are rounded (0 exact as
    OpenCV 5.x, 32 as OpenCV 4.x; see :func:`pipeline.tvl1.opencv.opencv_remap_subpixel`).
    ``oom_above`` is a testing hook only: a batch larger than it raises
    ``torch.cuda.OutOfMemoryError`` as a real out-of-memory would.

    ``kernels="triton"`` solves each pyramid level with :mod:`pipeline.tvl1.triton_solver` (one
    persistent program per pair that runs OpenCV's early stop on its own, no host
    synchronisation; ``gamma == 0`` and median 0/1/3/5 only, CUDA or the Triton
    interpreter); ``compile``, ``cuda_graphs`` and ``check_every`` then do not apply.
    """

    def __init__(self, params: TVL1Params, device: torch.device | str = "cpu", *, compile: bool = False,
                 cuda_graphs: bool = False, check_every: int = 10, remap_subpixel: int = 0,
                 max_batch: int = 1024, oom_above: int = 0, kernels: str = "torch",
                 triton_block: int = 256, triton_warps: int = 4) -> None:
        self.params = params
        self.device = torch.device(device)
        if kernels not in ("torch", "triton"):
            raise ValueError(f"kernels must be torch or triton, got {kernels!r}")
        if kernels == "triton":
            why = TT.supports(params, self.device)
            if why:
                raise InputError(f"flow.kernels: triton cannot run here: {why}. Use flow.kernels: auto or torch.")
        self.kernels = kernels
        self.triton_block = int(triton_block)
        self.triton_warps = int(triton_warps)
        self.check_every = max(1, int(check_every))
        self.remap_subpixel = int(remap_subpixel)
        self.max_batch = max(1, int(max_batch))
        self.oom_above = int(oom_above)
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda" and kernels == "torch"
        self.compiled = bool(compile) and kernels == "torch"
        self._workspaces: dict[tuple[int, ...], _Workspace] = {}
        self.stats = SolveStats()
        if self.compiled:
            self._iterate: Callable[..., Any] = torch.compile(K.tvl1_iterations_counted, fullgraph=True)
            self._median: Callable[..., Any] = torch.compile(_masked_median, fullgraph=True)
            self._warp: Callable[..., Any] = torch.compile(K.warp_terms, fullgraph=True)
        else:
            self._iterate = K.tvl1_iterations_counted
            self._median = _masked_median
            self._warp = K.warp_terms

    # ------------------------------------------------------------------ public API
    def flow(self, i0: np.ndarray | torch.Tensor, i1: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Flow ``[B, H, W, 2]`` float32 (u, v) on the device for grayscale pairs ``[B, H, W]``.

        One batch, solved at once (no splitting; see :meth:`flow_batched`).
        """
        a, b = self._to_device(i0), self._to_device(i1)
        if a.shape != b.shape:
            raise InputError(f"frame batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}; "
                             "both frames of a pair must have the same size.")
        if a.ndim != 3 or min(a.shape[1:]) < 3:
            raise InputError(f"expected grayscale frames [B, H, W] of at least 3x3 pixels, got {tuple(a.shape)}.")
        if self.oom_above and a.shape[0] > self.oom_above:
            raise torch.cuda.OutOfMemoryError(f"simulated out of memory for a batch of {a.shape[0]} "
                                              f"(flow.debug_oom_above_batch = {self.oom_above})")
        with torch.inference_mode():
            return self._solve(a, b)

    def flow_batched(self, i0: np.ndarray | torch.Tensor, i1: np.ndarray | torch.Tensor,
                     on_batch: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor | None:
        """Solve any number of pairs in batches of at most ``max_batch``, halving on OOM.

        With ``on_batch(start, flow)`` each batch's flow is handed over as soon as it is
        done and nothing is returned; otherwise the flows are concatenated on the device.
        """
        n = len(i0)
        outs: list[torch.Tensor] = []
        start = 0
        while start < n:
            size = min(self.max_batch, n - start)
            a, b = i0[start:start + size], i1[start:start + size]
            if self.cuda_graphs and size < self.max_batch:
                # keep the captured batch shape: pad with copies of the last pair (they converge
                # exactly like it, so they add no iterations) and drop their flow
                a, b = _pad_rows(a, self.max_batch), _pad_rows(b, self.max_batch)
            try:
                out = self.flow(a, b)[:size]
            except torch.cuda.OutOfMemoryError as exc:
                if size <= 1:
                    raise
                self.max_batch = max(1, size // 2)
                log.warning("TV-L1: out of GPU memory with a batch of %d pairs (%s); retrying with %d",
                            size, str(exc).splitlines()[0] if str(exc) else "OOM", self.max_batch)
                self.release()
                continue
            if on_batch is not None:
                on_batch(start, out)
            else:
                outs.append(out)
            start += size
        if on_batch is not None:
            return None
        return torch.cat(outs) if outs else torch.empty((0, *np.shape(i0)[1:], 2), device=self.device)

    def pair_bytes(self, h: int, w: int) -> int:
        """Peak device bytes one ``h`` x ``w`` pair takes in a batch (:data:`PAIR_BYTES_PER_PIXEL`)."""
        return PAIR_BYTES_PER_PIXEL[self.kernels] * int(h) * int(w)

    def release(self) -> None:
        """Drop cached device buffers and CUDA graphs (after an OOM, or to free memory)."""
        self._workspaces.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -------------------------------------------------------------------- solver
    def _to_device(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        return t.to(self.device, non_blocking=True).to(torch.float32)

    def pyramid_sizes(self, h: int, w: int) -> list[tuple[int, int]]:
        """Level sizes as OpenCV builds them (``cvRound(side * scale_step)``, stop below 16 px)."""
        sizes = [(h, w)]
        for _ in range(1, self.params.nscales):
            oh, ow = K.opencv_resized_size(*sizes[-1], self.params.scale_step)
            if oh < MIN_PYRAMID_SIDE or ow < MIN_PYRAMID_SIDE:
                break
            sizes.append((oh, ow))
        return sizes

    def _solve(self, i0: torch.Tensor, i1: torch.Tensor) -> torch.Tensor:
        p = self.params
        t0 = time.perf_counter()
        b, h, w = i0.shape
        sizes = self.pyramid_sizes(h, w)
        step = 1.0 / p.scale_step
        i0s, i1s = [i0], [i1]
        for oh, ow in sizes[1:]:
            i0s.append(K.resize_linear(i0s[-1], (oh, ow), (step, step)))
            i1s.append(K.resize_linear(i1s[-1], (oh, ow), (step, step)))
        n_u = 3 if p.gamma != 0 else 2
        u: list[torch.Tensor] = [torch.zeros_like(i0s[-1]) for _ in range(n_u)]
        count_total = torch.zeros(b, dtype=torch.float64, device=self.device)
        for s in range(len(sizes) - 1, -1, -1):
            hs, ws = sizes[s]
            if s < len(sizes) - 1:
                u = [K.resize_linear(c, (hs, ws)) for c in u]
                u[0] = u[0] * step
                u[1] = u[1] * step          # u3 is not scaled (as OpenCV)
            i1x, i1y = K.centered_gradient(i1s[s])
            if self.kernels == "triton":
                u = [c.contiguous() for c in u]
                q = [torch.zeros_like(u[0]) for _ in range(4)]
                count = torch.zeros(b, dtype=torch.int32, device=self.device)
                TT.solve_level(i0s[s].contiguous(), i1s[s].contiguous(), i1x, i1y, u, q, count, p,
                               self.remap_subpixel, block=self.triton_block, num_warps=self.triton_warps)
                count_total += count.to(torch.float64) * (hs * ws / float(h * w))
                continue
            ws_ = self._workspace(b, hs, ws, n_u)
            for dst, src in zip(ws_.u, u):
                dst.copy_(src)
            for q in ws_.p:
                q.zero_()
            ws_.count.zero_()
            for _ in range(p.warps):
                consts = self._warp(i0s[s], i1s[s], i1x, i1y, ws_.u[0], ws_.u[1], self.remap_subpixel)
                for dst, src in zip(ws_.consts, consts):
                    dst.copy_(src)
                ws_.active.fill_(True)
                self._warp_iterations(ws_, hs * ws, h * w)
            frac = hs * ws / float(h * w)
            count_total += ws_.count.to(torch.float64) * frac
            u = [t.clone() for t in ws_.u]
        self.stats.pairs += b
        per_pair = count_total.cpu().tolist()
        self.stats.pair_iterations += float(sum(per_pair))
        if self.kernels == "triton":   # each pair runs its own schedule: nothing executed in vain
            self.stats.batch_iterations += float(sum(per_pair))
        self.stats.per_pair_iterations.extend(per_pair)
        self.stats.seconds += time.perf_counter() - t0
        return torch.stack((u[0], u[1]), -1)

    def _warp_iterations(self, ws: _Workspace, pixels: int, full_pixels: int) -> None:
        """Outer/inner iterations of one warp with OpenCV's early stop, chunked for the host."""
        p = self.params
        # a 0-d tensor in the workspace, not a Python float: the compiled iteration must not
        # specialise on it, and a CUDA graph reads it from a fixed address
        eps = ws.eps
        frac = pixels / float(full_pixels)
        b = ws.active.shape[0]
        for _ in range(p.outer_iterations):
            if p.median_filtering > 1:
                m1, m2 = self._median(ws.u[0], ws.u[1], ws.active, p.median_filtering)
                ws.u[0].copy_(m1)
                ws.u[1].copy_(m2)
            done = 0
            while done < p.inner_iterations:
                k = min(self.check_every, p.inner_iterations - done)
                self._chunk(ws, k, eps)
                done += k
                self.stats.chunks += 1
                self.stats.batch_iterations += k * b * frac
                if not bool(ws.active.any()):      # the one host synchronisation per chunk
                    return

    def _chunk(self, ws: _Workspace, k: int, eps: torch.Tensor) -> None:
        """Run ``k`` iterations on the workspace in place (CUDA graph replay when enabled)."""
        if not self.cuda_graphs:
            self._chunk_body(ws, k, eps)
            return
        graph = ws.graphs.get(k)
        if graph is None:
            self._chunk_body(ws, k, eps)            # real work; also warms up / compiles
            try:
                graph = torch.cuda.CUDAGraph()
                # capturing records the kernels without running them: the state is untouched
                with torch.cuda.graph(graph):
                    self._chunk_body(ws, k, eps)
            except RuntimeError as exc:             # pragma: no cover - depends on the CUDA stack
                log.warning("TV-L1: CUDA graph capture failed (%s); running without graphs", exc)
                self.cuda_graphs = False
                return
            ws.graphs[k] = graph
            return
        graph.replay()

    def _chunk_body(self, ws: _Workspace, k: int, eps: torch.Tensor) -> None:
        """``k`` iterations, each one call of the (compiled) single iteration; results copied in place."""
        p = self.params
        consts = p.iteration_constants()
        u, q, active, count = ws.u, ws.p, ws.active, ws.count
        for _ in range(k):
            u, q, active, count = self._iterate(u, q, active, count, *ws.consts, *consts, eps, 1)
        for dst, src in zip(ws.u, u):
            dst.copy_(src)
        for dst, src in zip(ws.p, q):
            dst.copy_(src)
        ws.active.copy_(active)
        ws.count.copy_(count)

    def _workspace(self, b: int, h: int, w: int, n_u: int) -> _Workspace:
        key = (b, h, w, n_u)
        ws = self._workspaces.get(key)
        if ws is None:
            z = lambda: torch.zeros((b, h, w), dtype=torch.float32, device=self.device)  # noqa: E731
            ws = _Workspace(u=[z() for _ in range(n_u)], p=[z() for _ in range(2 * n_u)],
                            active=torch.ones(b, dtype=torch.bool, device=self.device),
                            count=torch.zeros(b, dtype=torch.int32, device=self.device),
                            consts=[z() for _ in range(4)],
                            eps=torch.tensor(self.params.scaled_epsilon(h * w), dtype=torch.float32,
                                             device=self.device))
            self._workspaces[key] = ws
        return ws


def _masked_median(u1: torch.Tensor, u2: torch.Tensor, active: torch.Tensor, ksize: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Median-filter both flow components of the pairs still iterating (others unchanged)."""
    a = active.view(-1, 1, 1)
    return (torch.where(a, K.median_blur(u1, ksize), u1), torch.where(a, K.median_blur(u2, ksize), u2))


def _pad_rows(x: np.ndarray | torch.Tensor, n: int) -> np.ndarray | torch.Tensor:
    """``x`` extended to ``n`` rows by repeating its last row."""
    reps = n - len(x)
    if isinstance(x, torch.Tensor):
        return torch.cat([x, x[-1:].expand(reps, *x.shape[1:])])
    return np.concatenate([x, np.repeat(x[-1:], reps, 0)])
