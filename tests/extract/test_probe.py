"""The features stage's checks of its inputs without reading pixels: :func:`pipeline.io.artifacts.check_faces`,
:func:`~pipeline.io.artifacts.check_flow` and :func:`pipeline.extract.reader.probe_video` on top of them."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.extract.reader import probe_video
from pipeline.io.artifacts import check_faces, check_flow
from pipeline.io.h5io import atomic_h5


def h5(path: Path, name: str, array: np.ndarray, complete: bool = True) -> Path:
    """A per-video file holding ``array`` as ``name`` (complete, with a digest, or a bare unflagged file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if complete:
        with atomic_h5(path, f"{name}-{array.shape}") as f:
            f.create_dataset(name, data=array)
    else:
        with h5py.File(path, "w") as f:
            f.create_dataset(name, data=array)
    return path


def test_faces_and_flow_give_their_shapes_and_digests(tmp_path: Path) -> None:
    faces = h5(tmp_path / "faces.h5", "frames", np.zeros((5, 6, 7, 1), np.uint8))
    flow = h5(tmp_path / "flow.h5", "flow", np.zeros((4, 6, 7, 2), np.float16))
    assert check_faces(faces, "v") == ((5, 6, 7, 1), "frames-(5, 6, 7, 1)")
    assert check_flow(flow, "v") == ((4, 6, 7, 2), "flow-(4, 6, 7, 2)")
    probe = probe_video("v", faces, flow)
    assert (probe.n_frames, probe.height, probe.width, probe.channels) == (5, 6, 7, 1)
    assert (probe.faces_digest, probe.flow_digest) == ("frames-(5, 6, 7, 1)", "flow-(4, 6, 7, 2)")


FACES = np.zeros((5, 6, 6, 3), np.uint8)
FLOW = np.zeros((4, 6, 6, 2), np.float16)


@pytest.mark.parametrize("check,stored,complete,match", [
    # (the checker, (dataset name, array) written to the file or None for no file, complete flag, message)
    (check_faces, None, True, r"crop output for video 'v' not found\. Run `dvc repro crop`"),
    (check_faces, ("frames", FACES), False,
     r"incomplete or unreadable crop output for video 'v'\. Delete it and rerun the crop stage"),
    (check_faces, ("boxes", np.zeros((5, 4), np.int32)), True, r"no 'frames' dataset for video 'v'\. Rerun the crop stage"),
    (check_faces, ("frames", FACES.astype(np.float32)), True,
     r"'frames' of video 'v' is float32 \(5, 6, 6, 3\); expected uint8"),
    (check_faces, ("frames", FACES[..., :2]), True, r"'frames' of video 'v' is uint8 \(5, 6, 6, 2\); expected uint8"),
    (check_flow, None, True, r"flow output for video 'v' not found\. Run `dvc repro flow`"),
    (check_flow, ("flow", FLOW), False,
     r"incomplete or unreadable flow output for video 'v'\. Delete it and rerun the flow stage"),
    (check_flow, ("fields", FLOW), True, r"no 'flow' dataset for video 'v'\. Rerun the flow stage"),
    (check_flow, ("flow", np.zeros((4, 6, 6, 3), np.float16)), True,
     r"'flow' of video 'v' has shape \(4, 6, 6, 3\); expected \[T-1, H, W, 2\]"),
], ids=["faces-missing", "faces-incomplete", "faces-no-dataset", "faces-float", "faces-two-channels",
        "flow-missing", "flow-incomplete", "flow-no-dataset", "flow-three-components"])
def test_bad_input_files_are_named_with_the_fix(tmp_path: Path, check, stored, complete: bool, match: str) -> None:
    path = tmp_path / "input.h5"
    if stored is not None:
        h5(path, *stored, complete=complete)
    with pytest.raises(InputError, match=match):
        check(path, "v")
