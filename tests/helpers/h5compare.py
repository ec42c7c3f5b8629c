"""Comparing the per-video HDF5 files two runs of a stage wrote: every dataset and attribute, not bytes."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

import pipeline.io.h5io  # noqa: F401  (registers the faces files' Blosc filter with HDF5)


def h5_files(folder: Path) -> list[str]:
    """Names of the complete per-video files of a stage folder (temporary files excluded)."""
    return sorted(p.name for p in folder.glob("*.h5")) if folder.is_dir() else []


def partials(folder: Path) -> list[str]:
    """Names of the temporary files (``.<video>.h5.<...>.partial``) left in a stage folder."""
    return sorted(p.name for p in folder.glob(".*.partial"))


def _close(x: np.ndarray, y: np.ndarray, rtol: float) -> bool:
    if rtol == 0:
        return bool(np.array_equal(x, y))
    scale = float(np.abs(y).max()) if y.size else 0.0
    return bool(np.allclose(x, y, rtol=0, atol=rtol * scale))


def _attrs(obj: h5py.HLObject) -> dict[str, object]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in obj.attrs.items()}


def h5_differences(a: Path, b: Path, rtol: float = 0.0) -> list[str]:
    """Differences between two per-video files: every dataset (dtype, shape, chunks, filter, values: equal,
    or within ``rtol`` of the largest magnitude when given) and every attribute (``m2es_digest``,
    ``m2es_params`` and the stage's own) of the file and its datasets."""
    diffs: list[str] = []
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names: list[str] = []
        fa.visit(lambda n: names.append(n) if isinstance(fa[n], h5py.Dataset) else None)
        other: list[str] = []
        fb.visit(lambda n: other.append(n) if isinstance(fb[n], h5py.Dataset) else None)
        if sorted(names) != sorted(other):
            diffs.append(f"datasets {sorted(names)} vs {sorted(other)}")
        for n in sorted(set(names) & set(other)):
            x, y = fa[n], fb[n]
            layout = [(d.dtype, d.shape, d.chunks, d.compression) for d in (x, y)]
            same = layout[0] == layout[1] and _close(x[()], y[()], rtol)
            if not same or _attrs(x) != _attrs(y):
                err = np.abs(x[()].astype(np.float64) - y[()]).max() if layout[0] == layout[1] else None
                diffs.append(f"dataset {n}: {layout[0]} vs {layout[1]}, values equal within rtol {rtol}: {same} "
                             f"(max abs difference {err})")
        ax, ay = _attrs(fa), _attrs(fb)
        for key in sorted(set(ax) | set(ay)):
            if ax.get(key) != ay.get(key):
                diffs.append(f"attribute {key}: {ax.get(key)!r} vs {ay.get(key)!r}")
    return diffs


def assert_same_outputs(folder: Path, reference: Path, context: str, rtol: float = 0.0,
                        n_files: int | None = None) -> None:
    """Same file names (``n_files`` of them in the reference, when given), and per file the same datasets,
    values and attributes (``m2es_digest`` included).

    Whole-file bytes are not compared: h5py writes no timestamps, but its LZF filter (the flow stage's
    default) does not always compress a chunk to the same bytes (seen: one chunk of a faces file
    one byte longer on a dask worker, with identical decompressed data).
    """
    names = h5_files(reference)
    assert n_files is None or len(names) == n_files, f"reference {reference} is incomplete: {names}"
    assert h5_files(folder) == names, f"{context}: files {h5_files(folder)} vs reference {names}"
    for name in names:
        diffs = h5_differences(folder / name, reference / name, rtol)
        assert not diffs, f"{context}: {name} differs from the reference run: {diffs}"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every complete file: a file rewritten by a rerun changes both."""
    return {n: ((folder / n).stat().st_ino, (folder / n).stat().st_mtime_ns) for n in h5_files(folder)}
