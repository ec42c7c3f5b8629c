"""HDF5 I/O shared by the per-video stages: atomic writes and completeness checks.

A stage writes ``<video>.h5`` under a temporary name in the same directory and renames
it only after the file is closed, so a killed or failed write never leaves a file with
the final name. Each file records the digest of what produced it (params and inputs)
in the attribute ``m2es_digest``; a rerun skips a video whose file is complete and
carries the same digest.

Importing this module registers the HDF5 filters of :mod:`hdf5plugin` (Blosc, the
default compression of the faces files, among them) with the HDF5 library, so every
module that opens the project's files through here can decode them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc, LZ4, Zstd... filters with HDF5)
import numpy as np

from pipeline.errors import M2esError
from pipeline.io.atomic import PARTIAL_SUFFIX, partial_path

log = logging.getLogger(__name__)

DIGEST_ATTR = "m2es_digest"
PARAMS_ATTR = "m2es_params"
COMPLETE_ATTR = "m2es_complete"
TMP_SUFFIX = PARTIAL_SUFFIX  # temporary names come from pipeline.io.atomic.partial_path


def _attr_value(value: Any) -> Any:
    """Convert a Python value to something h5py stores as an attribute."""
    if value is None:
        return "null"
    if isinstance(value, (dict, list, tuple)) and not (
        isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value)
    ):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, Path):
        return str(value)
    return value


def write_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    """Write a mapping of attributes (nested values stored as JSON strings)."""
    for key, value in attrs.items():
        obj.attrs[key] = _attr_value(value)


def read_attr_json(obj: h5py.HLObject, key: str, default: Any = None) -> Any:
    """Read an attribute written by :func:`write_attrs`, decoding JSON strings."""
    if key not in obj.attrs:
        return default
    value = obj.attrs[key]
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


@contextmanager
def atomic_h5(path: str | Path, digest: str, params: Mapping[str, Any] | None = None) -> Iterator[h5py.File]:
    """Open a temporary HDF5 file for writing; on success mark it complete and rename to ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    f = h5py.File(tmp, "w")
    try:
        yield f
        f.attrs[DIGEST_ATTR] = digest
        f.attrs[PARAMS_ATTR] = json.dumps(dict(params or {}), sort_keys=True, default=str)
        f.attrs[COMPLETE_ATTR] = True
        f.close()
        with open(tmp, "rb+") as fh:  # make the bytes durable before the rename publishes them
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:  # closing a file whose write failed can itself fail; the original error matters
            f.close()
        except Exception:  # noqa: BLE001
            pass
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and _is_disk_full(exc):
            raise M2esError(f"{path}: the disk is full ({exc.strerror or exc}). Nothing was written under "
                            "this name; free space (or point data/ elsewhere) and rerun to resume.") from exc
        raise


_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages, do not wait
WRITEBACK_BYTES = 32 << 20  # default bytes written between two writeback starts


@lru_cache(maxsize=1)
def _sync_file_range() -> Any:
    """libc's ``sync_file_range`` (Linux), or None where there is none."""
    name = ctypes.util.find_library("c")
    try:
        func = ctypes.CDLL(name, use_errno=True).sync_file_range
    except (OSError, AttributeError, TypeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


class EarlyWriteback:
    """Starts the kernel writing an HDF5 file's data to disk while the file is still being written.

    Call :meth:`wrote` after each write with its size; every ``every`` bytes it asks Linux
    to begin writing back the file's dirty pages (``sync_file_range`` with
    ``SYNC_FILE_RANGE_WRITE``, which queues the pages and returns at once). The fsync that
    :func:`atomic_h5` makes before its rename then finds little left, instead of waiting
    for the whole file (0.13 s for a 390 MB faces file on this project's CPU machine,
    time in which the video's cores do nothing). Durability still comes from that fsync;
    this only moves the disk work earlier. A no-op where the call or the file's descriptor
    is not available (other OSes, HDF5 drivers other than the default ``sec2``).
    """

    def __init__(self, f: h5py.File, every: int = WRITEBACK_BYTES):
        self.every = int(every)
        self.pending = 0
        self.calls = 0
        self._func = _sync_file_range()
        self._fd: int | None = None
        if self._func is not None and f.driver == "sec2":  # HDF5's default POSIX driver: the handle is an fd
            try:
                fd = int(f.id.get_vfd_handle())
            except (AttributeError, TypeError, ValueError, RuntimeError, OSError):
                fd = -1
            self._fd = fd if fd >= 0 else None

    @property
    def active(self) -> bool:
        """True when writeback can be started on this file."""
        return self._fd is not None

    def wrote(self, nbytes: int) -> None:
        """Count ``nbytes`` just written; start a writeback once ``every`` bytes have accumulated."""
        self.pending += int(nbytes)
        if self.pending < self.every or self._fd is None:
            return
        self.pending = 0
        if self._func(self._fd, 0, 0, _SYNC_FILE_RANGE_WRITE) != 0:  # errors are the final fsync's to report
            log.debug("sync_file_range failed (errno %d); writeback left to the final fsync", ctypes.get_errno())
            self._fd = None
        else:
            self.calls += 1


def _is_disk_full(exc: OSError) -> bool:
    """True for out-of-space errors, including HDF5's, which carry the errno only in the message."""
    codes = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
    return exc.errno in codes or any(f"errno = {c}," in str(exc) for c in codes)


def is_complete_file(f: h5py.File) -> bool:
    """Whether an open per-video file was closed complete by :func:`atomic_h5`. A file without the
    flag is incomplete, for every reader."""
    return bool(f.attrs.get(COMPLETE_ATTR, False))


def file_digest(path: str | Path) -> str | None:
    """The ``m2es_digest`` of a complete file, or None if missing, incomplete or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            if not is_complete_file(f):
                return None
            value = f.attrs.get(DIGEST_ATTR)
            return value.decode() if isinstance(value, bytes) else value
    except (OSError, KeyError):
        return None


def is_complete(path: str | Path, digest: str) -> bool:
    """True when ``path`` is a complete file made with exactly ``digest``."""
    return file_digest(path) == digest


def remove_partials(directory: str | Path) -> int:
    """Delete leftover temporary files from interrupted writes; return how many."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    n = 0
    for tmp in directory.glob(f".*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        n += 1
    return n


def remove_stale(directory: str | Path, keep: "set[str] | list[str]", suffix: str = ".h5") -> list[str]:
    """Delete per-video files in ``directory`` whose video is not in ``keep``; return their names.

    A video dropped from the tables (or a renamed one) must not leave its old output
    behind for later stages to read. Temporary files from interrupted writes go too.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    keep = set(keep)
    removed = []
    for path in sorted(directory.glob(f"*{suffix}")):
        if path.name[: -len(suffix)] not in keep:
            path.unlink()
            removed.append(path.name)
    remove_partials(directory)
    return removed
