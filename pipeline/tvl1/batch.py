"""The ``torch`` backend of the flow stage: pairs of many videos batched through one GPU solver.

:func:`run_torch` is a batched consumer of :func:`pipeline.core.runner.run_batched` (which
skips complete videos, collects failures and applies ``fail_fast``): it reads the videos
one ahead, queues their pairs, solves them in batches of ``flow.batch_pairs`` (``auto``: sized to the
device's free memory within ``flow.gpu_memory_gb``, :func:`batch_pairs_for`) with
:class:`pipeline.tvl1.solver.TorchTVL1`, and writes each video's file through a
:class:`~pipeline.tvl1.writer.FlowWriter`, committed as soon as its last pair is in.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from pipeline.core.runner import NOT_YET, Outcomes, TaskFeed, VideoTask, run_batched
from pipeline.errors import M2esError
from pipeline.io.artifacts import faces_shape, read_faces
from pipeline.io.h5chunks import decode_threads
from pipeline.tvl1.backend import resolve_kernels
from pipeline.tvl1.opencv import to_gray
from pipeline.tvl1.params import FlowParams, TVL1Params
from pipeline.tvl1.writer import FlowWriter, to_float16

log = logging.getLogger(__name__)

#: the stage whose videos these are (progress bar, log lines, StageFailed)
STAGE = FlowParams.SECTION
#: ``flow.batch_pairs: auto`` on the CPU (no device memory to size from; the flow does not depend on it)
CPU_BATCH_PAIRS = 64


def run_torch(tasks: list[VideoTask] | TaskFeed, tvl1: TVL1Params, cfg: FlowParams, attrs: Mapping[str, Any],
              section: Mapping[str, Any], fail_fast: bool = False) -> dict[str, int]:
    """Batch the pairs of all ``tasks`` not already complete across videos through one :class:`TorchTVL1`.

    A list of videos is grouped by frame size (a batch holds one size); a streaming
    :class:`~pipeline.core.runner.TaskFeed` (faces files still being cropped) is taken in
    arrival order, and whatever is queued is solved whenever the next video has not
    arrived yet, so the GPU works while the crop stage does. Videos are read one ahead in
    a background thread, and each video's file is committed as soon as its last pair is
    done. ``attrs`` go into every file's attrs, ``section`` (the raw params section) into
    its recorded params. Returns {video: pairs}; raises :class:`StageFailed` listing failed
    videos (see :func:`pipeline.core.runner.run_batched`).
    """
    def consume(todo: list[VideoTask] | TaskFeed, outcomes: Outcomes) -> None:
        _solve(todo, outcomes, tvl1, cfg, attrs, section)

    return run_batched(consume, tasks, stage=STAGE, fail_fast=fail_fast)


def _solve(tasks: list[VideoTask] | TaskFeed, outcomes: Outcomes, tvl1: TVL1Params, cfg: FlowParams,
           attrs: Mapping[str, Any], section: Mapping[str, Any]) -> None:
    """:func:`run_torch`'s consumer: solve and write every task, reporting each video to ``outcomes``."""
    import torch

    from pipeline.core.device import resolve_device
    from pipeline.core.memory import budget_bytes, limit_process
    from pipeline.tvl1.solver import TorchTVL1

    device = resolve_device(cfg.device)
    kernels = resolve_kernels(cfg.kernels, tvl1, device)
    limit_process(device, budget_bytes(cfg.gpu_memory_gb))
    solver = TorchTVL1(tvl1, device, compile=bool(cfg.compile) and device.type == "cuda",
                       cuda_graphs=bool(cfg.cuda_graphs), check_every=int(cfg.check_every),
                       remap_subpixel=int(attrs.get("remap_subpixel", 0)), max_batch=1,
                       oom_above=int(cfg.debug_oom_above_batch), kernels=kernels,
                       triton_block=int(cfg.triton_block), triton_warps=int(cfg.triton_warps))
    log.info("TV-L1 on %s with %s kernels", device, kernels)
    total: int | None = None
    if isinstance(tasks, TaskFeed):
        feed = tasks
    else:
        shapes: list[tuple[tuple[int, ...], VideoTask]] = []
        for task in tasks:
            try:
                shapes.append((faces_shape(Path(task.payload["faces"]), task.video), task))
            except M2esError as exc:
                outcomes.failed(task.video, exc)
        shapes.sort(key=lambda st: (st[0][1:3], st[1].video))
        total = sum(max(s[0] - 1, 0) for s, _ in shapes)
        feed = TaskFeed(ready=[t for _, t in shapes])

    decode_pool = ThreadPoolExecutor(max_workers=decode_threads(), thread_name_prefix="flow-read")
    write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flow-write")

    def load(task: VideoTask) -> np.ndarray:
        frames = read_faces(Path(task.payload["faces"]), task.video, decode_pool)
        return to_gray(frames, cfg.channel_order, f"{task.payload['faces']} (video {task.video})")

    # results leave the GPU by a non-blocking copy and are written by one background thread,
    # so the next batch is solved while the last one is stored (at most two batches in flight)
    writes: list[Future] = []

    # the pairs waiting for a batch: (writer, first pair index, i0 frames, i1 frames)
    queue: list[tuple[FlowWriter, int, np.ndarray, np.ndarray]] = []
    queued = 0

    def fail(writer: FlowWriter, exc: BaseException) -> None:
        writer.abort(exc)
        outcomes.failed(writer.task.video, exc)

    def flush(limit: int, bar: tqdm) -> None:
        nonlocal queue, queued
        take: list[tuple[FlowWriter, int, np.ndarray, np.ndarray]] = []
        n = 0
        while queue and n < limit:
            w, t0, a, b = queue[0]
            k = min(len(a), limit - n)
            take.append((w, t0, a[:k], b[:k]))
            if k == len(a):
                queue.pop(0)
            else:
                queue[0] = (w, t0 + k, a[k:], b[k:])
            n += k
        queued -= n
        if not n:
            return
        i0 = np.concatenate([x[2] for x in take])
        i1 = np.concatenate([x[3] for x in take])
        owners = [(w, t0, len(a)) for w, t0, a, _ in take]

        def on_batch(start: int, flow: torch.Tensor) -> None:
            host, ready = _to_host_float16(flow)
            while len(writes) >= 2:
                writes.pop(0).result()
            writes.append(write_pool.submit(store, start, host, ready))

        def store(start: int, host: torch.Tensor, ready: Any) -> None:
            if ready is not None:
                ready.synchronize()
            f16 = host.numpy()
            pos = 0
            for w, t0, k in owners:
                lo, hi = max(pos, start), min(pos + k, start + len(f16))
                if lo < hi and not w.closed:
                    try:
                        if w.write(t0 + lo - pos, to_float16(f16[lo - start:hi - start], w.task.video)):
                            outcomes.succeeded(w.task.video, w.n_pairs)
                    except M2esError as exc:
                        fail(w, exc)
                pos += k
            bar.update(len(f16))

        solver.flow_batched(i0, i1, on_batch=on_batch)

    batch = 0       # pairs per flush for the current frame size (batch_pairs_for), set by its first video
    shrink = 1.0    # solver.max_batch / batch after out-of-memory halvings, kept for the next frame size
    with decode_pool, write_pool, ThreadPoolExecutor(max_workers=1) as pool, \
            tqdm(total=total, desc=STAGE, unit="pair") as bar:

        def next_task(wait: bool) -> Any:
            task = feed.get(wait)
            return (task, None if task is NOT_YET or task is None else pool.submit(load, task))

        task, gray_future = next_task(True)
        current_hw: tuple[int, ...] | None = None
        while task is not None:
            nxt, nxt_future = next_task(False)          # read the next video while this one is solved
            try:
                gray = gray_future.result()
            except M2esError as exc:
                outcomes.failed(task.video, exc)
                gray = None
            gray_future = None                      # free the frames of finished reads
            if gray is not None:
                if gray.shape[1:] != current_hw:
                    if current_hw is not None:
                        flush(queued, bar)          # a batch holds one frame size
                        shrink = min(shrink, solver.max_batch / batch)
                    current_hw = gray.shape[1:]
                    batch = batch_pairs_for(cfg, solver, current_hw)
                    solver.max_batch = max(1, int(batch * shrink))
                writer = FlowWriter(task, len(gray) - 1, gray.shape[1:], attrs, section, cfg.compression)
                queue.append((writer, 0, gray[:-1], gray[1:]))
                queued += len(gray) - 1
                while queued >= batch:
                    flush(batch, bar)
            if outcomes.stopped:
                break
            if nxt is NOT_YET:                      # the next video is still being cropped:
                flush(queued, bar)                  # solve what is here meanwhile
                nxt, nxt_future = next_task(True)
            task, gray_future = nxt, nxt_future
        if not outcomes.stopped:
            flush(queued, bar)
        for fut in writes:
            fut.result()
    for w, *_ in queue:  # only left when fail_fast stopped early
        w.abort(RuntimeError("stopped (fail_fast)"))


def batch_pairs_for(cfg: FlowParams, solver: Any, hw: tuple[int, ...], memory: Any = None) -> int:
    """Pairs per batch for frames of size ``hw``: ``flow.batch_pairs``, or with ``auto`` as many as fit the
    device's free memory within ``flow.gpu_memory_gb`` (:func:`pipeline.core.memory.resolve_batch`, at
    ``solver``'s bytes per pair; ``memory``: the device's, default measured), :data:`CPU_BATCH_PAIRS` on the CPU."""
    from pipeline.core.memory import resolve_batch

    h, w = int(hw[0]), int(hw[1])
    return resolve_batch(cfg.batch_pairs, solver.device, solver.pair_bytes(h, w), budget_gb=cfg.gpu_memory_gb,
                         cpu_batch=CPU_BATCH_PAIRS, param="params.yaml: flow.batch_pairs", item=f"{h}x{w} pair",
                         memory=memory)


def _to_host_float16(flow: Any) -> tuple[Any, Any]:
    """``flow`` as float16 in host memory: ``(tensor, event)``; wait on the event before reading it.

    On CUDA the copy is queued behind the solve (page-locked buffer, non-blocking) and the
    event marks its end, so a writer thread can wait for it without stalling the stream
    on which the next batch is already being solved. On the CPU the copy is done at once
    (``event`` None).
    """
    import torch

    half = flow.to(torch.float16)
    if half.device.type != "cuda":
        return half.contiguous(), None
    host = torch.empty(half.shape, dtype=torch.float16, pin_memory=True)
    host.copy_(half, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event
