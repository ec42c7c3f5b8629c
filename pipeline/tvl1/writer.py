"""Flow files: ``flow`` float16 ``[T-1, H, W, 2]`` (u, v in pixels), written atomically.

:class:`FlowWriter` writes one video's file slice by slice as its pairs are solved (the
batched GPU path commits a file as soon as its last pair is in); :func:`write_flow`
writes a whole file at once (the OpenCV path). Non-finite flow is never written
(:func:`to_float16`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Mapping

import numpy as np

from pipeline.core.runner import VideoTask
from pipeline.errors import InputError
from pipeline.io.h5io import EarlyWriteback, atomic_h5, write_attrs


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
