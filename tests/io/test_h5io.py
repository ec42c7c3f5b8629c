"""Atomic HDF5 writes, completeness and attributes (pipeline/io/h5io.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from pipeline.core.runner import VideoTask, pending
from pipeline.io.h5io import (COMPLETE_ATTR, DIGEST_ATTR, EarlyWriteback, atomic_h5, file_digest, is_complete,
                              read_attr_json, remove_partials, remove_stale, write_attrs)


def test_complete_file_round_trip(tmp_path):
    path = tmp_path / "sub" / "v.h5"
    with atomic_h5(path, "abc", {"size": 224, "nested": {"a": [1, 2]}}) as f:
        f.create_dataset("x", data=np.arange(6))
        write_attrs(f, {"video": "v", "box": [1, 2, 3, 4], "meta": {"k": "v"}, "none": None, "names": ["a", "b"]})
    assert is_complete(path, "abc") and not is_complete(path, "abd") and file_digest(path) == "abc"
    with h5py.File(path, "r") as f:
        assert f["x"][:].tolist() == list(range(6))
        assert read_attr_json(f, "video") == "v"
        assert read_attr_json(f, "box") == [1, 2, 3, 4]
        assert read_attr_json(f, "meta") == {"k": "v"}
        assert read_attr_json(f, "none") is None
        assert read_attr_json(f, "names") == ["a", "b"]
        assert read_attr_json(f, "m2es_params") == {"nested": {"a": [1, 2]}, "size": 224}
        assert read_attr_json(f, "missing", 7) == 7
    assert [p.name for p in path.parent.iterdir()] == ["v.h5"]


def test_exception_inside_leaves_previous_file_untouched(tmp_path):
    path = tmp_path / "v.h5"
    with atomic_h5(path, "old") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(RuntimeError):
        with atomic_h5(path, "new") as f:
            f.create_dataset("x", data=[2])
            raise RuntimeError("stop")
    assert file_digest(path) == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["v.h5"]


def test_killed_writer_never_leaves_the_final_name(tmp_path):
    path = tmp_path / "v.h5"
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from pipeline.errors import M2esError
        from pipeline.io.h5io import atomic_h5
        with atomic_h5({str(path)!r}, "d") as f:
            f.create_dataset("x", data=np.zeros((64, 64)))
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9
    assert not path.exists()
    partials = list(tmp_path.glob(".v.h5.*.partial"))
    assert len(partials) == 1 and file_digest(partials[0]) is None     # never flagged complete
    todo, done = pending([VideoTask("v", path, "d")])
    assert len(todo) == 1 and not done
    assert remove_partials(tmp_path) == 1 and not list(tmp_path.iterdir())
    assert remove_partials(tmp_path / "absent") == 0


def test_incomplete_or_corrupt_files_are_not_complete(tmp_path):
    flagless = tmp_path / "flagless.h5"
    with h5py.File(flagless, "w") as f:
        f.attrs[DIGEST_ATTR] = "d"
    unfinished = tmp_path / "unfinished.h5"
    with h5py.File(unfinished, "w") as f:
        f.attrs[DIGEST_ATTR] = "d"
        f.attrs[COMPLETE_ATTR] = False
    corrupt = tmp_path / "corrupt.h5"
    with atomic_h5(corrupt, "d") as f:
        f.create_dataset("x", data=np.zeros(1000))
    corrupt.write_bytes(corrupt.read_bytes()[:300])           # truncated after the fact
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5")
    for p in (flagless, unfinished, corrupt, garbage, tmp_path / "missing.h5"):
        assert file_digest(p) is None, p.name
        assert not is_complete(p, "d")


def test_disk_full_while_writing_leaves_no_complete_file(tmp_path):
    """A write that runs out of space (a real file-size limit, EFBIG like ENOSPC) leaves nothing final."""
    out = tmp_path / "v.h5"
    script = textwrap.dedent(f"""
        import resource, signal
        import numpy as np
        from pipeline.errors import M2esError
        from pipeline.io.h5io import atomic_h5
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # get an OSError instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
        try:
            with atomic_h5({str(out)!r}, "d") as f:
                f.create_dataset("x", data=np.random.default_rng(0).random((1024, 1024)))
        except M2esError as exc:
            print(exc)
            raise SystemExit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "v.h5: the disk is full" in proc.stdout and "rerun to resume" in proc.stdout
    assert not out.exists()
    assert not is_complete(out, "d")
    assert list(tmp_path.iterdir()) == []   # the temporary file was removed too


def test_remove_stale_keeps_listed_videos_only(tmp_path):
    for name in ("a", "b", "c"):
        with atomic_h5(tmp_path / f"{name}.h5", "d") as f:
            f["x"] = np.arange(3)
    (tmp_path / ".b.h5.1234abcd.partial").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("kept")
    assert remove_stale(tmp_path, {"a", "c"}) == ["b.h5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "c.h5", "notes.txt"]
    assert remove_stale(tmp_path / "missing", {"a"}) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_early_writeback_starts_every_n_bytes_and_changes_nothing(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (12, 256, 256), np.uint8)  # 12 x 64 KiB
    with atomic_h5(tmp_path / "v.h5", "d1") as f:
        dset = f.create_dataset("x", shape=data.shape, dtype=np.uint8, chunks=(1, 256, 256))
        wb = EarlyWriteback(f, every=4 * 65536)
        assert wb.active
        for i in range(len(data)):
            dset[i] = data[i]
            wb.wrote(data[i].nbytes)
        # a real descriptor: each start succeeded (a wrong one fails the call and turns it off)
        assert wb.calls == 3 and wb.active and wb.pending == 0
    with h5py.File(tmp_path / "v.h5") as f:
        assert np.array_equal(f["x"][()], data)
    assert is_complete(tmp_path / "v.h5", "d1")


def test_early_writeback_is_off_without_a_file_descriptor(tmp_path):
    with h5py.File(tmp_path / "mem.h5", "w", driver="core", backing_store=False) as f:
        wb = EarlyWriteback(f, every=1)
        assert not wb.active
        f["x"] = np.arange(10)
        wb.wrote(80)
        assert wb.calls == 0
