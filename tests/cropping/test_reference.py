"""The reference frame and the re-detections of track mode, on a scripted source and detector (no dlib)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cropping.finder import Detection
from pipeline.cropping.params import CropParams
from pipeline.cropping.reference import Reference, find_reference, track_candidates
from pipeline.errors import InputError, NoFaceFound
from pipeline.io.decode import BadFrameError

SHAPE = (100, 200)


class ScriptedSource:
    """Frames 0..n-1 of SHAPE whose first pixel is their position; ``bad`` positions fail to decode."""

    video = "v"

    def __init__(self, n: int, bad: tuple[int, ...] = ()) -> None:
        self.n, self.bad = n, set(bad)

    def __len__(self) -> int:
        return self.n

    def label(self, pos: int) -> str:
        return f"img_{pos + 1}.jpg"

    def read(self, pos: int) -> np.ndarray:
        if pos in self.bad:
            raise BadFrameError(f"{self.label(pos)}: cannot decode.", self.label(pos), pos)
        frame = np.zeros(SHAPE, np.uint8)
        frame[0, 0] = pos
        return frame


class ScriptedFinder:
    """Detections per frame position; landmarks: jaw along the rectangle's bottom, brows along its top."""

    def __init__(self, faces: dict[int, list[tuple[float, float, float, float]]]) -> None:
        self.faces = faces

    def detect(self, frame: np.ndarray) -> list[Detection]:
        dets = [Detection(rect, 1.0) for rect in self.faces.get(int(frame[0, 0]), [])]
        return sorted(dets, key=lambda d: d.area, reverse=True)

    def landmarks(self, frame: np.ndarray, det: Detection) -> np.ndarray:
        l, t, r, b = det.rect
        jaw = np.stack([np.linspace(l, r, 17), np.full(17, b)], axis=1)
        brows = np.stack([np.linspace(l, r, 10), np.full(10, t)], axis=1)
        rest = np.full((41, 2), ((l + r) / 2, (t + b) / 2))
        return np.concatenate([jaw, brows, rest]).astype(np.float32)


def test_first_frame_with_one_face_is_the_reference() -> None:
    finder = ScriptedFinder({0: [], 1: [(10, 10, 50, 50), (60, 10, 90, 40)], 2: [(20, 20, 60, 60)]})
    warnings: list[str] = []
    ref = find_reference(ScriptedSource(5), finder, CropParams(search_frames=5), warnings)
    assert isinstance(ref, Reference) and (ref.position, ref.shape, ref.n_faces) == (2, SHAPE, 1)
    assert ref.detection.rect == (20, 20, 60, 60) and ref.landmarks.shape == (68, 2) and warnings == []


def test_several_faces_everywhere_take_the_largest_with_a_warning() -> None:
    finder = ScriptedFinder({1: [(60, 10, 90, 40), (10, 10, 50, 50)], 2: [(0, 0, 5, 5), (9, 9, 20, 20)]})
    warnings: list[str] = []
    ref = find_reference(ScriptedSource(3), finder, CropParams(search_frames=3), warnings)
    assert (ref.position, ref.n_faces, ref.detection.rect) == (1, 2, (10, 10, 50, 50))
    assert warnings == ["2 faces in every searched frame with a face; using the largest, found in frame 1 (img_2.jpg)"]


def test_bad_frames_fail_or_are_skipped_and_no_face_names_the_frames() -> None:
    finder = ScriptedFinder({1: [(20, 20, 60, 60)]})
    with pytest.raises(InputError, match="img_1.jpg: cannot decode. Or set params.yaml: crop.on_bad_frame: repeat"):
        find_reference(ScriptedSource(4, bad=(0,)), finder, CropParams(), [])
    ref = find_reference(ScriptedSource(4, bad=(0,)), finder, CropParams(on_bad_frame="repeat"), [])
    assert ref.position == 1
    with pytest.raises(NoFaceFound, match=r"video v: no face found in frames 0..2 \(2 decoded; img_1.jpg .. img_3.jpg\)"):
        find_reference(ScriptedSource(8, bad=(1,)), ScriptedFinder({}), CropParams(search_frames=3,
                                                                                   on_bad_frame="repeat"), [])


def test_track_candidates_follow_the_face_nearest_the_last_box() -> None:
    near, far = (30, 20, 70, 60), (140, 20, 180, 60)
    finder = ScriptedFinder({0: [near], 2: [far, (34, 20, 74, 60)], 4: []})
    p = CropParams(track_every=2, margin_top=0, margin_bottom=0, margin_side=0)
    ref = find_reference(ScriptedSource(7), finder, p, [])
    ref_box = np.array([30.0, 20.0, 70.0, 60.0])
    keys, cands = track_candidates(ScriptedSource(7, bad=(6,)), finder, p, ref, ref_box)
    assert keys == [0, 2, 4, 6]
    assert cands[2] is None and cands[3] is None  # no face; bad frame
    assert cands[1] is not None and (cands[1][0] + cands[1][2]) / 2 == pytest.approx(54)  # the near face, not the far one
