"""Oracle datasets for the learning chain: resample tables and features files that encode the truth.

:func:`write_oracle_dataset` writes what the ``train`` and ``evaluate`` stages read, in the
real schemas, under ``data/<name>/``:

* ``resample/videos.csv``, ``resample/annotations.csv``, ``resample/frames.csv``
  (:mod:`pipeline.io.tables`);
* ``features/<video>.h5`` through the features stage's own writer
  (:func:`pipeline.extract.writer.write_features`: ``rgb`` and ``flow`` float32 [N, D],
  provenance attrs, ``m2es_digest``, ``m2es_complete``), with N = (T - 1 - clip) // stride + 1
  as the features stage computes it.

The features are an oracle: a few channels of each stream follow a smooth indicator of the
macro (channel 0) and micro (channel 1) intervals, 1 inside an interval and 0 away from it
with a ``ramp``-frame smoothstep across each boundary (0.5 exactly on the boundary), the
rest are zeros, and Gaussian noise of ``noise`` is added everywhere. Feature step ``i`` is
evaluated at frame ``i * stride + 0.5``, the middle of the two frames the train stage's
windows assign it (:mod:`pipeline.learning.windows`). A model that learns anything learns
this; one that does not is broken somewhere between the labels and the F1.

The interval schedule (:func:`sample_intervals`) is seeded and free of overlaps: ``macro``
and ``micro`` intervals per video with spans (``offset - onset``, frames at 30 fps) drawn
uniformly from ``macro_span`` and ``micro_span``, at least ``gap`` frames apart and from the
video's ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.extract.extractor import VideoFeatures
from pipeline.extract.params import FeaturesParams
from pipeline.extract.reader import VideoProbe
from pipeline.extract.writer import video_digest, write_features
from pipeline.io.tables import ANNOTATION_COLUMNS, FRAME_COLUMNS, VIDEO_COLUMNS, write_table

log = logging.getLogger(__name__)

#: the oracle channel of each type, in both streams
CHANNEL = {"macro": 0, "micro": 1}


@dataclass(frozen=True)
class OracleSpec:
    """Size and content of an oracle dataset (defaults: 3 subjects x 2 videos x 20 s at 30 fps)."""

    n_subjects: int = 3
    videos_per_subject: int = 2
    n_frames: int = 600
    fps: int = 30
    macro: int = 3                          # intervals per video
    micro: int = 3
    macro_span: tuple[int, int] = (30, 90)  # offset - onset, frames, both ends inclusive
    micro_span: tuple[int, int] = (9, 14)
    gap: int = 12                           # frames between intervals and from the video's ends
    dim: int = 16                           # features per stream
    ramp: float = 4.0                       # frames of the smoothstep across a boundary
    noise: float = 0.1                      # Gaussian noise sigma on every channel
    clip: int = 8                           # features params the files record (the stage's defaults)
    stride: int = 2
    seed: int = 0

    @property
    def n_steps(self) -> int:
        """Feature steps per video, as the features stage counts clips."""
        return (self.n_frames - 1 - self.clip) // self.stride + 1


def sample_intervals(spec: OracleSpec, rng: np.random.Generator) -> list[tuple[int, int, str]]:
    """Non-overlapping (onset, offset, type) of one video, sorted by onset: the intervals in a random
    order, ``gap`` frames apart and from the ends, the spare frames spread at random between them."""
    lengths = [(int(rng.integers(spec.macro_span[0], spec.macro_span[1] + 1)), "macro") for _ in range(spec.macro)]
    lengths += [(int(rng.integers(spec.micro_span[0], spec.micro_span[1] + 1)), "micro") for _ in range(spec.micro)]
    need = sum(n + 1 for n, _ in lengths) + spec.gap * (len(lengths) + 1)
    if need > spec.n_frames:
        raise ValueError(f"oracle: {len(lengths)} intervals need {need} frames, the video has {spec.n_frames}.")
    cuts = np.sort(rng.integers(0, spec.n_frames - need + 1, size=len(lengths)))
    out, at, used = [], spec.gap, 0
    for k, i in enumerate(rng.permutation(len(lengths))):
        span, kind = lengths[i]
        at += int(cuts[k]) - used
        used = int(cuts[k])
        out.append((at, at + span, kind))
        at += span + 1 + spec.gap
    return out


def indicator(frames: np.ndarray, onset: int, offset: int, ramp: float) -> np.ndarray:
    """Smooth indicator of the inclusive interval [onset, offset] at ``frames``: 1 inside, 0 outside,
    a smoothstep of width ``ramp`` centred on each boundary (onset - 0.5, offset + 0.5)."""
    def step(x: np.ndarray) -> np.ndarray:
        t = np.clip(x / ramp + 0.5, 0.0, 1.0)
        return t * t * (3 - 2 * t)

    return np.minimum(step(frames - (onset - 0.5)), step((offset + 0.5) - frames))


def oracle_features(spec: OracleSpec, intervals: list[tuple[int, int, str]],
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``rgb`` and ``flow`` float32 [n_steps, dim] of one video encoding ``intervals``."""
    frames = np.arange(spec.n_steps, dtype=np.float64) * spec.stride + 0.5
    out = {}
    for stream in ("rgb", "flow"):
        arr = np.zeros((spec.n_steps, spec.dim))
        for onset, offset, kind in intervals:
            ch = CHANNEL[kind]
            arr[:, ch] = np.maximum(arr[:, ch], indicator(frames, onset, offset, spec.ramp))
        arr += rng.normal(0.0, spec.noise, size=arr.shape)
        out[stream] = arr.astype(np.float32)
    return out


def _features_params(spec: OracleSpec) -> FeaturesParams:
    return FeaturesParams.from_params({"allow_random_init": True, "clip": spec.clip, "stride": spec.stride,
                                       "input_size": 64, "device": "cpu"})


def write_oracle_dataset(root: Path, name: str, spec: OracleSpec = OracleSpec()) -> pd.DataFrame:
    """Write ``data/<name>/resample/*.csv`` and ``data/<name>/features/*.h5`` under ``root``;
    returns the annotations table (the ground truth)."""
    rng = np.random.default_rng(spec.seed)
    res = Path(root) / "data" / name / "resample"
    feat_dir = Path(root) / "data" / name / "features"
    cfg = _features_params(spec)
    provenance: dict[str, Any] = {
        "backbone": "i3d", "dim": spec.dim, "dim_concat": 2 * spec.dim, "streams": ["rgb", "flow"],
        "clip": spec.clip, "stride": spec.stride, "input_size": 64, "flow_bound": 15.0, "precision": "fp32",
        "channels_last": False, "fuse": False, "space_to_depth": False, "compile": False, "device": "cpu",
        "weights_rgb": "oracle", "weights_flow": "oracle", "weights_rgb_path": "", "weights_flow_path": ""}
    videos, annotations, frames = [], [], []
    for s in range(spec.n_subjects):
        subject = f"s{s + 1}"
        for v in range(spec.videos_per_subject):
            video = f"{subject}_v{v + 1}"
            videos.append((video, subject, spec.fps, spec.n_frames, f"data/raw/{name}/{video}", "frames", 1,
                           spec.fps))
            frames += [(video, i, i + 1, f"data/raw/{name}/{video}/img_{i + 1}.jpg") for i in range(spec.n_frames)]
            intervals = sample_intervals(spec, rng)
            annotations += [(video, subject, on, (on + off) // 2, off, kind, on + 1, (on + off) // 2 + 1, off + 1)
                            for on, off, kind in intervals]
            probe = VideoProbe(video=video, faces=Path(f"{video}.faces.h5"), flow=Path(f"{video}.flow.h5"),
                               n_frames=spec.n_frames, height=64, width=64, channels=3,
                               faces_digest=f"oracle-faces-{video}", flow_digest=f"oracle-flow-{video}")
            feats = oracle_features(spec, intervals, rng)
            write_features(feat_dir / f"{video}.h5", VideoFeatures(probe=probe, features=feats),
                           video_digest(cfg, probe, {"rgb": "oracle", "flow": "oracle"}), cfg, provenance)
    write_table(pd.DataFrame(videos, columns=VIDEO_COLUMNS + ["source_fps"]), res / "videos.csv")
    ann = pd.DataFrame(annotations, columns=ANNOTATION_COLUMNS)
    write_table(ann, res / "annotations.csv")
    write_table(pd.DataFrame(frames, columns=FRAME_COLUMNS), res / "frames.csv")
    log.info("oracle dataset %s: %d videos, %d macro and %d micro intervals, %d feature steps per video",
             name, len(videos), int((ann["type"] == "macro").sum()), int((ann["type"] == "micro").sum()),
             spec.n_steps)
    return ann


#: the ``train`` recipe keys of params.yaml: null, so that the model preset's recipe is what trains
RECIPE_KEYS = ("lr", "weight_decay", "batch_size", "epochs", "warmup_epochs", "schedule", "reg_weight",
               "micro_weight", "predict_from_epoch")


def run_learning_chain(workspace: Any, model_preset: str, spec: OracleSpec = OracleSpec(), name: str = "oracle",
                       seed: int = 0, input_norm: bool = False, ensemble: bool = False) -> dict[str, Any]:
    """Write an oracle dataset ``name`` into ``workspace`` (``tests/conftest.py``'s Workspace, the
    current directory), then run the real ``train`` and ``evaluate`` stages on it with the model
    preset ``model_preset`` and its own recipe (every recipe key of params.yaml ``train`` null),
    on the CPU, LOSO folds only (no final model). Returns ``data/<name>/evaluate/details.json`` (every
    figure; ``metrics/<name>.json`` holds only the headline: overall F1 and the baseline's).

    ``input_norm`` False runs the preset without its ``model.input_norm`` block (the workspace
    gets a copy of the preset without it): the oracle's signal is one channel per type at
    1 among noise channels of sigma 0.1, a scale per-channel standardisation would undo
    by making every noise channel as large as the signal (a harder task, not the chain under
    test; docs/learning_chain.md). ``ensemble`` False runs one IAENet per model instead of the
    preset's ``model.ensemble`` (half the CI time; the members' averaging and its checkpoint are
    tested in tests/models/test_iaenet.py)."""
    import json

    import yaml

    from pipeline.learning.presets import load_model_preset

    if not (input_norm and ensemble):
        preset = load_model_preset(model_preset)
        if not input_norm:
            preset["model"].pop("input_norm", None)
        if not ensemble:
            preset["model"].pop("ensemble", None)
        (workspace.root / "configs").mkdir(exist_ok=True)
        (workspace.root / "configs" / f"{model_preset}.yaml").write_text(yaml.safe_dump(preset, sort_keys=False))
    workspace.preset(name, layout="generic", root=f"data/raw/{name}", model_preset=model_preset,
                     source_fps=spec.fps, target_fps=spec.fps, color=True)
    workspace.set_params("train", device="cpu", seed=seed, model_preset=None, folds=None, final_model=False,
                         fold_workers=1, **{k: None for k in RECIPE_KEYS})
    write_oracle_dataset(workspace.root, name, spec)
    workspace.run("train", name)
    workspace.run("evaluate", name)
    return json.loads((workspace.root / "data" / name / "evaluate" / "details.json").read_text())


def cross_fold(doc: dict[str, Any], counting: str = "one-to-one") -> dict[str, dict[str, Any]]:
    """The cross-fold protocol's counts per type (``macro``, ``micro``, ``overall``) of a details document."""
    block = doc[counting]["cross-fold"]
    return {t: block[t] for t in ("macro", "micro", "overall")}
