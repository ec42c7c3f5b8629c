"""Reading the features stage's inputs: probe a video's faces and flow files, read them ahead of the model.

* :func:`probe_video`: the faces and flow files of a video, checked against each other
  without reading pixels (:func:`pipeline.io.artifacts.check_faces` / ``check_flow``);
* :func:`read_video`: the frames (uint8) and flow (float16) of a probed video, whole, its
  HDF5 chunks decoded in a thread pool, optionally straight into page-locked memory; with
  ``flow_quantize: jpeg`` the flow as the published tooling stored and read it, uint8 levels
  (:mod:`pipeline.extract.flow_jpeg`);
* :class:`PrefetchReader`: videos read ahead by a background thread (or a process pool),
  read errors coming out as :class:`Failed` items.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import queue
import threading
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np
import torch

from pipeline.errors import InputError, M2esError
from pipeline.extract.flow_jpeg import quantize_flow
from pipeline.extract.params import STREAMS
from pipeline.io.artifacts import check_faces, check_flow
from pipeline.io.h5chunks import decode_threads, read_dataset

_TORCH_DTYPES = {np.uint8: torch.uint8, np.float16: torch.float16}


@dataclass
class VideoProbe:
    """What the stage knows about a video before reading its frames."""

    video: str
    faces: Path
    flow: Path
    n_frames: int
    height: int
    width: int
    channels: int
    faces_digest: str
    flow_digest: str


@dataclass
class VideoInput:
    """A video's frames and flow in host memory, ready for the device."""

    probe: VideoProbe
    frames: np.ndarray | torch.Tensor | None  # uint8 [T, H, W, C] (a tensor when pinned); None: rgb not read
    flow: np.ndarray | torch.Tensor | None  # float16 [T-1, H, W, 2] px (flow_quantize jpeg: uint8 levels) or None


@dataclass
class Failed:
    """A video that could not be processed, and why (one line)."""

    video: str
    reason: str


def probe_video(video: str, faces_path: str | Path, flow_path: str | Path) -> VideoProbe:
    """Check the faces and flow files of ``video`` against each other without reading pixels.

    Raises :class:`InputError` naming the file and the fix when a file is missing,
    incomplete, lacks its dataset, or when faces and flow disagree in length or size.
    """
    faces_path, flow_path = Path(faces_path), Path(flow_path)
    (t, h, w, c), faces_digest = check_faces(faces_path, video)
    oshape, flow_digest = check_flow(flow_path, video)
    if oshape[0] != t - 1 and t > 0:
        raise InputError(f"{flow_path}: video '{video}' has {oshape[0]} flow fields but {faces_path} has {t} frames "
                         f"(expected {t - 1} fields). The flow is stale: rerun the flow stage for this video.")
    if tuple(oshape[1:3]) != (h, w):
        raise InputError(f"{flow_path}: flow of video '{video}' is {oshape[1]}x{oshape[2]} but its faces in "
                         f"{faces_path} are {h}x{w}. The flow is stale: rerun the flow stage for this video.")
    return VideoProbe(video, faces_path, flow_path, t, h, w, c, faces_digest, flow_digest)


def _read_array(dset: h5py.Dataset, dtype: type, pool: cf.Executor | None, pin: bool) -> np.ndarray | torch.Tensor:
    """The whole dataset as ``dtype``; with ``pin`` decoded straight into page-locked memory (a tensor)."""
    if dset.dtype != dtype:  # not the stages' dtype (e.g. float32 flow): read, then convert
        array = read_dataset(dset, pool=pool).astype(dtype)
        return torch.from_numpy(array).pin_memory() if pin else array
    if not pin:
        return read_dataset(dset, pool=pool)
    tensor = torch.empty(dset.shape, dtype=_TORCH_DTYPES[dtype], pin_memory=True)  # cached by torch's host allocator
    read_dataset(dset, out=tensor.numpy(), pool=pool)
    return tensor


def read_video(probe: VideoProbe, pool: cf.Executor | None = None, pin: bool = False,
               streams: Sequence[str] = STREAMS, flow_quantize: str = "none", flow_bound: float = 15.0) -> VideoInput:
    """Read the frames (uint8) and flow (float16) of a probed video, whole, exactly as stored.

    Chunks are read and decompressed in ``pool``'s threads when given (see
    :func:`pipeline.io.h5chunks.read_dataset`); with ``pin`` (CUDA only) the arrays are
    decoded straight into page-locked tensors, ready for an asynchronous copy to the GPU.
    No conversion happens on the host: frames go to the device as uint8, flow as float16;
    except with ``flow_quantize`` ``jpeg``: the flow becomes the published tooling's uint8
    levels at ±``flow_bound`` after a JPEG round trip (:func:`~pipeline.extract.flow_jpeg.quantize_flow`,
    on the host). Only the arrays of ``streams`` are read (the other is None).
    """
    frames = flow = None
    if "rgb" in streams:
        with h5py.File(probe.faces, "r") as f:
            frames = _read_array(f["frames"], np.uint8, pool, pin)
        if frames.shape[0] != probe.n_frames:
            raise InputError(f"{probe.faces}: video '{probe.video}' changed while being read; rerun the stage.")
    if "flow" in streams:
        with h5py.File(probe.flow, "r") as f:
            flow = _read_array(f["flow"], np.float16, pool, pin and flow_quantize == "none")
        if flow_quantize == "jpeg":
            flow = quantize_flow(flow, flow_bound)
            flow = torch.from_numpy(flow).pin_memory() if pin else flow
        elif flow_quantize != "none":
            raise ValueError(f"flow_quantize must be jpeg or none, got {flow_quantize!r}.")
        if flow.shape[0] != probe.n_frames - 1:
            raise InputError(f"{probe.flow}: video '{probe.video}' changed while being read; rerun the stage.")
    return VideoInput(probe, frames, flow)


def _read_or_fail(probe: VideoProbe, pool: cf.Executor | None = None, pin: bool = False,
                  streams: Sequence[str] = STREAMS, flow_quantize: str = "none",
                  flow_bound: float = 15.0) -> VideoInput | Failed:
    try:
        return read_video(probe, pool, pin, streams, flow_quantize, flow_bound)
    except M2esError as exc:
        return Failed(probe.video, str(exc))
    except (OSError, KeyError, ValueError) as exc:
        return Failed(probe.video, f"{probe.faces} / {probe.flow}: cannot read ({exc}). Rerun crop and flow.")


def reader_pool(workers: int) -> cf.ProcessPoolExecutor:
    """A pool of reader processes (spawned: safe next to CUDA and torch threads)."""
    return cf.ProcessPoolExecutor(max(1, workers), mp_context=mp.get_context("spawn"))


class PrefetchReader:
    """Iterate over videos read ahead by a background thread.

    At most ``prefetch`` videos wait in memory. The thread reads one video at a time,
    its HDF5 chunks read and decompressed by a pool of ``threads`` threads (0: one per
    core, at most 16; Blosc, deflate and unfiltered chunks decode in parallel, other
    filters in h5py). With ``workers`` > 0 whole videos are read in a process pool
    instead, order kept (slower: every array is pickled back). Read errors come out as
    :class:`Failed` items. With ``pin`` the arrays land in page-locked tensors in the
    thread, so the host-to-device copy is asynchronous and pinning costs the device loop
    nothing. Only the arrays of ``streams`` are read; the flow with ``flow_quantize`` (see
    :func:`read_video`). Use as a context manager.
    """

    _END = object()

    def __init__(self, probes: Sequence[VideoProbe], prefetch: int = 2, workers: int = 0, pin: bool = False,
                 pool: cf.ProcessPoolExecutor | None = None, threads: int = 0,
                 streams: Sequence[str] = STREAMS, flow_quantize: str = "none", flow_bound: float = 15.0) -> None:
        self.probes = list(probes)
        self.streams = tuple(streams)
        self.flow_args = (flow_quantize, flow_bound)
        self.prefetch = max(1, prefetch)
        self.workers = workers
        self.threads = decode_threads(threads)
        self.pin = pin
        self.pool = pool  # reused across readers when given (spawning workers costs seconds)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="features-reader", daemon=True)

    def __enter__(self) -> "PrefetchReader":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def _put(self, item: Any) -> bool:
        if self.pin and isinstance(item, VideoInput):  # arrays from reader processes: pin them here
            item = VideoInput(item.probe, *(a if a is None or isinstance(a, torch.Tensor)
                                            else torch.from_numpy(np.ascontiguousarray(a)).pin_memory()
                                            for a in (item.frames, item.flow)))
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            if self.workers > 0 or self.pool is not None:
                with ExitStack() as stack:
                    pool = self.pool or stack.enter_context(reader_pool(self.workers))
                    futures: deque[cf.Future] = deque()
                    it = iter(self.probes)
                    for probe in it:
                        futures.append(pool.submit(_read_or_fail, probe, None, False, self.streams, *self.flow_args))
                        if len(futures) >= self.workers + self.prefetch:
                            break
                    while futures:
                        item = futures.popleft().result()
                        nxt = next(it, None)
                        if nxt is not None:
                            futures.append(pool.submit(_read_or_fail, nxt, None, False, self.streams, *self.flow_args))
                        if not self._put(item):
                            for fut in futures:
                                fut.cancel()
                            return
            else:
                with cf.ThreadPoolExecutor(self.threads, thread_name_prefix="features-chunks") as chunks:
                    for probe in self.probes:
                        if not self._put(_read_or_fail(probe, chunks, self.pin, self.streams, *self.flow_args)):
                            return
        except BaseException as exc:  # noqa: BLE001 - surfaced to the consumer, not lost in the thread
            self._put(exc)
        finally:
            self._put(self._END)

    def __iter__(self) -> Iterator[VideoInput | Failed]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
