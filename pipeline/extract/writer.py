"""The features stage's outputs: one features file per video, its digest, and ``skipped.csv``.

* :func:`video_digest`: the identity a video's features file carries (``m2es_digest``):
  the features params (:meth:`~pipeline.extract.params.FeaturesParams.identity`), both
  inputs' digests, the weights' SHA-256 (:func:`weights_identity`) and VERSION (and, for
  backbone roi_flow, ROI_VERSION; roi_flow loads no weights: its identity is ``none``);
* :func:`write_features`: ``rgb`` and ``flow`` float32 [N, D] plus provenance attrs, atomically;
* :func:`write_skipped`: ``skipped.csv`` (video, n_frames, reason), the videos too short
  for one clip, which later stages read to know they were left out on purpose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from models.weights import RANDOM_INIT, sha256_file

from pipeline.core.params import digest
from pipeline.errors import ConfigError
from pipeline.extract.extractor import VideoFeatures
from pipeline.extract.params import NO_WEIGHTS, ROI_FLOW, ROI_VERSION, STREAMS, VERSION, FeaturesParams
from pipeline.extract.reader import VideoProbe
from pipeline.io.h5io import atomic_h5, write_attrs
from pipeline.io.tables import write_table

SKIPPED_FILE = "skipped.csv"
SKIPPED_COLUMNS = ["video", "n_frames", "reason"]


def video_digest(cfg: FeaturesParams, probe: VideoProbe, weights: Mapping[str, str]) -> str:
    """Identity of one output: features params, both inputs' digests, the weights' SHA-256, code version
    (roi_flow: also its own ROI_VERSION; the networks' digests are unchanged by it)."""
    ident = {"stage": cfg.identity(), "inputs": {"faces": probe.faces_digest, "flow": probe.flow_digest},
             "weights": dict(weights), "version": VERSION}
    if cfg.backbone == ROI_FLOW:
        ident["roi_version"] = ROI_VERSION
    return digest(ident)


def weights_identity(cfg: FeaturesParams) -> dict[str, str]:
    """SHA-256 of each stream's weights file, or ``random-init:<seed>`` (before loading models);
    ``none`` for both streams of backbone roi_flow, which loads no weights (``features.weights`` is ignored)."""
    if cfg.backbone == ROI_FLOW:
        return {stream: NO_WEIGHTS for stream in STREAMS}
    out = {}
    for stream in STREAMS:
        path = cfg.weights_path(stream)
        if path and Path(path).is_file():
            out[stream] = sha256_file(path)
        elif path:
            raise ConfigError(f"{path}: weights file for the {stream} stream not found (features.weights.{stream}). "
                              "Download it or fix the path.")
        else:
            out[stream] = f"{RANDOM_INIT}:{cfg.seed + STREAMS.index(stream)}"
    return out


def write_features(path: Path, result: VideoFeatures, video_digest_: str, cfg: FeaturesParams,
                   provenance: Mapping[str, Any]) -> None:
    """Write one video's features file atomically (``rgb``, ``flow`` float32 [N, D] + attrs)."""
    with atomic_h5(path, video_digest_, cfg.identity()) as f:
        for stream, arr in result.features.items():
            f.create_dataset(stream, data=arr.astype(np.float32, copy=False))
        write_attrs(f, dict(provenance))
        write_attrs(f, {"video": result.probe.video, "n_frames": result.probe.n_frames,
                        "n_clips": int(next(iter(result.features.values())).shape[0]),
                        "faces_digest": result.probe.faces_digest, "flow_digest": result.probe.flow_digest})


def too_short(probe: VideoProbe, clip: int) -> dict[str, Any]:
    """The ``skipped.csv`` row of a video with no clip (fewer than ``clip + 1`` frames)."""
    reason = f"{probe.n_frames} frames, fewer than clip + 1 = {clip + 1}: no clip"
    return {"video": probe.video, "n_frames": probe.n_frames, "reason": reason}


def write_skipped(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``skipped.csv`` in ``out_dir`` (one row per video left out, possibly none); returns its path."""
    path = Path(out_dir) / SKIPPED_FILE
    write_table(pd.DataFrame(list(rows), columns=SKIPPED_COLUMNS), path)
    return path
