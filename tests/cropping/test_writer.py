"""The faces file's ``frames`` dataset written one storage chunk at a time, for every codec."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.cropping.params import CropParams
from pipeline.cropping.writer import FrameWriter
from pipeline.io.h5chunks import CODECS
from pipeline.io.h5io import atomic_h5


@pytest.mark.parametrize("codec", CODECS)
def test_chunks_read_back_as_written_including_a_partial_last_chunk(tmp_path: Path, codec: str) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (11, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "v.h5"
    with atomic_h5(path, "faces-v") as f:
        writer = FrameWriter(f, len(frames), 16, 3, CropParams(size=16, compression=codec, chunk_frames=4))
        assert writer.chunk == 4
        for start in range(0, len(frames), writer.chunk):
            crops = frames[start:start + writer.chunk]
            writer.write(start, crops, writer.encode(crops) if start % 8 == 0 else None)  # pre-encoded or not
    with h5py.File(path, "r") as f:
        assert f["frames"].chunks == (4, 16, 16, 3)
        assert np.array_equal(f["frames"][()], frames)


def test_chunk_length_is_capped_by_the_video_length(tmp_path: Path) -> None:
    with atomic_h5(tmp_path / "v.h5", "faces-v") as f:
        writer = FrameWriter(f, 3, 8, 1, CropParams(size=8))
        writer.write(0, np.ones((3, 8, 8, 1), np.uint8))
        assert writer.chunk == 3 and writer.encode(np.ones((2, 8, 8, 1), np.uint8)) is not None
