"""Stage ``flow``: Dual TV-L1 optical flow between consecutive face crops.

Reads ``data/<ds>/faces/<video>.h5`` (``frames`` uint8 [T, H, W, C], C 3 or 1),
converts the frames to grayscale like ``cv2.cvtColor`` and writes
``data/<ds>/flow/<video>.h5``: ``flow`` float16 [T-1, H, W, 2] (u, v in pixels at crop
resolution) with attrs ``impl`` and every TV-L1 parameter.

Two implementations of the same algorithm (``flow.impl``):

* ``opencv`` -- ``cv2.optflow.DualTVL1OpticalFlow``, one thread per process, videos
  spread over processes by :func:`pipeline.core.runner.map_videos`;
* ``torch`` -- :class:`pipeline.tvl1.solver.TorchTVL1`, pairs from many videos batched
  in one process on the GPU; each video is still written atomically and skipped when
  complete;
* ``auto`` -- ``torch`` when CUDA is available, ``opencv`` otherwise.

Colour frames are taken to be stored in RGB order (``flow.channel_order``; set it to
``bgr`` if a faces file was written from OpenCV's BGR frames).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
from tqdm.auto import tqdm

from pipeline.errors import ConfigError, InputError, M2esError, StageFailed
from pipeline.io.h5chunks import decode_threads
from pipeline.io.artifacts import faces_shape, read_faces
from pipeline.io.h5io import EarlyWriteback, atomic_h5, file_digest, remove_partials, remove_stale, write_attrs
from pipeline.core.params import digest
from pipeline.core.runner import NOT_YET, TaskFeed, VideoTask, map_videos, pending
from pipeline.core.stage import StageContext, stage_main
from pipeline.tvl1.opencv import TVL1Params, create_opencv_tvl1, opencv_remap_subpixel, to_gray

log = logging.getLogger(__name__)

STAGE = "flow"
VERSION = 1
IMPLS = ("opencv", "torch", "auto")


@dataclass(frozen=True)
class FlowConfig:
    """The non-algorithmic knobs of the ``flow`` section (speed and storage; results unchanged)."""

    impl: str = "auto"
    channel_order: str = "rgb"
    device: str = "auto"
    batch_pairs: int = 4096
    kernels: str = "auto"
    triton_block: int = 256
    triton_warps: int = 4
    compile: bool = True
    cuda_graphs: bool = True
    check_every: int = 10
    remap_subpixel: str | int = "auto"
    compression: str | None = None
    debug_oom_above_batch: int = 0

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "FlowConfig":
        """Read and validate the ``flow`` params section."""
        d = cls()
        kw = {k: section.get(k, getattr(d, k)) for k in d.__dataclass_fields__}
        cfg = cls(**kw)
        if cfg.impl not in IMPLS:
            raise ConfigError(f"params.yaml: flow.impl '{cfg.impl}' must be one of {', '.join(IMPLS)}.")
        if cfg.channel_order not in ("rgb", "bgr"):
            raise ConfigError(f"params.yaml: flow.channel_order '{cfg.channel_order}' must be rgb or bgr.")
        if cfg.kernels not in ("auto", "triton", "torch"):
            raise ConfigError(f"params.yaml: flow.kernels '{cfg.kernels}' must be auto, triton or torch.")
        tb = int(cfg.triton_block)
        if tb < 32 or tb & (tb - 1) or int(cfg.triton_warps) not in (1, 2, 4, 8, 16):
            raise ConfigError("params.yaml: flow.triton_block must be a power of two >= 32 and flow.triton_warps "
                              f"one of 1, 2, 4, 8, 16 (got {cfg.triton_block}, {cfg.triton_warps}).")
        if int(cfg.batch_pairs) < 1 or int(cfg.check_every) < 1:
            raise ConfigError("params.yaml: flow.batch_pairs and flow.check_every must be >= 1.")
        if cfg.remap_subpixel not in ("auto", 0, 32):
            raise ConfigError(f"params.yaml: flow.remap_subpixel '{cfg.remap_subpixel}' must be auto, 0 (exact, "
                              "OpenCV 5.x) or 32 (1/32 pixel, OpenCV 4.x).")
        if cfg.compression not in (None, "lzf", "gzip"):
            raise ConfigError(f"params.yaml: flow.compression '{cfg.compression}' must be lzf, gzip or null.")
        return cfg


def resolve_impl(impl: str, device: str = "auto") -> str:
    """``opencv`` or ``torch`` for the configured ``impl`` (``auto``: torch only with CUDA)."""
    if impl not in IMPLS:
        raise ConfigError(f"params.yaml: flow.impl '{impl}' must be one of {', '.join(IMPLS)}.")
    if impl != "auto":
        return impl
    import torch
    if device not in ("auto",) and not str(device).startswith("cuda"):
        return "opencv"
    return "torch" if torch.cuda.is_available() else "opencv"


def resolve_kernels(kernels: str, tvl1: TVL1Params, device: Any) -> str:
    """``triton`` or ``torch`` for the torch implementation (``auto``: Triton where it can run).

    The Triton kernel (:mod:`pipeline.tvl1.triton_solver`) runs each pair's own early-stop
    schedule on the GPU; the torch kernels (:mod:`pipeline.tvl1.kernels`) cover every
    parameter (``gamma != 0``, any median size) and the CPU. Both compute the same flow.
    """
    from pipeline.tvl1.triton_solver import supports

    if kernels == "torch":
        return "torch"
    why = supports(tvl1, device)
    if kernels == "triton" and why:
        raise ConfigError(f"params.yaml: flow.kernels is triton, but {why}. Set flow.kernels: auto or torch.")
    return "torch" if why else "triton"


def algorithm_identity(tvl1: TVL1Params, cfg: FlowConfig, impl: str) -> dict[str, Any]:
    """What determines a flow file's values (the stage part of its digest and its attrs)."""
    ident: dict[str, Any] = {"impl": impl, "channel_order": cfg.channel_order, **tvl1.as_dict()}
    if impl == "torch":
        ident["remap_subpixel"] = (opencv_remap_subpixel() if cfg.remap_subpixel == "auto"
                                   else int(cfg.remap_subpixel))
    return ident


# --------------------------------------------------------------------------- I/O


def to_float16(flow: np.ndarray, video: str) -> np.ndarray:
    """Flow as float16, refusing NaN/inf (never written) with a message naming the video."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(flow).astype(np.float16)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise InputError(f"video {video}: TV-L1 produced {bad} non-finite flow value(s); nothing written. "
                         "Check the faces file for corrupt frames.")
    return out


class FlowWriter(AbstractContextManager):
    """One flow file being written (atomically) slice by slice as its pairs complete."""

    def __init__(self, task: VideoTask, n_pairs: int, hw: tuple[int, int], attrs: Mapping[str, Any],
                 params: Mapping[str, Any], compression: str | None) -> None:
        self.task = task
        self.n_pairs = n_pairs
        self.remaining = n_pairs
        self._cm = atomic_h5(task.output, task.digest, params)
        self._f = self._cm.__enter__()
        opts: dict[str, Any] = {"compression": compression} if compression else {}
        self.dset = self._f.create_dataset("flow", shape=(n_pairs, *hw, 2), dtype=np.float16,
                                           chunks=(1, *hw, 2), **opts)
        write_attrs(self._f, {"video": task.video, "n_pairs": n_pairs, **attrs})
        self.writeback = EarlyWriteback(self._f)  # disk writes as slices come, not all at the final fsync
        self.closed = False

    def write(self, start: int, flow16: np.ndarray) -> bool:
        """Store pairs ``start..start+len``; commit the file when all are in. True when done."""
        self.dset[start:start + len(flow16)] = flow16
        self.writeback.wrote(flow16.nbytes)
        self.remaining -= len(flow16)
        if self.remaining == 0:
            self.close()
            return True
        return False

    def close(self) -> None:
        """Commit the file (rename to its final name)."""
        if not self.closed:
            self.closed = True
            self._cm.__exit__(None, None, None)

    def abort(self, exc: BaseException) -> None:
        """Drop the temporary file; the final name is never created."""
        if not self.closed:
            self.closed = True
            try:
                self._cm.__exit__(type(exc), exc, exc.__traceback__)
            except BaseException:  # noqa: BLE001 - atomic_h5 re-raises the exception it was given
                pass

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.abort(exc[1])


def write_flow(task: VideoTask, flow16: np.ndarray, attrs: Mapping[str, Any], params: Mapping[str, Any],
               compression: str | None) -> None:
    """Write a whole flow file at once (atomically)."""
    with FlowWriter(task, len(flow16), flow16.shape[1:3], attrs, params, compression) as w:
        w.write(0, flow16)


# ------------------------------------------------------------------ opencv path
def opencv_video(task: VideoTask) -> int:
    """Per-video function of the opencv path (runs in a worker process): returns the pair count."""
    cv2.setNumThreads(1)
    pl = task.payload
    tvl1 = TVL1Params.from_section(pl["section"])
    frames = read_faces(Path(pl["faces"]), task.video)
    gray = to_gray(frames, pl["channel_order"], f"{pl['faces']} (video {task.video})")
    algo = create_opencv_tvl1(tvl1)
    flow = np.empty((len(gray) - 1, *gray.shape[1:], 2), dtype=np.float16)
    for t in range(len(gray) - 1):
        flow[t] = to_float16(algo.calc(gray[t], gray[t + 1], None), task.video)
    write_flow(task, flow, pl["attrs"], pl["section"], pl["compression"])
    return len(flow)


# ------------------------------------------------------------------- torch path
def run_torch(tasks: list[VideoTask] | TaskFeed, tvl1: TVL1Params, cfg: FlowConfig, attrs: Mapping[str, Any],
              section: Mapping[str, Any], fail_fast: bool = False) -> dict[str, int]:
    """Batch the pairs of all ``tasks`` across videos through one :class:`TorchTVL1`.

    A list of videos is grouped by frame size (a batch holds one size); a streaming
    :class:`~pipeline.core.runner.TaskFeed` (faces files still being cropped) is taken in
    arrival order, and whatever is queued is solved whenever the next video has not
    arrived yet, so the GPU works while the crop stage does. Videos are read one ahead in
    a background thread, and each video's file is committed as soon as its last pair is
    done. Returns {video: pairs}; raises :class:`StageFailed` listing failed videos.
    """
    import torch

    from pipeline.core.device import resolve_device
    from pipeline.tvl1.solver import TorchTVL1

    device = resolve_device(cfg.device)
    kernels = resolve_kernels(cfg.kernels, tvl1, device)
    solver = TorchTVL1(tvl1, device, compile=bool(cfg.compile) and device.type == "cuda",
                       cuda_graphs=bool(cfg.cuda_graphs), check_every=int(cfg.check_every),
                       remap_subpixel=int(attrs.get("remap_subpixel", 0)), max_batch=int(cfg.batch_pairs),
                       oom_above=int(cfg.debug_oom_above_batch), kernels=kernels,
                       triton_block=int(cfg.triton_block), triton_warps=int(cfg.triton_warps))
    log.info("TV-L1 on %s with %s kernels", device, kernels)
    failures: dict[str, str] = {}
    done: dict[str, int] = {}
    total: int | None = None
    if isinstance(tasks, TaskFeed):
        feed = tasks
    else:
        shapes: list[tuple[tuple[int, ...], VideoTask]] = []
        for task in tasks:
            try:
                shapes.append((faces_shape(Path(task.payload["faces"]), task.video), task))
            except M2esError as exc:
                failures[task.video] = str(exc)
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
        failures[writer.task.video] = str(exc)
        log.error("%s: %s failed: %s", STAGE, writer.task.video, exc)

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
                            done[w.task.video] = w.n_pairs
                    except M2esError as exc:
                        fail(w, exc)
                pos += k
            bar.update(len(f16))

        solver.flow_batched(i0, i1, on_batch=on_batch)

    batch = int(cfg.batch_pairs)
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
                failures[task.video] = str(exc)
                log.error("%s: %s failed: %s", STAGE, task.video, exc)
                gray = None
            gray_future = None                      # free the frames of finished reads
            if gray is not None:
                if current_hw is not None and gray.shape[1:] != current_hw:
                    flush(queued, bar)              # a batch holds one frame size
                current_hw = gray.shape[1:]
                writer = FlowWriter(task, len(gray) - 1, gray.shape[1:], attrs, section, cfg.compression)
                queue.append((writer, 0, gray[:-1], gray[1:]))
                queued += len(gray) - 1
                while queued >= batch:
                    flush(batch, bar)
            if fail_fast and failures:
                break
            if nxt is NOT_YET:                      # the next video is still being cropped:
                flush(queued, bar)                  # solve what is here meanwhile
                nxt, nxt_future = next_task(True)
            task, gray_future = nxt, nxt_future
        if not (fail_fast and failures):
            flush(queued, bar)
        for fut in writes:
            fut.result()
    for w, *_ in queue:  # only left when fail_fast stopped early
        w.abort(RuntimeError("stopped (fail_fast)"))
    if failures:
        raise StageFailed(STAGE, failures)
    return done


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


# ------------------------------------------------------------------------ stage
@dataclass(frozen=True)
class FlowPlan:
    """The flow stage's settings for one run, resolved from its params section."""

    section: dict[str, Any]
    cfg: FlowConfig
    tvl1: TVL1Params
    impl: str
    ident: dict[str, Any]  # written to every file's attrs; the digest leaves out opencv_version

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "FlowPlan":
        """Validate the ``flow`` section and resolve ``impl`` on this machine."""
        cfg = FlowConfig.from_section(section)
        tvl1 = TVL1Params.from_section(section)
        impl = resolve_impl(cfg.impl, cfg.device)
        ident = algorithm_identity(tvl1, cfg, impl)
        ident["opencv_version"] = cv2.__version__ if impl == "opencv" else None
        return cls(dict(section), cfg, tvl1, impl, ident)


def build_task(ctx: StageContext, plan: FlowPlan, faces: Path) -> VideoTask | None:
    """The task of one faces file (None when it is incomplete); its digest includes the file's ``m2es_digest``."""
    faces_digest = file_digest(faces)
    if faces_digest is None:
        return None
    stage_ident = {k: v for k, v in plan.ident.items() if k != "opencv_version"}
    dig = digest({"stage": stage_ident, "inputs": faces_digest, "version": VERSION})
    return VideoTask(faces.stem, ctx.paths.h5(ctx.paths.flow, faces.stem), dig,
                     {"faces": str(faces), "section": dict(plan.section), "attrs": dict(plan.ident),
                      "channel_order": plan.cfg.channel_order, "compression": plan.cfg.compression})


def build_tasks(ctx: StageContext, plan: FlowPlan) -> tuple[list[VideoTask], dict[str, str]]:
    """One task per complete faces file; the incomplete ones as {video: reason}."""
    faces_dir = ctx.paths.faces
    files = sorted(faces_dir.glob("*.h5")) if faces_dir.is_dir() else []
    if not files:
        raise InputError(f"{faces_dir}: no faces files (<video>.h5). Run the crop stage first: "
                         f"dvc repro crop@{ctx.name}.")
    tasks, bad = [], {}
    for path in files:
        task = build_task(ctx, plan, path)
        if task is None:
            bad[path.stem] = f"{path}: faces file is incomplete or unreadable. Rerun the crop stage."
        else:
            tasks.append(task)
    return tasks, bad


def run(ctx: StageContext) -> None:
    """Compute the flow of every video of the dataset (skipping complete outputs)."""
    plan = FlowPlan.from_section(ctx.section())
    remove_partials(ctx.paths.flow)
    tasks, bad = build_tasks(ctx, plan)
    stale = remove_stale(ctx.paths.flow, {t.video for t in tasks} | set(bad))
    if stale:
        log.info("%s: removed %d output(s) of videos no longer in the tables: %s", STAGE, len(stale),
                 ", ".join(stale))
    log.info("%s@%s: %d videos, impl %s", STAGE, ctx.name, len(tasks), plan.impl)
    failures = dict(bad)
    try:
        if plan.impl == "opencv":
            map_videos(opencv_video, tasks, stage=STAGE, parallel=ctx.parallel)
        else:
            todo, done = pending(tasks)
            if done:
                log.info("%s: %d of %d videos already complete, skipped", STAGE, len(done), len(tasks))
            run_torch(todo, plan.tvl1, plan.cfg, plan.ident, plan.section, fail_fast=ctx.parallel.fail_fast)
    except StageFailed as exc:
        failures.update(exc.failures)
    if failures:
        raise StageFailed(STAGE, failures)


main = stage_main(STAGE, run)

if __name__ == "__main__":
    raise SystemExit(main())
