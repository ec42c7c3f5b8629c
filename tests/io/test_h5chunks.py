"""Whole-chunk codecs and the threaded chunk reader (pipeline/io/h5chunks.py) against HDF5's own filters."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.io.h5chunks import CODECS, DEFAULT_LEVELS, ChunkCodec, _plan, _pread_into, read_dataset


def frames_and_flow(n: int = 21, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy smooth uint8 frames [n, size, size, 3] and float16 flow [n - 1, size, size, 2]."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, size)[None, :, None, None]
    frames = np.clip(ramp + rng.normal(0, 3, (n, size, size, 3)), 0, 255).astype(np.uint8)
    flow = (np.sin(np.arange(n - 1))[:, None, None, None] + rng.normal(0, 0.3, (n - 1, size, size, 2)))
    return frames, flow.astype(np.float16)


def write_chunked(path: Path, data: np.ndarray, rows: int, codec: ChunkCodec) -> None:
    """``data`` chunked ``rows`` along the first axis, as the crop stage writes it (direct chunk writes)."""
    with h5py.File(path, "w") as f:
        d = f.create_dataset("x", shape=data.shape, dtype=data.dtype, chunks=(rows,) + data.shape[1:],
                             **codec.dataset_options())
        if not codec.threaded:
            d[...] = data
            return
        for r in range(0, len(data), rows):
            whole = np.zeros((rows,) + data.shape[1:], data.dtype)
            whole[:len(data[r:r + rows])] = data[r:r + rows]
            d.id.write_direct_chunk((r,) + (0,) * (data.ndim - 1), codec.compress(whole))


def assert_reads_exactly(path: Path, expected: np.ndarray) -> None:
    """HDF5's own decoding, read_dataset alone and read_dataset with a pool all give ``expected``."""
    with h5py.File(path, "r") as f, ThreadPoolExecutor(3) as pool:
        d = f["x"]
        assert np.array_equal(d[()], expected)  # the chunk bytes are valid for the declared filter
        for got in (read_dataset(d), read_dataset(d, pool=pool)):
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert np.array_equal(got, expected)


@pytest.mark.parametrize("name", CODECS)
def test_every_codec_roundtrips_through_hdf5_and_the_chunk_reader(tmp_path: Path, name: str) -> None:
    frames, flow = frames_and_flow()
    for label, data, rows in (("frames", frames, 4), ("flow", flow, 1)):  # 21 frames: a partial last chunk
        path = tmp_path / f"{label}.h5"
        write_chunked(path, data, rows, ChunkCodec(name))
        assert_reads_exactly(path, data)
        with h5py.File(path, "r") as f:
            plan = _plan(f["x"])
            kinds = {c.kind for c in plan}
        expected = {"blosc-lz4": {"blosc"}, "blosc-zstd": {"blosc"}, "gzip": {"deflate"}, "none": {"raw"}}
        if name in expected:  # decoded by the module itself, not handed back to h5py
            assert kinds == expected[name], (label, kinds)


def test_codec_levels_and_blosc_is_smaller_than_raw() -> None:
    frames, _ = frames_and_flow(n=8, size=32)
    assert ChunkCodec("blosc-lz4").level == DEFAULT_LEVELS["blosc-lz4"] == 9
    assert ChunkCodec("gzip").level == 1 and ChunkCodec("gzip", 6).level == 6
    assert len(ChunkCodec("blosc-lz4").compress(frames)) < frames.nbytes
    assert len(ChunkCodec("blosc-zstd").compress(frames)) < len(ChunkCodec("blosc-lz4").compress(frames))
    with pytest.raises(ValueError, match="not one of"):
        ChunkCodec("zip")
    with pytest.raises(ValueError, match="0..9"):
        ChunkCodec("gzip", 10)
    with pytest.raises(ValueError, match="applied by h5py"):
        ChunkCodec("lzf").compress(frames)


def test_lzf_chunks_stored_raw_are_read_directly_the_others_by_h5py(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)  # noise: lzf gives up, stores raw
    data[4:8] = 7  # compressible: stored lzf-compressed
    write_chunked(tmp_path / "lzf.h5", data, 4, ChunkCodec("lzf"))
    with h5py.File(tmp_path / "lzf.h5", "r") as f:
        kinds = [c.kind for c in _plan(f["x"])]
    assert kinds == ["raw", "h5py", "raw"]
    assert_reads_exactly(tmp_path / "lzf.h5", data)


def test_layouts_the_module_does_not_decode_fall_back_to_h5py(tmp_path: Path) -> None:
    frames, _ = frames_and_flow()
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("contiguous", data=frames)
        f.create_dataset("tiles", data=frames, chunks=(4, 8, 8, 3))  # chunks split a frame
        f.create_dataset("shuffled", data=frames, chunks=(4,) + frames.shape[1:], shuffle=True, compression="gzip")
        sparse = f.create_dataset("sparse", shape=frames.shape, dtype=np.uint8, chunks=(4,) + frames.shape[1:])
        sparse[:4] = frames[:4]  # other chunks never written: fill value 0
        f.create_dataset("empty", shape=(0, 16, 16, 3), dtype=np.uint8, maxshape=(None, 16, 16, 3),
                         chunks=(4, 16, 16, 3))
    expected_sparse = np.zeros_like(frames)
    expected_sparse[:4] = frames[:4]
    with h5py.File(tmp_path / "x.h5", "r") as f, ThreadPoolExecutor(2) as pool:
        assert [c.kind for c in _plan(f["contiguous"])] == ["raw"]  # one pread of the whole extent
        assert _plan(f["tiles"]) is None and _plan(f["sparse"]) is None
        assert {c.kind for c in _plan(f["shuffled"])} == {"h5py"}
        for name, expected in (("contiguous", frames), ("tiles", frames), ("shuffled", frames),
                               ("sparse", expected_sparse), ("empty", np.zeros((0, 16, 16, 3), np.uint8))):
            assert np.array_equal(read_dataset(f[name], pool=pool), expected), name


def test_reads_into_a_given_buffer_and_refuses_a_wrong_one(tmp_path: Path) -> None:
    frames, _ = frames_and_flow()
    write_chunked(tmp_path / "b.h5", frames, 4, ChunkCodec("blosc-lz4"))
    out = np.full(frames.shape, 255, np.uint8)
    with h5py.File(tmp_path / "b.h5", "r") as f:
        assert read_dataset(f["x"], out=out) is out and np.array_equal(out, frames)
        with pytest.raises(ValueError, match="expected contiguous uint8"):
            read_dataset(f["x"], out=np.empty(frames.shape, np.float32))
        with pytest.raises(ValueError, match="expected contiguous"):
            read_dataset(f["x"], out=np.empty(frames.shape[::-1], np.uint8).T)


def test_a_corrupt_or_truncated_chunk_is_an_error_naming_the_file(tmp_path: Path) -> None:
    frames, _ = frames_and_flow()
    path = tmp_path / "c.h5"
    write_chunked(path, frames, 4, ChunkCodec("blosc-lz4"))
    with h5py.File(path, "r") as f:
        last = _plan(f["x"])[-1]
    raw = bytearray(path.read_bytes())
    raw[last.offset + 4:last.offset + 8] = (10 ** 9).to_bytes(4, "little")  # header: a huge uncompressed size
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(raw))
    with h5py.File(bad, "r") as f, pytest.raises(ValueError, match=r"bad\.h5: the Blosc chunk at rows 20.. is corrupt"):
        read_dataset(f["x"])
    short = tmp_path / "short.bin"  # HDF5 refuses to open a truncated file; a short read is caught too
    short.write_bytes(b"x" * 10)
    fd = os.open(short, os.O_RDONLY)
    try:
        with pytest.raises(OSError, match=r"short\.bin: file ends inside a chunk at byte 10"):
            _pread_into(fd, memoryview(np.empty(16, np.uint8)), 0, str(short))
    finally:
        os.close(fd)
