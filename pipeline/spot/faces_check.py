"""Lost-face check: where the face left the picture although crop kept its box.

Crop (``mode: fixed``) keeps the reference frame's box for every frame, so a face that leaves
the picture still yields crops. The crop stage's face detector runs on one crop every
``spot.face_check_every_s`` seconds (resized to ``spot.face_check_size`` pixels); runs of at
least ``spot.face_check_min_samples`` samples without a face become lost-face spans (from the
last sample with a face to the next one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import cv2
import h5py
import numpy as np
from tqdm.auto import tqdm

from pipeline.core.params import digest
from pipeline.cropping.params import CropParams
from pipeline.cropping.video import make_finder
from pipeline.io.atomic import write_json
from pipeline.io.h5io import file_digest
from pipeline.spot.params import SpotParams

MEMO = Path("spot") / "face_check.json"  # in the input's cache folder


def lost_face_spans(faces_path: Path, crop_section: Mapping[str, Any], every: int, size: int, min_samples: int
                    ) -> tuple[list[tuple[int, int]], dict[str, Any]]:
    """Spans of model-rate positions where the face is lost (see the module doc) and check statistics."""
    finder = make_finder(CropParams.from_params(crop_section))
    with h5py.File(faces_path, "r") as f:
        frames = f["frames"]
        n = int(frames.shape[0])
        positions = list(range(0, n, max(1, every)))
        if positions[-1] != n - 1:
            positions.append(n - 1)
        found = []
        for pos in tqdm(positions, desc="face check", unit="crop", leave=False):
            crop = frames[pos]
            img = crop[..., 0] if crop.shape[-1] == 1 else crop
            img = cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=cv2.INTER_LINEAR)
            found.append(bool(finder.detect(img)))
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(positions):
        if found[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(positions) and not found[j + 1]:
            j += 1
        if j - i + 1 >= min_samples:
            start = positions[i - 1] + 1 if i > 0 else 0
            end = positions[j + 1] - 1 if j + 1 < len(positions) else n - 1
            spans.append((start, end))
        i = j + 1
    stats = {"samples": len(positions), "without_face": int(len(found) - sum(found)), "every_frames": int(every),
             "crop_resized_to": int(size), "min_samples": int(min_samples)}
    return spans, stats


def cached_face_check(base: Path, faces_path: Path, crop_section: Mapping[str, Any], settings: SpotParams,
                      fps: float) -> tuple[list[tuple[int, int]], dict[str, Any], str]:
    """:func:`lost_face_spans`, remembered per faces file digest and settings in ``<cache>/spot/``."""
    every = max(1, int(round(settings.face_check_every_s * fps)))
    ident = {"faces": file_digest(faces_path), "every": every, "size": settings.face_check_size,
             "min_samples": settings.face_check_min_samples, "finder": dict(crop_section)}
    key = digest(ident)
    memo = base / MEMO
    if memo.is_file():
        try:
            data = json.loads(memo.read_text())
            if data.get("key") == key:
                return [tuple(s) for s in data["spans"]], data["stats"], "cached"
        except (OSError, ValueError, KeyError):
            pass
    spans, stats = lost_face_spans(faces_path, crop_section, every, settings.face_check_size,
                                   settings.face_check_min_samples)
    write_json(memo, {"key": key, "spans": [list(s) for s in spans], "stats": stats})
    return spans, stats, "computed"
