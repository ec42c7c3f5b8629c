"""Whole HDF5 chunks compressed and decompressed outside the HDF5 library, in threads.

h5py runs every HDF5 call, filters included, under one process-wide lock while holding
the GIL, so compression inside h5py is serial however many threads call it. The stages'
frame and flow datasets are chunked along the first axis only (a chunk is ``k`` whole
frames), which makes a chunk a contiguous run of rows. This module therefore does the
codec work itself, in threads, on whole chunks, in the exact byte format of a standard
HDF5 filter, so that any HDF5 reader with the filter registered reads the files:

* :class:`ChunkCodec` (writing): the dataset options of a ``compression`` name and
  ``compress(chunk) -> bytes`` for :meth:`h5py.h5d.DatasetID.write_direct_chunk`;
* :func:`read_dataset` (reading): locates every chunk in the file, reads its bytes with
  ``os.pread`` and decompresses it straight into the output array, chunks spread over a
  thread pool. Blosc, deflate and unfiltered chunks are decoded here (their codecs and
  the reads release the GIL); any other filter (lzf, shuffle, checksums) falls back to
  h5py for the chunks that need it, so the result is always exactly ``dset[()]``.

Codecs (``compression`` names, see params.yaml ``crop.compression``):

* ``blosc-lz4``: Blosc 1 (HDF5 filter 32001) with bit-shuffle and LZ4: a little smaller
  than lzf on noisy face crops and several times faster both ways;
* ``blosc-zstd``: Blosc 1 with bit-shuffle and Zstandard: smaller than gzip, ~2x slower
  than ``blosc-lz4``;
* ``gzip``: deflate (filter 1, readable by any HDF5 build); ``lzf``: h5py's own filter,
  applied by h5py (serial); ``none``.

The Blosc filter is registered with HDF5 by importing :mod:`hdf5plugin` (done here and in
:mod:`pipeline.io.h5io`, which every stage imports); outside this project, ``import
hdf5plugin`` before opening a file with h5py, or set ``HDF5_PLUGIN_PATH`` for other tools.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import threading
import zlib
from concurrent.futures import Executor, wait
from dataclasses import dataclass
from typing import Any

import blosc
import h5py
import hdf5plugin
import numpy as np

log = logging.getLogger(__name__)

CODECS: tuple[str, ...] = ("blosc-lz4", "blosc-zstd", "lzf", "gzip", "none")
# Level used when none is given. Blosc-LZ4 9 compresses best at LZ4's speed; gzip 9 is ~3x slower than 1.
DEFAULT_LEVELS = {"blosc-lz4": 9, "blosc-zstd": 1, "gzip": 1}
BLOSC_FILTER = 32001  # hdf5plugin.BLOSC_ID
_BLOSC_CNAME = {"blosc-lz4": "lz4", "blosc-zstd": "zstd"}
_TASK_BYTES = 4 << 20  # chunks are grouped into tasks of about this many bytes

# Our own threads give the parallelism: one Blosc thread per call, and the GIL released during it.
blosc.set_releasegil(True)
blosc.set_nthreads(1)


@dataclass(frozen=True)
class ChunkCodec:
    """How a dataset's chunks are compressed: one of :data:`CODECS` and its level.

    ``level`` (gzip and Blosc: 0..9; ignored by lzf and none) defaults to the codec's
    entry in :data:`DEFAULT_LEVELS`.
    """

    name: str = "blosc-lz4"
    level: int | None = None

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            raise ValueError(f"compression {self.name!r} is not one of {', '.join(CODECS)}")
        if self.level is None:
            object.__setattr__(self, "level", DEFAULT_LEVELS.get(self.name, 0))
        if not 0 <= self.level <= 9:
            raise ValueError(f"compression level must be 0..9, got {self.level}")

    @property
    def threaded(self) -> bool:
        """True when :meth:`compress` makes the chunk bytes (written with a direct chunk write)."""
        return self.name in ("gzip", "blosc-lz4", "blosc-zstd")

    def dataset_options(self) -> dict[str, Any]:
        """Keyword arguments of ``create_dataset`` that declare this codec's HDF5 filter."""
        if self.name == "gzip":
            return {"compression": "gzip", "compression_opts": self.level}
        if self.name == "lzf":
            return {"compression": "lzf"}
        if self.name in _BLOSC_CNAME:
            return dict(hdf5plugin.Blosc(cname=_BLOSC_CNAME[self.name], clevel=self.level,
                                         shuffle=hdf5plugin.Blosc.BITSHUFFLE))
        return {}

    def compress(self, chunk: np.ndarray) -> bytes:
        """The stored bytes of one whole chunk, as the dataset's filter writes them (releases the GIL)."""
        data = np.ascontiguousarray(chunk)
        if self.name == "gzip":
            return zlib.compress(data, self.level)
        if self.name in _BLOSC_CNAME:
            return blosc.compress(data, typesize=data.dtype.itemsize, clevel=self.level, shuffle=blosc.BITSHUFFLE,
                                  cname=_BLOSC_CNAME[self.name])
        raise ValueError(f"compression {self.name!r} is applied by h5py, not chunk by chunk")


# ------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Chunk:
    """One stored chunk: first row, rows of the dataset it holds, file offset, stored size, how to decode."""

    row: int
    rows: int
    offset: int
    size: int
    kind: str  # raw | blosc | deflate | h5py


def _pipeline(dset: h5py.Dataset) -> tuple[int, ...]:
    dcpl = dset.id.get_create_plist()
    return tuple(dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters()))


def _chunk_kind(pipeline: tuple[int, ...], mask: int) -> str:
    """How to decode a chunk stored with ``pipeline`` (filter codes) and filter ``mask`` (skipped bits)."""
    active = tuple(code for i, code in enumerate(pipeline) if not mask & (1 << i))
    if not active:
        return "raw"
    if active == (BLOSC_FILTER,):
        return "blosc"
    if active == (h5py.h5z.FILTER_DEFLATE,):
        return "deflate"
    return "h5py"


def _plan(dset: h5py.Dataset) -> list[_Chunk] | None:
    """The chunks of ``dset`` in row order, or None when this module cannot read it (h5py does)."""
    f = dset.file
    if (dset.ndim < 1 or dset.size == 0 or dset.dtype.kind not in "biuf" or f.driver != "sec2"
            or f.userblock_size != 0 or dset.is_virtual or dset.external):
        return None
    row_bytes = dset.dtype.itemsize * math.prod(dset.shape[1:])
    n = dset.shape[0]
    if dset.chunks is None:
        offset = dset.id.get_offset()
        if offset is None:  # never written: fill values
            return None
        step = max(1, _TASK_BYTES // max(row_bytes, 1))
        return [_Chunk(r, min(step, n - r), offset + r * row_bytes, min(step, n - r) * row_bytes, "raw")
                for r in range(0, n, step)]
    if tuple(dset.chunks[1:]) != tuple(dset.shape[1:]):
        return None
    pipeline = _pipeline(dset)
    k = dset.chunks[0]
    found: list[Any] = []
    if hasattr(dset.id, "chunk_iter"):
        dset.id.chunk_iter(found.append)
    else:  # older HDF5: one call per chunk
        found = [dset.id.get_chunk_info(i) for i in range(dset.id.get_num_chunks())]
    if len(found) != math.ceil(n / k):  # some chunk never written (fill values): let HDF5 fill it
        return None
    plan = []
    for info in sorted(found, key=lambda i: i.chunk_offset[0]):
        row = int(info.chunk_offset[0])
        plan.append(_Chunk(row, min(k, n - row), int(info.byte_offset), int(info.size),
                           _chunk_kind(pipeline, int(info.filter_mask))))
    return plan


def _pread_into(fd: int, view: memoryview, offset: int, path: str) -> None:
    """Fill ``view`` with the file's bytes at ``offset`` (short reads continued; EOF is an error)."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError(f"{path}: file ends inside a chunk at byte {offset + done}; the file is truncated")
        done += got


class _Scratch(threading.local):
    """Per-thread buffers reused across chunks (fresh memory costs a page fault per 4 KiB)."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, size: int) -> np.ndarray:
        buf = self.buffers.get(name)
        if buf is None or buf.size < size:
            buf = self.buffers[name] = np.empty(max(size, 1 << 20), np.uint8)
        return buf[:size]


_scratch = _Scratch()


def _read_chunks(fd: int, path: str, chunks: list[_Chunk], out: np.ndarray, chunk_rows: int) -> None:
    """Read and decode ``chunks`` (raw, blosc or deflate) into their rows of ``out``."""
    row_bytes = out.itemsize * math.prod(out.shape[1:])
    flat = out.reshape(out.shape[0], -1).view(np.uint8)
    full = chunk_rows * row_bytes
    for c in chunks:
        dest = flat[c.row:c.row + c.rows].reshape(-1)
        if c.kind == "raw":
            _pread_into(fd, memoryview(dest), c.offset, path)
            continue
        data = memoryview(_scratch.get("stored", c.size))
        _pread_into(fd, data, c.offset, path)
        if c.kind == "blosc":
            # Blosc 1 header: version, lz version, flags, typesize, nbytes, blocksize, cbytes (little-endian).
            # Checked before decoding: Blosc trusts it, and writes nbytes bytes at the destination.
            nbytes, cbytes = struct.unpack_from("<4xI4xI", data, 0) if c.size >= 16 else (-1, -1)
            if nbytes != full or cbytes != c.size:
                raise ValueError(f"{path}: the Blosc chunk at rows {c.row}.. is corrupt (header says {nbytes} bytes "
                                 f"from {cbytes}, expected {full} from {c.size}). Delete the file and rerun its stage.")
            if dest.size == full:
                blosc.decompress_ptr(data, dest.ctypes.data)
            else:  # the last chunk is stored whole, padded past the end of the dataset
                whole = _scratch.get("whole", full)
                blosc.decompress_ptr(data, whole.ctypes.data)
                dest[:] = whole[:dest.size]
        else:  # deflate
            raw = zlib.decompress(data, bufsize=full)
            if len(raw) != full:
                raise ValueError(f"{path}: the deflate chunk at rows {c.row}.. holds {len(raw)} bytes, not {full}")
            dest[:] = np.frombuffer(raw, np.uint8, count=dest.size)


def _tasks(plan: list[_Chunk]) -> list[list[_Chunk]]:
    """Consecutive chunks grouped into tasks of about ``_TASK_BYTES`` stored bytes."""
    tasks: list[list[_Chunk]] = []
    size = 0
    for c in plan:
        if not tasks or size + c.size > _TASK_BYTES:
            tasks.append([])
            size = 0
        tasks[-1].append(c)
        size += c.size
    return tasks


def decode_threads(threads: int = 0) -> int:
    """Threads for a chunk-decoding pool: ``threads``, or with 0 one per core (at most 16)."""
    return threads if threads > 0 else min(16, os.cpu_count() or 1)


def read_dataset(dset: h5py.Dataset, out: np.ndarray | None = None, pool: Executor | None = None) -> np.ndarray:
    """All of ``dset`` (exactly what ``dset[()]`` returns), chunks read and decoded in ``pool``'s threads.

    ``out`` (C-contiguous, ``dset``'s shape and dtype; e.g. a page-locked buffer) receives
    the data without an extra copy. Without ``pool`` the chunks are decoded in the
    calling thread. Datasets this module cannot read itself (not chunked along the first
    axis only, other drivers, unwritten chunks) are read by h5py.
    """
    if out is None:
        out = np.empty(dset.shape, dset.dtype)
    elif out.shape != dset.shape or out.dtype != dset.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out is {out.dtype} {out.shape} (contiguous: {out.flags.c_contiguous}); "
                         f"expected contiguous {dset.dtype} {dset.shape}")
    plan = _plan(dset)
    if plan is None:
        if dset.size:
            dset.read_direct(out)
        return out
    ours = [c for c in plan if c.kind != "h5py"]
    theirs = [c for c in plan if c.kind == "h5py"]
    chunk_rows = dset.chunks[0] if dset.chunks else 0
    path = dset.file.filename
    fd = os.open(path, os.O_RDONLY)
    try:
        tasks = _tasks(ours)
        futures = [] if pool is None else [pool.submit(_read_chunks, fd, path, t, out, chunk_rows) for t in tasks]
        try:
            if pool is None:
                for task in tasks:
                    _read_chunks(fd, path, task, out, chunk_rows)
            for c in theirs:  # filters only HDF5 decodes (lzf, shuffle, ...): serial, while the pool works
                sel = np.s_[c.row:c.row + c.rows]
                dset.read_direct(out, source_sel=sel, dest_sel=sel)
        finally:
            wait(futures)  # every task ends before the descriptor closes
        for fut in futures:
            fut.result()
    finally:
        os.close(fd)
    return out
