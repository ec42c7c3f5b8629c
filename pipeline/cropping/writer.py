"""Storing the crops: the ``frames`` dataset of a faces file, written one whole storage chunk at a time."""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

from pipeline.cropping.params import CropParams
from pipeline.io.decode import BadFrameError
from pipeline.io.h5chunks import ChunkCodec
from pipeline.io.h5io import EarlyWriteback


class FrameWriter:
    """Creates ``frames`` and stores it one whole storage chunk at a time.

    Blosc and gzip chunks are compressed by :meth:`encode`, which releases the GIL and so
    runs in the decode threads, and stored with HDF5's direct chunk write (no filter runs
    in h5py); ``lzf`` and ``none`` go through h5py's own write. The disk writes start as
    the chunks come (:class:`~pipeline.io.h5io.EarlyWriteback`), not all at the final fsync.
    """

    def __init__(self, f: h5py.File, n: int, size: int, channels: int, p: CropParams) -> None:
        self.codec = ChunkCodec(p.compression, p.compression_level)
        self.chunk = min(p.chunk_frames, n)
        self.dset = f.create_dataset("frames", shape=(n, size, size, channels), dtype=np.uint8,
                                     chunks=(self.chunk, size, size, channels), track_times=False,
                                     **self.codec.dataset_options())
        self.writeback = EarlyWriteback(f)

    def encode(self, crops: np.ndarray) -> bytes | None:
        """The stored bytes of one chunk's crops (None for codecs h5py applies itself); thread-safe."""
        if not self.codec.threaded:
            return None
        if len(crops) < self.chunk:  # a direct chunk write needs a whole chunk
            whole = np.zeros((self.chunk,) + crops.shape[1:], dtype=np.uint8)
            whole[:len(crops)] = crops
            crops = whole
        return self.codec.compress(crops)

    def write(self, start: int, crops: np.ndarray, encoded: bytes | None = None) -> None:
        """Store the chunk that begins at frame ``start`` (``encoded``: :meth:`encode`'s result, if known)."""
        if self.codec.threaded:
            encoded = encoded if encoded is not None else self.encode(crops)
            self.dset.id.write_direct_chunk((start, 0, 0, 0), encoded)
            self.writeback.wrote(len(encoded))
        else:
            self.dset[start:start + len(crops)] = crops
            self.writeback.wrote(crops.nbytes)


@dataclass
class CropChunk:
    """One storage chunk's crops as a decode thread left them."""

    crops: np.ndarray
    bad: list[tuple[int, BadFrameError]]  # (index in the chunk, error)
    mixed: int
    encoded: bytes | None  # None when a frame was bad (repeats are filled in order) or h5py compresses
