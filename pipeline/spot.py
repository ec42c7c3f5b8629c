"""``m2es spot``: spot macro- and micro-expressions in new videos with a trained IAENet.

::

    m2es spot VIDEO_OR_FRAME_FOLDER... --model RUN_OR_CHECKPOINT [--out DIR] [options]

An input is a video file (anything decord/FFmpeg decodes: mp4, avi, mov, mkv, ...) or a
folder of frame images (``--fps`` required; numbered files as the ingest stage reads
them), at any frame rate and of any length. ``--model`` is a training run folder
(``data/<ds>/runs``: its ``final/model.pt``, trained on every subject), a run's
sub-folder, or a checkpoint file.

How it works: the input goes through the pipeline's own stage functions, not copies.
Per input, a cache folder ``<spot.cache_dir>/<key>/`` is built (key: SHA-256 of the
input's bytes, for folders of every frame file's name and bytes), holding a link to the
input under a fixed name plus an empty generic-layout ``annotations.csv``; then
:func:`pipeline.ingest.run` (generic door), :func:`pipeline.resample.run` (to the model's
frame rate, the pipeline's ``floor(j * src / tgt)`` rule), :func:`pipeline.crop.run`,
:func:`pipeline.flow.run` and :func:`pipeline.features.run` run with a
:class:`~pipeline.core.stage.StageContext` whose data root is the cache and whose crop, flow
and features params are the ones the model's training features were made with. The
stages' per-video digests make a second run on the same input skip crop, flow and
features (``steps`` in the JSON says ``cached`` or ``computed`` for each, from the output
file's inode and mtime). IAENet inference is :func:`pipeline.learning.postprocess.predict_video`;
thresholds are applied with :func:`pipeline.scoring.protocols.apply_thresholds`; positions go
back to the input's frame numbers through :func:`pipeline.io.tables.to_source_frames`.

Where the model's feature recipe comes from (first that exists):

1. the checkpoint's ``params`` (``crop``, ``flow``, ``features`` sections and
   ``target_fps``/``color``, when the train stage records them);
2. the dataset folder of the run (``data/<ds>/{faces,flow,features}``: the params stored
   in the files the model was trained on, checked against the checkpoint's
   ``features_digest``; fps and colour from the faces files);
3. ``--dataset NAME``: ``params.yaml`` with that preset's overrides.

The checkpoint's feature provenance (backbone, weights SHA-256 per stream, clip, stride,
input size, flow bound, feature width) must match what spot would compute, or spot stops
with exit code 4 before any heavy work, saying which ``--weights-rgb``/``--weights-flow``
file (``features.weights.*``) to pass.

Thresholds: ``--threshold-macro``/``--threshold-micro`` win; else ``--thresholds FILE``;
else the evaluate stage's ``thresholds.json`` of the run (``data/<ds>/evaluate/``, the
cross-fold protocol's choice on all subjects' out-of-fold predictions); else
``params.yaml: spot.thresholds``, and the JSON and the log say so.

Outputs, in ``--out DIR/<name>/`` (default ``spot_out/<name>/``, ``<name>`` the input's
file stem or folder name):

* ``intervals.csv``: video, type, onset, apex, offset (frame numbers of the input: the
  0-based decode index for video files, the folder's own numbers for frame folders;
  offsets are the last input frame the interval covers, via ``to_source_frames(...,
  end=True)``), onset_s, apex_s, offset_s, score. Seconds count from the first frame:
  ``onset_s = (onset - first) / fps`` and ``offset_s = (offset - first + 1) / fps`` (the end
  of the last frame), so ``[onset_s, offset_s)`` is the interval's time span. The apex is
  an estimate: IAENet predicts intervals, not apexes, so the apex is the interval's centre
  (at the model's frame rate, then mapped like an onset).
* ``intervals.json``: the same intervals plus the input, model, thresholds (and where they
  came from), lost-face spans, notes and cache steps;
* ``timeline.png``: scores of all candidate intervals over time, the thresholds, the kept
  intervals, lost-face spans (and ``--ground-truth`` intervals when given);
* with ``--annotate``: ``annotated.mp4``, a copy of the video with the face box, the
  detected intervals and lost-face spans drawn on it (OpenCV ``VideoWriter``).

Lost face: crop (``mode: fixed``) keeps the reference frame's box for every frame, so a
face that leaves the picture still yields crops. Spot runs the crop stage's dlib face
detector on one crop every ``spot.face_check_every_s`` seconds (resized to
``spot.face_check_size`` pixels); runs of at least ``spot.face_check_min_samples`` samples
without a face become lost-face spans (from the last sample with a face to the next one),
reported in the JSON and excluded: predictions overlapping them are dropped.

Exit codes (scripts can rely on them):

* ``0``: every input spotted, outputs written (a lost-face span is not an error);
* ``1``: unexpected internal error (a bug; the traceback is logged);
* ``2``: bad input or usage: unreadable or truncated video, frame folder without
  ``--fps`` or with gaps, an input too short for one feature clip, an input slower than the
  model's frame rate, an output or cache folder that cannot be written, bad options;
* ``3``: no face found in the input;
* ``4``: model problem: not a readable m2es checkpoint, no recoverable feature recipe, or a
  feature backbone / weights / clip geometry that does not match the features spot would
  feed it.

With several inputs every input is tried; the exit code is that of the first input that
failed (model and usage errors stop at once).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import sys
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.errors import ConfigError, InputError, M2esError, StageFailed
from pipeline.io.h5io import file_digest, read_attr_json
from pipeline.core.params import PRESET_DIR, deep_merge, digest, load_dataset, load_params, stage_params
from pipeline.core.paths import DataPaths
from pipeline.core.runner import ParallelConfig
from pipeline.core.stage import StageContext, setup_logging
from pipeline.io.tables import TYPES, read_frames, read_videos, to_source_frames

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BUG = 1
EXIT_INPUT = 2
EXIT_NO_FACE = 3
EXIT_MODEL = 4

VIDEO_NAME = "video"  # the input's name inside its cache (file names never depend on the user's paths)
LINKED_VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov")
CSV_COLUMNS = ["video", "type", "onset", "apex", "offset", "onset_s", "apex_s", "offset_s", "score"]
HEAVY_STEPS = ("crop", "flow", "features")

#: The ``spot`` params section's defaults (used for keys params.yaml lacks).
SPOT_DEFAULTS: dict[str, Any] = {
    "cache_dir": "data/spot",
    "out_dir": "spot_out",
    "device": "auto",
    "thresholds": {"macro": 0.5, "micro": 0.5},
    "face_check_every_s": 0.5,
    "face_check_size": 200,
    "face_check_min_samples": 2,
    "fps_tolerance": 0.01,
    "batch_size": 256,
    "hash_chunk_mb": 8,
    "annotate_codec": "mp4v",
}
#: What the ingest stage needs when params.yaml is not at hand.
INGEST_DEFAULTS: dict[str, Any] = {"decode_sample": 3, "image_extensions": [".jpg", ".jpeg", ".png", ".bmp"]}


# ------------------------------------------------------------------------------- errors

class SpotError(M2esError):
    """A user-fixable problem with one input or the options; ``exit_code`` is the CLI's."""

    exit_code = EXIT_INPUT


class NoFaceError(SpotError):
    """The face detector found no face in the input."""

    exit_code = EXIT_NO_FACE


class ModelMismatch(SpotError):
    """The model cannot be used on the features spot would compute (or is not a model)."""

    exit_code = EXIT_MODEL


def exit_code_of(exc: BaseException) -> int:
    """The documented exit code of an exception (1 for anything unexpected)."""
    if isinstance(exc, SpotError):
        return exc.exit_code
    if isinstance(exc, M2esError):
        return EXIT_INPUT
    return EXIT_BUG


# ------------------------------------------------------------------------------- settings

@dataclass
class SpotSettings:
    """The ``spot`` params section merged with the command line."""

    cache_dir: Path
    out_dir: Path
    device: str
    thresholds: dict[str, float]
    face_check_every_s: float
    face_check_size: int
    face_check_min_samples: int
    fps_tolerance: float
    batch_size: int
    hash_chunk_mb: int
    annotate_codec: str

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "SpotSettings":
        """Validate ``params.yaml: spot`` (missing keys take :data:`SPOT_DEFAULTS`)."""
        s = deep_merge(SPOT_DEFAULTS, dict(section or {}))
        unknown = sorted(set(s) - set(SPOT_DEFAULTS))
        if unknown:
            raise ConfigError(f"params.yaml: spot has unknown key(s) {', '.join(unknown)}. Known keys: "
                              f"{', '.join(SPOT_DEFAULTS)}.")
        try:
            thresholds = {t: float(s["thresholds"][t]) for t in TYPES}
            out = cls(cache_dir=Path(str(s["cache_dir"])), out_dir=Path(str(s["out_dir"])), device=str(s["device"]),
                      thresholds=thresholds, face_check_every_s=float(s["face_check_every_s"]),
                      face_check_size=int(s["face_check_size"]),
                      face_check_min_samples=int(s["face_check_min_samples"]),
                      fps_tolerance=float(s["fps_tolerance"]), batch_size=int(s["batch_size"]),
                      hash_chunk_mb=int(s["hash_chunk_mb"]), annotate_codec=str(s["annotate_codec"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"params.yaml: spot section malformed ({exc}); see the spot section of the "
                              "repository's params.yaml.") from None
        if out.face_check_every_s <= 0 or out.face_check_size < 32 or out.face_check_min_samples < 1:
            raise ConfigError("params.yaml: spot.face_check_every_s must be > 0, face_check_size >= 32 and "
                              "face_check_min_samples >= 1.")
        if not 0 <= out.fps_tolerance < 0.5 or out.batch_size < 1 or out.hash_chunk_mb < 1:
            raise ConfigError("params.yaml: spot.fps_tolerance must be in [0, 0.5), batch_size and hash_chunk_mb >= 1.")
        if len(out.annotate_codec) != 4:
            raise ConfigError(f"params.yaml: spot.annotate_codec '{out.annotate_codec}' must be a FourCC such as mp4v.")
        return out


# ------------------------------------------------------------------------------- inputs

@dataclass
class SpotInput:
    """One input as given on the command line."""

    path: Path
    kind: str            # file | frames
    name: str
    fps: float
    key: str = ""

    @property
    def label(self) -> str:
        """How messages name the input."""
        return str(self.path)


def probe_input(arg: str, fps: float | None) -> SpotInput:
    """Check that ``arg`` exists and find its kind and frame rate (``fps`` overrides a file's own)."""
    path = Path(arg).expanduser()
    if not path.exists():
        raise SpotError(f"{path}: no such file or folder. Give a video file or a folder of frame images.")
    if fps is not None and not fps > 0:
        raise SpotError(f"--fps {fps}: must be positive.")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name if path.is_dir() else path.stem) or "input"
    if path.is_dir():
        if fps is None:
            raise SpotError(f"{path}: a frame folder has no frame rate; pass --fps (e.g. --fps 200 for SAMM-LV, "
                            "--fps 30 for CAS(ME)^2).")
        return SpotInput(path.resolve(), "frames", name, float(fps))
    if not os.access(path, os.R_OK):
        raise SpotError(f"{path}: not readable (permission denied). Fix its permissions or copy it.")
    try:
        import decord

        reader = decord.VideoReader(str(path))
        n, own_fps = len(reader), float(reader.get_avg_fps())
        del reader
    except Exception as exc:  # noqa: BLE001 - decord raises its own error types for broken files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpotError(f"{path}: cannot be read as a video ({first}). The file is unreadable or truncated: "
                        "re-encode it (ffmpeg -i IN -c:v libx264 OUT.mp4) or extract its frames into a folder "
                        "and pass the folder with --fps.") from None
    if n == 0:
        raise SpotError(f"{path}: the video has no frames. Replace the file.")
    if fps is None:
        if not own_fps > 0 or not math.isfinite(own_fps):
            raise SpotError(f"{path}: the file records no frame rate; pass --fps.")
        fps = own_fps
    return SpotInput(path.resolve(), "file", name, float(fps))


def content_key(inp: SpotInput, extensions: Sequence[str], chunk_mb: int = 8) -> str:
    """SHA-256 of the input's content: a file's bytes; a folder's frame files' names, sizes and bytes.

    Streams every byte (size and mtime are not enough: a re-encoded file can keep both).
    """
    from pipeline.layouts.common import list_frames

    h = hashlib.sha256()
    chunk = chunk_mb << 20

    def feed(path: str | Path) -> None:
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)

    try:
        if inp.kind == "file":
            h.update(b"file\0")
            feed(inp.path)
        else:
            h.update(b"frames\0")
            _, paths, sizes = list_frames(inp.path, tuple(extensions), inp.name)
            for p, size in tqdm(list(zip(paths, sizes)), desc=f"hash {inp.name}", unit="frame", leave=False):
                h.update(f"{Path(p).name}\0{int(size)}\0".encode())
                feed(p)
    except InputError as exc:
        raise SpotError(str(exc)) from None
    except OSError as exc:
        raise SpotError(f"{inp.path}: cannot be read ({exc.strerror or exc}). Check the file and its "
                        "permissions.") from None
    return h.hexdigest()[:24]


def ensure_writable(folder: Path, what: str, flag: str) -> Path:
    """Create ``folder`` if needed and check that a file can be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".m2es-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SpotError(f"{folder}: the {what} folder cannot be written ({exc.strerror or exc}). "
                        f"Pass a writable folder with {flag}.") from None
    return folder


def prepare_cache(inp: SpotInput, cache_root: Path) -> tuple[Path, Path]:
    """The input's cache folder and raw folder: a fixed-name link to the input + an empty annotations.csv."""
    base = ensure_writable(cache_root / inp.key, "cache", "--cache-dir")
    raw = base / "raw"
    raw.mkdir(exist_ok=True)
    if inp.kind == "file":
        ext = inp.path.suffix.lower() if inp.path.suffix.lower() in LINKED_VIDEO_EXTENSIONS else ".mp4"
        link = raw / f"{VIDEO_NAME}{ext}"
    else:
        link = raw / VIDEO_NAME
    for old in raw.iterdir():  # a previous run of the same content may have used another extension
        if old.name != link.name and old.name != "annotations.csv":
            old.unlink()
    if not (link.is_symlink() and Path(os.readlink(link)) == inp.path):
        tmp = raw / f".{link.name}.{uuid.uuid4().hex[:8]}"
        os.symlink(inp.path, tmp, target_is_directory=inp.kind == "frames")
        os.replace(tmp, link)
    ann = raw / "annotations.csv"
    if not ann.is_file():
        ann.write_text("video,subject,onset,apex,offset,type\n")
    return base, raw


# ------------------------------------------------------------------------------- the model

@dataclass
class Recipe:
    """How the model's training features were made: stage params, frame rate, colour."""

    crop: dict[str, Any]
    flow: dict[str, Any]
    features: dict[str, Any]
    target_fps: float
    color: bool | None
    source: str


@dataclass
class SpotModel:
    """A loaded model with everything needed to feed it."""

    path: Path
    model: Any
    blob: dict[str, Any]
    recipe: Recipe
    thresholds: dict[str, float]
    threshold_source: str
    threshold_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def preset(self) -> dict[str, Any]:
        """The resolved IAENet preset stored in the checkpoint."""
        return self.blob["preset"]

    @property
    def provenance(self) -> dict[str, Any]:
        """Feature provenance stored in the checkpoint."""
        return dict(self.blob.get("provenance") or {})


def resolve_checkpoint(arg: str) -> Path:
    """``model.pt`` of ``arg``: the file itself, ``arg/model.pt`` or ``arg/final/model.pt``."""
    path = Path(arg).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for cand in (path / "model.pt", path / "final" / "model.pt"):
            if cand.is_file():
                return cand
        raise SpotError(f"{path}: no model.pt here nor in {path / 'final'}. Pass a training run folder "
                        "(data/<ds>/runs, holding final/model.pt) or a checkpoint file.")
    raise SpotError(f"{path}: no such model file or run folder. Train one first (dvc repro train@<dataset>) "
                    "and pass data/<ds>/runs.")


def run_dir_of(checkpoint: Path) -> Path:
    """The training run folder (``data/<ds>/runs``) a checkpoint lies in."""
    parent = checkpoint.resolve().parent
    if parent.name == "final" or parent.name.startswith("fold_"):
        return parent.parent
    return parent


def _h5_params(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``m2es_params``, other attrs) of a pipeline HDF5 file."""
    with h5py.File(path, "r") as f:
        params = read_attr_json(f, "m2es_params", {}) or {}
        attrs = {k: read_attr_json(f, k) for k in f.attrs if k != "m2es_params"}
    return dict(params), attrs


def recipe_from_checkpoint(blob: Mapping[str, Any]) -> Recipe | None:
    """The recipe recorded in the checkpoint's params, if the train stage recorded one."""
    params = dict(blob.get("params") or {})
    rec = dict(params.get("pipeline") or params)
    if not all(isinstance(rec.get(k), Mapping) for k in ("crop", "flow", "features")):
        return None
    fps = rec.get("target_fps") or rec.get("fps")
    if fps is None:
        return None
    color = rec.get("color")
    return Recipe(dict(rec["crop"]), dict(rec["flow"]), dict(rec["features"]), float(fps),
                  None if color is None else bool(color), "checkpoint params")


def recipe_from_dataset_folder(checkpoint: Path, provenance: Mapping[str, Any]) -> Recipe | None:
    """The recipe stored in the faces/flow/features files of the run's dataset folder, if present."""
    ds = run_dir_of(checkpoint).parent
    feat_dir, faces_dir, flow_dir = ds / "features", ds / "faces", ds / "flow"
    files = sorted(feat_dir.glob("*.h5")) if feat_dir.is_dir() else []
    if not files:
        return None
    digests = []
    chosen: Path | None = None
    for path in files:
        d = file_digest(path)
        if d is None:
            continue
        with h5py.File(path, "r") as f:
            n = int(f["rgb"].shape[0]) if "rgb" in f else 0
        if n == 0:
            continue
        digests.append(f"{path.stem}:{d}")
        if chosen is None and (faces_dir / path.name).is_file() and (flow_dir / path.name).is_file():
            chosen = path
    if chosen is None:
        return None
    want = provenance.get("features_digest")
    if want is not None and digest(sorted(digests)) != want:
        log.warning("%s: these features are not exactly the ones the model in %s was trained on (features digest "
                    "differs); the crop/flow/features params read from them may differ from the model's.",
                    feat_dir, checkpoint)
    feat_params, _ = _h5_params(chosen)
    crop_params, faces_attrs = _h5_params(faces_dir / chosen.name)
    flow_params, _ = _h5_params(flow_dir / chosen.name)
    if not (feat_params and crop_params and flow_params) or faces_attrs.get("fps") is None:
        return None
    channels = faces_attrs.get("channels")
    return Recipe(crop_params, flow_params, feat_params, float(faces_attrs["fps"]),
                  None if channels is None else int(channels) == 3, f"files of {ds}")


def recipe_from_params(params: Mapping[str, Any], dataset: str, preset_dir: str | Path = PRESET_DIR) -> Recipe:
    """The recipe of dataset preset ``dataset`` in ``params`` (params.yaml with the preset's overrides)."""
    preset = load_dataset(dataset, preset_dir)
    fps = preset.get("target_fps") or stage_params(params, "resample", preset).get("target_fps")
    if fps is None:
        raise ConfigError(f"configs/datasets/{dataset}.yaml: no target_fps (nor params.yaml resample.target_fps).")
    color = preset.get("color")
    return Recipe(stage_params(params, "crop", preset), stage_params(params, "flow", preset),
                  stage_params(params, "features", preset), float(fps), None if color is None else bool(color),
                  f"params.yaml + preset {dataset}")


def feature_config(recipe: Recipe, provenance: Mapping[str, Any], weights: Mapping[str, str | None],
                   device: str) -> dict[str, Any]:
    """The features params section spot runs with: the recipe, weights found or given, the device."""
    from models.weights import RANDOM_INIT

    section = dict(recipe.features)
    given = dict(section.pop("weights", None) or {})
    for key in ("weights_rgb", "weights_flow"):
        if key in section:
            given.setdefault(key.split("_", 1)[1], section.pop(key))
    out_weights: dict[str, str | None] = {}
    for stream in ("rgb", "flow"):
        path = weights.get(stream) or given.get(stream)
        recorded = provenance.get(f"weights_{stream}_path")
        if not path and recorded and Path(str(recorded)).is_file():
            path = str(recorded)
        out_weights[stream] = str(path) if path else None
        if provenance.get(f"weights_{stream}") == RANDOM_INIT and not out_weights[stream]:
            section["allow_random_init"] = True
    section["weights"] = out_weights
    section["device"] = device
    return section


def check_feature_recipe(section: Mapping[str, Any], provenance: Mapping[str, Any], in_dim: int,
                         checkpoint: Path) -> None:
    """Refuse (:class:`ModelMismatch`) features that would differ from the model's training features."""
    from models.weights import RANDOM_INIT

    from pipeline.features import FeatureConfig, weights_identity

    try:
        cfg = FeatureConfig.from_params(section, where="spot: features (from the model's recipe)")
    except ConfigError as exc:
        raise ModelMismatch(f"{checkpoint}: the model's features recipe is not usable here: {exc}") from None
    problems: list[str] = []
    trained = provenance.get("backbone")
    if trained and trained != cfg.backbone:
        problems.append(f"backbone: the model was trained on {trained} features but this run would compute "
                        f"{cfg.backbone} features")
    for key in ("clip", "stride", "input_size", "flow_bound"):
        if key in provenance and provenance[key] is not None and float(provenance[key]) != float(getattr(cfg, key)):
            problems.append(f"features.{key}: model trained with {provenance[key]}, this run {getattr(cfg, key)}")
    if problems:
        raise ModelMismatch(f"{checkpoint}: " + "; ".join(problems) + ". " + _needs(provenance))
    try:
        have = weights_identity(cfg)
    except ConfigError as exc:
        raise ModelMismatch(f"{checkpoint}: {exc}") from None
    for stream in ("rgb", "flow"):
        want = provenance.get(f"weights_{stream}")
        if want is None:
            continue
        if want == RANDOM_INIT:
            seed = provenance.get(f"seed_{stream}")
            ok = have[stream].startswith(RANDOM_INIT) and (seed is None or have[stream] == f"{RANDOM_INIT}:{seed}")
            if not ok:
                problems.append(f"{stream} stream: the model was trained on random-init {cfg.backbone} features "
                                f"(seed {seed}) but this run would use {_describe(have[stream])}; pass no "
                                f"--weights-{stream} and keep features.seed")
        elif have[stream] != want:
            recorded = provenance.get(f"weights_{stream}_path") or "its weights file"
            problems.append(f"{stream} stream: the model was trained on {cfg.backbone} {stream} features from "
                            f"weights with SHA-256 {want} ({recorded}) but this run would use "
                            f"{_describe(have[stream])}; pass --weights-{stream} FILE (features.weights.{stream}) "
                            "with that file")
    if problems:
        raise ModelMismatch(f"{checkpoint}: " + "; ".join(problems) + ".")
    width = provenance.get("feature_width") or provenance.get("dim_concat")
    if width is not None and int(width) != int(in_dim):
        raise ModelMismatch(f"{checkpoint}: the model takes {in_dim}-wide features but its provenance records "
                            f"{width}-wide ones; the checkpoint is inconsistent. Retrain it.")


def _needs(provenance: Mapping[str, Any]) -> str:
    """What the model needs, as an instruction (backbone, per-stream weights and where they were)."""
    from models.weights import RANDOM_INIT

    parts = []
    for stream in ("rgb", "flow"):
        want = provenance.get(f"weights_{stream}")
        if want == RANDOM_INIT:
            parts.append(f"{stream}: random-init (seed {provenance.get(f'seed_{stream}')})")
        elif want:
            where = provenance.get(f"weights_{stream}_path") or "an unrecorded path"
            parts.append(f"{stream}: SHA-256 {want} (trained from {where})")
    backbone = provenance.get("backbone", "?")
    return (f"The model needs {backbone} features with weights {'; '.join(parts) or 'unrecorded'}: set "
            f"features.backbone: {backbone} (params.yaml, or the --dataset preset's overrides) and pass those "
            "files with --weights-rgb/--weights-flow (features.weights.rgb/flow).")


def _describe(identity: str) -> str:
    from models.weights import RANDOM_INIT

    if identity.startswith(RANDOM_INIT):
        return f"random-init weights (seed {identity.split(':', 1)[1]}) because no weights file was given"
    return f"weights with SHA-256 {identity}"


def find_thresholds(checkpoint: Path, explicit_file: str | None, macro: float | None, micro: float | None,
                    defaults: Mapping[str, float]) -> tuple[dict[str, float], str, dict[str, Any]]:
    """(thresholds, where they came from, file metadata): CLI values > --thresholds > the run's evaluate > params."""
    from pipeline.scoring.protocols import load_thresholds

    meta: dict[str, Any] = {}
    base: dict[str, float] | None = None
    source = ""
    path = Path(explicit_file) if explicit_file else run_dir_of(checkpoint).parent / "evaluate" / "thresholds.json"
    if explicit_file or path.is_file():
        try:
            choice = load_thresholds(path)
        except InputError as exc:
            raise SpotError(str(exc)) from None
        base, source = dict(choice.thresholds), str(path)
        meta = {"epoch": choice.epoch}
        try:
            meta.update({k: v for k, v in json.loads(path.read_text()).items() if k not in ("thresholds", "epoch")})
        except (OSError, ValueError):
            pass
    if base is None:
        base, source = {t: float(defaults[t]) for t in TYPES}, "params.yaml spot.thresholds (default)"
        if macro is None or micro is None:
            log.warning("no thresholds.json for %s (looked for %s): using the default thresholds %s from "
                        "params.yaml spot.thresholds; pass --thresholds or --threshold-macro/--threshold-micro to "
                        "choose.", checkpoint, path, base)
    given = {"macro": macro, "micro": micro}
    for t, v in given.items():
        if v is not None:
            if not 0.0 <= v <= 1.0:
                raise SpotError(f"--threshold-{t} {v}: scores are in [0, 1]; pass a value in that range.")
            base[t] = float(v)
    if all(v is not None for v in given.values()):
        source, meta = "command line", {}
    elif any(v is not None for v in given.values()):
        source += " + command line"
    return base, source, meta


def load_model(checkpoint: Path, device: str, dataset: str | None, params: Mapping[str, Any],
               weights: Mapping[str, str | None], settings: SpotSettings, thresholds_file: str | None,
               macro: float | None, micro: float | None) -> SpotModel:
    """Load and check the model: checkpoint, feature recipe, weights, thresholds."""
    from models.iaenet import load_checkpoint

    from pipeline.core.device import resolve_device

    dev = resolve_device(device)
    try:
        model, blob = load_checkpoint(checkpoint, dev)
    except M2esError as exc:
        raise ModelMismatch(str(exc)) from None
    prov = dict(blob.get("provenance") or {})
    if dataset:
        recipe = recipe_from_params(params, dataset)
    else:
        recipe = recipe_from_checkpoint(blob) or recipe_from_dataset_folder(checkpoint, prov)
    if recipe is None:
        raise ModelMismatch(
            f"{checkpoint}: the checkpoint records no crop/flow/features params and no dataset folder with the "
            f"features it was trained on lies next to it ({run_dir_of(checkpoint).parent}). Pass --dataset NAME "
            "(the preset it was trained on) to take them from params.yaml.")
    if recipe.source.startswith("files of"):  # the files hold what changes results; take speed knobs from params
        speed = {k: v for k, v in (params.get("features") or {}).items()
                 if k in ("batch_size", "prefetch", "read_workers")}
        recipe.features = {**recipe.features, **speed}
    log.info("model %s: preset %s, %d-wide %s features at %g fps (recipe from %s)", checkpoint,
             blob["preset"].get("name"), blob["in_dim"], prov.get("backbone", "?"), recipe.target_fps, recipe.source)
    recipe.features = feature_config(recipe, prov, weights, device)
    recipe.flow = dict(recipe.flow, device=device)
    check_feature_recipe(recipe.features, prov, int(blob["in_dim"]), checkpoint)
    thresholds, source, meta = find_thresholds(checkpoint, thresholds_file, macro, micro, settings.thresholds)
    return SpotModel(checkpoint, model, blob, recipe, thresholds, source, meta)


# ------------------------------------------------------------------------------- running the stages

def _state(path: Path) -> tuple[int, int] | None:
    """(inode, mtime_ns) of a file, or None when absent."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _contexts(inp: SpotInput, model: SpotModel, cache_root: Path, raw: Path, params: Mapping[str, Any],
              fps_tolerance: float) -> dict[str, StageContext]:
    """One StageContext per stage, all on the input's cache folder."""
    recipe = model.recipe
    src, tgt = inp.fps, recipe.target_fps
    if src < tgt:
        # 29.97 fps for a 30 fps model: used frame for frame (within spot.fps_tolerance)
        if src >= tgt * (1 - fps_tolerance):
            tgt = src
        else:
            raise SpotError(f"{inp.label}: {src:g} fps is below the model's {recipe.target_fps:g} fps; the pipeline "
                            "only drops frames. Use a model trained at or below this rate, or pass the true rate "
                            "with --fps if the file's is wrong.")
    preset = {"name": inp.key, "layout": "generic", "root": str(raw), "annotation_file": "annotations.csv",
              "source_fps": src, "target_fps": tgt}
    if recipe.color is not None:
        preset["color"] = bool(recipe.color)
    ingest = deep_merge(INGEST_DEFAULTS, params.get("ingest") or {})
    ingest.update(include_unannotated=True, invalid_intervals="skip")
    full = {"ingest": ingest, "resample": {"target_fps": tgt, "max_duration_s": None},
            "crop": recipe.crop, "flow": recipe.flow, "features": recipe.features}
    paths = DataPaths(inp.key, cache_root)
    par = ParallelConfig(backend="sequential", n_jobs=1)
    return {stage: StageContext(stage=stage, dataset=preset, params=full, paths=paths, parallel=par)
            for stage in ("ingest", "resample", *HEAVY_STEPS)}


def _run_stage(stage: str, ctx: StageContext, inp: SpotInput) -> None:
    """Run one pipeline stage on the input; turn its failure into the right SpotError."""
    import importlib

    module = importlib.import_module(f"pipeline.{stage}")
    try:
        module.run(ctx)
    except StageFailed as exc:
        reason = "; ".join(exc.failures.values())
        if stage == "crop" and "NoFaceFound" in exc.kinds.values():
            raise NoFaceError(f"{inp.label}: no face found. {reason}") from None
        raise SpotError(f"{inp.label}: {stage} failed: {reason}") from None
    except M2esError as exc:
        raise SpotError(f"{inp.label}: {stage}: {exc}") from None


def run_pipeline(inp: SpotInput, model: SpotModel, cache_root: Path, raw: Path, params: Mapping[str, Any],
                 fps_tolerance: float, bar: tqdm) -> tuple[dict[str, StageContext], dict[str, str]]:
    """Ingest, resample, crop, flow and features of one input into its cache; returns (contexts, steps)."""
    ctxs = _contexts(inp, model, cache_root, raw, params, fps_tolerance)
    steps: dict[str, str] = {}
    for stage in ("ingest", "resample"):
        bar.set_postfix_str(stage)
        _run_stage(stage, ctxs[stage], inp)
        steps[stage] = "ran"
        bar.update(1)
    paths = ctxs["crop"].paths
    videos = read_videos(paths.resample / "videos.csv")
    n = int(videos["n_frames"].iloc[0])
    clip = int(model.recipe.features.get("clip", 8))
    if n < clip + 1:
        raise SpotError(f"{inp.label}: too short: {n} frame(s) at {float(videos['fps'].iloc[0]):g} fps after "
                        f"resampling, but one feature clip needs {clip + 1} ({(clip + 1) / model.recipe.target_fps:.2f}"
                        " s). Give a longer video.")
    outputs = {"crop": paths.h5(paths.faces, VIDEO_NAME), "flow": paths.h5(paths.flow, VIDEO_NAME),
               "features": paths.h5(paths.features, VIDEO_NAME)}
    for stage in HEAVY_STEPS:
        bar.set_postfix_str(stage)
        before = _state(outputs[stage])
        _run_stage(stage, ctxs[stage], inp)
        after = _state(outputs[stage])
        if after is None:
            raise SpotError(f"{inp.label}: {stage} wrote no output ({outputs[stage]}); see the log above.")
        steps[stage] = "cached" if before is not None and before == after else "computed"
        log.info("%s: %s %s", inp.name, stage, steps[stage])
        bar.update(1)
    return ctxs, steps


# ------------------------------------------------------------------------------- lost face

def lost_face_spans(faces_path: Path, crop_section: Mapping[str, Any], every: int, size: int, min_samples: int
                    ) -> tuple[list[tuple[int, int]], dict[str, Any]]:
    """Spans of model-rate positions where the face is lost (see the module doc) and check statistics."""
    import cv2

    from pipeline.crop import CropParams, make_finder

    finder = make_finder(CropParams.from_section(crop_section))
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


def cached_face_check(base: Path, faces_path: Path, crop_section: Mapping[str, Any], settings: SpotSettings,
                      fps: float) -> tuple[list[tuple[int, int]], dict[str, Any], str]:
    """:func:`lost_face_spans`, remembered per faces file digest and settings in ``<cache>/spot/``."""
    every = max(1, int(round(settings.face_check_every_s * fps)))
    ident = {"faces": file_digest(faces_path), "every": every, "size": settings.face_check_size,
             "min_samples": settings.face_check_min_samples, "finder": dict(crop_section)}
    key = digest(ident)
    memo = base / "spot" / "face_check.json"
    if memo.is_file():
        try:
            data = json.loads(memo.read_text())
            if data.get("key") == key:
                return [tuple(s) for s in data["spans"]], data["stats"], "cached"
        except (OSError, ValueError, KeyError):
            pass
    spans, stats = lost_face_spans(faces_path, crop_section, every, settings.face_check_size,
                                   settings.face_check_min_samples)
    from pipeline.scoring.report import write_json

    write_json(memo, {"key": key, "spans": [list(s) for s in spans], "stats": stats})
    return spans, stats, "computed"


# ------------------------------------------------------------------------------- spotting

@dataclass
class SpotResult:
    """What spotting one input produced."""

    input: SpotInput
    out_dir: Path
    intervals: pd.DataFrame
    candidates: pd.DataFrame
    lost_spans: pd.DataFrame
    steps: dict[str, str]
    doc: dict[str, Any]


def _overlaps(onset: np.ndarray, offset: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """True where an inclusive interval overlaps any inclusive span."""
    hit = np.zeros(len(onset), dtype=bool)
    for a, b in spans:
        hit |= (onset <= b) & (offset >= a)
    return hit


def to_input_frames(pred: pd.DataFrame, frames: pd.DataFrame, last_frame: int, first_frame: int, fps: float
                    ) -> pd.DataFrame:
    """Model-rate positions -> the input's frame numbers and seconds (module doc: onset, apex, offset)."""
    if pred.empty:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in ("onset", "apex", "offset", "onset_s", "apex_s",
                                                                  "offset_s")})
    onset = np.asarray(to_source_frames(frames, VIDEO_NAME, pred["onset"].to_numpy()), dtype=np.int64)
    offset = np.asarray(to_source_frames(frames, VIDEO_NAME, pred["offset"].to_numpy(), end=True), dtype=np.int64)
    offset = np.minimum(offset, last_frame)
    centre = (pred["onset"].to_numpy(np.int64) + pred["offset"].to_numpy(np.int64)) // 2
    apex = np.asarray(to_source_frames(frames, VIDEO_NAME, centre), dtype=np.int64)
    return pd.DataFrame({"onset": onset, "apex": apex, "offset": offset,
                         "onset_s": np.round((onset - first_frame) / fps, 4),
                         "apex_s": np.round((apex - first_frame) / fps, 4),
                         "offset_s": np.round((offset - first_frame + 1) / fps, 4)})


def read_ground_truth(path: str | Path, inp: SpotInput) -> pd.DataFrame:
    """Intervals (type, onset, offset in the input's numbering) from a generic annotations CSV."""
    path = Path(path)
    try:
        gt = pd.read_csv(path, dtype={"video": str})
    except Exception as exc:  # noqa: BLE001 - pandas parser errors
        raise SpotError(f"{path}: cannot be read as CSV ({exc}). Give a CSV with columns type, onset, offset "
                        "[, video].") from None
    missing = [c for c in ("type", "onset", "offset") if c not in gt.columns]
    if missing:
        raise SpotError(f"{path}: missing column(s) {', '.join(missing)}; expected type, onset, offset [, video].")
    if "video" in gt.columns:
        mine = gt["video"].astype(str).isin({inp.name, inp.path.stem, inp.path.name})
        gt = gt[mine] if mine.any() else gt.iloc[0:0]
    gt = gt.assign(type=gt["type"].astype(str).str.lower().str.slice(0, 5))
    return gt[gt["type"].isin(TYPES)][["type", "onset", "offset"]].reset_index(drop=True)


def spot_one(inp: SpotInput, model: SpotModel, settings: SpotSettings, params: Mapping[str, Any], out_dir: Path,
             annotate: bool = False, ground_truth: str | None = None) -> SpotResult:
    """Spot one input end to end and write its outputs into ``out_dir``."""
    from pipeline.learning.postprocess import predict_video
    from pipeline.scoring.protocols import apply_thresholds
    from pipeline.io.artifacts import read_features

    extensions = tuple((params.get("ingest") or {}).get("image_extensions") or INGEST_DEFAULTS["image_extensions"])
    n_steps = 9 + int(annotate)  # hash, ingest, resample, crop, flow, features, face check, IAENet, write
    with tqdm(total=n_steps, desc=f"spot {inp.name}", unit="step") as bar:
        bar.set_postfix_str("hash")
        inp.key = content_key(inp, extensions, settings.hash_chunk_mb)
        bar.update(1)
        base, raw = prepare_cache(inp, settings.cache_dir.resolve())
        ctxs, steps = run_pipeline(inp, model, settings.cache_dir.resolve(), raw, params, settings.fps_tolerance, bar)
        paths = ctxs["crop"].paths
        faces_path = paths.h5(paths.faces, VIDEO_NAME)
        frames = read_frames(paths.resample / "frames.csv")
        all_frames = read_frames(paths.ingest / "frames.csv")
        numbers = all_frames["source_frame"].to_numpy(np.int64)
        first_frame, last_frame = int(numbers.min()), int(numbers.max())
        videos = read_videos(paths.resample / "videos.csv")
        model_fps = float(videos["fps"].iloc[0])
        n_model = int(videos["n_frames"].iloc[0])

        bar.set_postfix_str("face check")
        spans, face_stats, steps["face_check"] = cached_face_check(base, faces_path, model.recipe.crop, settings,
                                                                   model_fps)
        bar.update(1)

        bar.set_postfix_str("IAENet")
        feats, attrs = read_features(paths.h5(paths.features, VIDEO_NAME))
        _check_fed_features(attrs, feats.shape[1], model)
        device = next(model.model.parameters()).device
        cand = predict_video(model.model, feats, model.preset, VIDEO_NAME, batch_size=settings.batch_size,
                             device=device)
        cand = cand.sort_values(["onset", "offset", "type"], kind="stable").reset_index(drop=True)
        lost = _overlaps(cand["onset"].to_numpy(np.int64), cand["offset"].to_numpy(np.int64), spans)
        kept = apply_thresholds(cand[~lost].reset_index(drop=True), model.thresholds)
        excluded = int((lost & _passes(cand, model.thresholds)).sum())
        bar.update(1)

        bar.set_postfix_str("write")
        intervals = pd.concat([kept[["type"]].reset_index(drop=True),
                               to_input_frames(kept, frames, last_frame, first_frame, inp.fps)], axis=1)
        intervals.insert(0, "video", inp.name)
        intervals["score"] = np.round(kept["score"].to_numpy(np.float64), 6)
        intervals = intervals[CSV_COLUMNS]
        span_df = _spans_table(spans, frames, last_frame, first_frame, inp.fps)
        gt = read_ground_truth(ground_truth, inp) if ground_truth else None
        notes = []
        window = int(model.preset["window"]["frames"])
        if n_model < window:
            notes.append(f"shorter than one model window ({n_model} < {window} frames at {model_fps:g} fps): "
                         "spotted in one zero-padded window")
        if spans:
            share = sum(b - a + 1 for a, b in spans) / n_model
            notes.append(f"face lost in {len(spans)} span(s) ({share:.0%} of the video); {excluded} interval(s) "
                         "there above threshold were excluded")
            log.warning("%s: face lost in %d span(s): %s", inp.label, len(spans),
                        ", ".join(f"{r.onset_s:.2f}-{r.offset_s:.2f} s" for r in span_df.itertuples()))
        if model_fps != model.recipe.target_fps:
            notes.append(f"input at {inp.fps:g} fps used frame for frame for the {model.recipe.target_fps:g} fps model")
        out = {"csv": out_dir / "intervals.csv", "json": out_dir / "intervals.json", "png": out_dir / "timeline.png"}
        if annotate:
            out["video"] = out_dir / "annotated.mp4"
        else:
            (out_dir / "annotated.mp4").unlink(missing_ok=True)  # never leave one of an earlier run
        doc = {
            "input": str(inp.path), "kind": inp.kind, "name": inp.name, "fps": inp.fps,
            "frames": int(len(numbers)), "first_frame": first_frame, "last_frame": last_frame,
            "frame_numbering": ("0-based decode index" if inp.kind == "file"
                                else "the folder's frame numbers (from the file names)"),
            "seconds": "onset_s = (onset - first_frame) / fps; offset_s = (offset - first_frame + 1) / fps "
                       "(end of the last frame)",
            "apex": "interval centre (IAENet predicts intervals, not apexes)",
            "model": {"checkpoint": str(model.path.resolve()), "preset": model.preset.get("name"),
                      "fps": model.recipe.target_fps, "recipe": model.recipe.source,
                      "backbone": model.provenance.get("backbone"),
                      "weights_rgb": model.provenance.get("weights_rgb"),
                      "weights_flow": model.provenance.get("weights_flow")},
            "thresholds": {**model.thresholds, "source": model.threshold_source, **model.threshold_meta},
            "model_frames": n_model, "model_fps": model_fps,
            "intervals": intervals.to_dict("records"),
            "counts": {t: int((intervals["type"] == t).sum()) for t in TYPES},
            "lost_face_spans": span_df.to_dict("records"), "excluded_in_lost_face_spans": excluded,
            "face_check": face_stats, "notes": notes, "steps": steps,
            "cache": str(base), "key": inp.key,
            "outputs": {k: str(v) for k, v in out.items()},
        }
        if gt is not None:
            doc["ground_truth"] = _score_against(intervals, gt, str(ground_truth))
        from pipeline.scoring.report import write_json
        from pipeline.io.tables import write_table

        write_table(intervals, out["csv"])
        write_json(out["json"], _jsonable(doc))
        plot_spot_timeline(out["png"], inp, cand, lost, model.thresholds, span_df, frames, last_frame, first_frame,
                           gt, f"{inp.name}: {len(intervals)} interval(s); thresholds macro "
                               f"{model.thresholds['macro']:.2f} / micro {model.thresholds['micro']:.2f} "
                               f"({model.threshold_source})")
        bar.update(1)
        if annotate:
            bar.set_postfix_str("annotate")
            write_annotated(out["video"], paths, intervals, span_df, faces_path, settings.annotate_codec, inp.fps)
            bar.update(1)
    return SpotResult(inp, out_dir, intervals, cand, span_df, steps, doc)


def _passes(pred: pd.DataFrame, thresholds: Mapping[str, float]) -> np.ndarray:
    thr = pred["type"].map({t: float(thresholds[t]) for t in TYPES}).to_numpy(np.float64)
    return pred["score"].to_numpy(np.float64) >= thr


def _check_fed_features(attrs: Mapping[str, Any], width: int, model: SpotModel) -> None:
    """The features just computed must carry the model's provenance (a last check after the stage ran)."""
    prov = model.provenance
    diffs = [f"{k}: model {prov[k]!r}, features {attrs.get(k)!r}"
             for k in ("backbone", "weights_rgb", "weights_flow", "clip", "stride", "input_size")
             if k in prov and attrs.get(k) is not None and str(attrs.get(k)) != str(prov[k])]
    if int(width) != int(model.blob["in_dim"]):
        diffs.append(f"width: model {model.blob['in_dim']}, features {width}")
    if diffs:
        raise ModelMismatch(f"{model.path}: the features computed for this input do not match the model's "
                            f"({'; '.join(diffs)}). Pass the weights the model was trained with "
                            "(--weights-rgb/--weights-flow).")


def _spans_table(spans: Sequence[tuple[int, int]], frames: pd.DataFrame, last_frame: int, first_frame: int,
                 fps: float) -> pd.DataFrame:
    cols = ["onset", "offset", "onset_s", "offset_s"]
    if not spans:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
    pos = pd.DataFrame({"onset": [a for a, _ in spans], "offset": [b for _, b in spans]})
    return to_input_frames(pos, frames, last_frame, first_frame, fps)[cols]


def _score_against(intervals: pd.DataFrame, gt: pd.DataFrame, path: str) -> dict[str, Any]:
    """MEGC counts (IoU >= 0.5, one-to-one) of the intervals against a ground truth, per type."""
    from pipeline.scoring.metrics import counts_to_dict, evaluate

    pred = intervals[["type", "onset", "offset", "score"]].assign(video="v", subject="s")
    truth = gt.assign(video="v", subject="s")
    return {"file": path, "iou_threshold": 0.5, **counts_to_dict(evaluate(pred, truth, 0.5))}


def _jsonable(obj: Any) -> Any:
    """Plain Python values for json (numpy scalars, NaN -> None)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ------------------------------------------------------------------------------- pictures

TYPE_COLORS = {"macro": "tab:blue", "micro": "tab:orange"}
_BGR = {"macro": (200, 120, 30), "micro": (20, 140, 250)}


def plot_spot_timeline(path: Path, inp: SpotInput, cand: pd.DataFrame, lost: np.ndarray,
                       thresholds: Mapping[str, float], spans: pd.DataFrame, frames: pd.DataFrame, last_frame: int,
                       first_frame: int, gt: pd.DataFrame | None, title: str) -> None:
    """Scores of every candidate over time (seconds), thresholds, kept intervals, lost-face spans, ground truth."""
    from matplotlib.figure import Figure

    times = to_input_frames(cand, frames, last_frame, first_frame, inp.fps) if len(cand) else None
    fig = Figure(figsize=(12, 4.2), dpi=100)
    axes = fig.subplots(len(TYPES), 1, sharex=True)
    end = (last_frame - first_frame + 1) / inp.fps
    for ax, t in zip(axes, TYPES):
        if gt is not None:
            for on, off in gt.loc[gt["type"] == t, ["onset", "offset"]].itertuples(index=False):
                ax.axvspan((on - first_frame) / inp.fps, (off - first_frame + 1) / inp.fps, color="0.8", lw=0)
        for r in spans.itertuples():
            ax.axvspan(r.onset_s, r.offset_s, facecolor="none", edgecolor="0.4", hatch="///", lw=0)
        if times is not None:
            sel = (cand["type"] == t).to_numpy()
            score = cand["score"].to_numpy(np.float64)
            on, off = times["onset_s"].to_numpy(), times["offset_s"].to_numpy()
            keep = sel & ~lost & (score >= thresholds[t])
            faint = sel & ~keep
            ax.hlines(score[faint], on[faint], off[faint], color="0.6", lw=1, alpha=0.6)
            ax.hlines(score[keep], on[keep], off[keep], color=TYPE_COLORS[t], lw=3)
        ax.axhline(thresholds[t], color="k", ls="--", lw=0.8)
        ax.set_ylim(0, 1.05)
        ax.set_xlim(0, end)
        ax.set_ylabel(f"{t}\nscore")
    legend = "coloured: spotted; faint: below threshold or in a lost-face span; dashed: threshold; hatched: face lost"
    if gt is not None:
        legend += "; grey spans: ground truth"
    axes[-1].set_xlabel(f"time (s) of {inp.path.name} at {inp.fps:g} fps. {legend}", fontsize=8)
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_annotated(path: Path, paths: DataPaths, intervals: pd.DataFrame, spans: pd.DataFrame, faces_path: Path,
                    codec: str, fps: float) -> None:
    """A copy of the input with the face box, spotted intervals and lost-face spans drawn (mp4 via OpenCV)."""
    import cv2

    from pipeline.io.decode import BadFrameError, open_source

    videos = read_videos(paths.ingest / "videos.csv")
    row = videos.iloc[0]
    frames = read_frames(paths.ingest / "frames.csv").sort_values("frame")
    numbers = frames["source_frame"].to_numpy(np.int64)
    source = open_source(VIDEO_NAME, str(row["kind"]), str(row["source"]), True, numbers,
                         frames["path"].tolist(), threads=2)
    with h5py.File(faces_path, "r") as f:
        box = read_attr_json(f, "box")
        ref_shape = read_attr_json(f, "frame_shape")
    on, off = intervals["onset"].to_numpy(), intervals["offset"].to_numpy()
    types, scores = intervals["type"].to_numpy(), intervals["score"].to_numpy()
    lost_on, lost_off = spans["onset"].to_numpy(), spans["offset"].to_numpy()
    size: tuple[int, int] | None = None

    def draw(pos: int, frame: np.ndarray) -> np.ndarray:
        img = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR if frame.ndim == 3 else cv2.COLOR_GRAY2BGR)
        if size is not None and (img.shape[1], img.shape[0]) != size:
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
        n = int(numbers[pos])
        if box is not None and ref_shape:
            sx, sy = w / ref_shape[1], h / ref_shape[0]
            cv2.rectangle(img, (int(box[0] * sx), int(box[1] * sy)), (int(box[2] * sx), int(box[3] * sy)),
                          (90, 200, 90), 1)
        active = np.flatnonzero((on <= n) & (n <= off))
        for k, i in enumerate(active):
            color = _BGR.get(str(types[i]), (255, 255, 255))
            cv2.rectangle(img, (2 + 3 * k, 2 + 3 * k), (w - 3 - 3 * k, h - 3 - 3 * k), color, 3)
            cv2.putText(img, f"{types[i]} {scores[i]:.2f}", (8, 22 + 20 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                        color, 2, cv2.LINE_AA)
        if np.any((lost_on <= n) & (n <= lost_off)):
            cv2.putText(img, "face lost", (8, h - 28), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (160, 160, 160), 2, cv2.LINE_AA)
        cv2.putText(img, f"frame {n}  {(n - numbers[0]) / fps:.2f} s", (8, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)
        return img

    first = source.read(0)
    size = (int(first.shape[1]), int(first.shape[0]))
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), float(fps), size)
    if not writer.isOpened():
        raise SpotError(f"{path}: OpenCV cannot write {codec} video here; set params.yaml spot.annotate_codec "
                        "to a codec your OpenCV build supports (e.g. mp4v, avc1, MJPG).")
    try:
        last: np.ndarray | None = None
        for _, img in tqdm(source.map(draw, batch=32), total=len(numbers), desc="annotate", unit="frame",
                           leave=False):
            if isinstance(img, BadFrameError):
                if last is None:
                    raise SpotError(f"{path}: {img}")
                img = last
            writer.write(img)
            last = img
        writer.release()
        os.replace(tmp, path)
    finally:
        writer.release()
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    """The ``m2es spot`` arguments."""
    p = argparse.ArgumentParser(
        prog="m2es spot",
        description="Spot macro- and micro-expressions in videos or frame folders with a trained IAENet.",
        epilog="Exit codes: 0 ok; 1 internal error; 2 bad input or usage; 3 no face found; 4 model problem "
               "(unreadable, or its feature backbone/weights do not match).")
    p.add_argument("inputs", nargs="+", metavar="VIDEO_OR_FRAME_FOLDER", help="video files and/or frame folders")
    p.add_argument("--model", required=True,
                   help="training run folder (data/<ds>/runs -> final/model.pt) or a checkpoint file")
    p.add_argument("--out", default=None, help="outputs go to OUT/<input name>/ (default: params spot.out_dir)")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate of the input (required for frame folders; overrides a file's own)")
    p.add_argument("--threshold-macro", type=float, default=None, help="score threshold for macro-expressions")
    p.add_argument("--threshold-micro", type=float, default=None, help="score threshold for micro-expressions")
    p.add_argument("--thresholds", default=None,
                   help="thresholds.json to use (default: the run's ../evaluate/thresholds.json)")
    p.add_argument("--dataset", default=None,
                   help="take crop/flow/features params from params.yaml + this dataset preset (for checkpoints "
                        "that record none and have no dataset folder next to them)")
    p.add_argument("--weights-rgb", default=None, help="I3D rgb weights (features.weights.rgb) the model needs")
    p.add_argument("--weights-flow", default=None, help="I3D flow weights (features.weights.flow) the model needs")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="device for flow, features and IAENet (default: params spot.device)")
    p.add_argument("--cache-dir", default=None, help="per-input cache root (default: params spot.cache_dir)")
    p.add_argument("--annotate", action="store_true", help="also write annotated.mp4 with the intervals drawn")
    p.add_argument("--ground-truth", default=None,
                   help="CSV of known intervals (type, onset, offset[, video]) to draw and score against")
    p.add_argument("--params", default=None, help="params file (default: params.yaml when present)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _load_params(arg: str | None) -> dict[str, Any]:
    """params.yaml (explicit path must exist; the default may be absent outside the repository)."""
    if arg is not None:
        return load_params(arg)
    if Path("params.yaml").is_file():
        return load_params("params.yaml")
    log.info("no params.yaml in %s: using spot's built-in defaults", Path.cwd())
    return {}


def run(args: argparse.Namespace) -> tuple[int, list[SpotResult], list[str]]:
    """Spot every input of ``args``; returns (exit code, results, one status line per input).

    Options, the output and cache folders and the model are checked first (any problem
    there stops the run); then each input is probed and spotted on its own, and a failed
    input does not stop the others. The exit code is that of the first failed input.
    """
    params = _load_params(args.params)
    settings = SpotSettings.from_section(params.get("spot") or {})
    if args.cache_dir:
        settings.cache_dir = Path(args.cache_dir)
    out_root = Path(args.out) if args.out else settings.out_dir
    device = args.device or settings.device
    checkpoint = resolve_checkpoint(args.model)
    ensure_writable(out_root, "output", "--out")
    ensure_writable(settings.cache_dir, "cache", "--cache-dir")

    outcomes: list[SpotInput | SpotError] = []
    for arg in args.inputs:
        try:
            outcomes.append(probe_input(arg, args.fps))
        except SpotError as exc:
            log.error("%s", exc)
            outcomes.append(exc)
    status: list[str] = []
    results: list[SpotResult] = []
    code = EXIT_OK
    if not any(isinstance(o, SpotInput) for o in outcomes):  # nothing to spot: do not load the model
        for arg, o in zip(args.inputs, outcomes):
            status.append(f"{Path(arg).name}: FAILED (exit {o.exit_code}: {str(o).splitlines()[0][:160]})")
        return next(o.exit_code for o in outcomes if isinstance(o, SpotError)), results, status
    model = load_model(checkpoint, device, args.dataset, params,
                       {"rgb": args.weights_rgb, "flow": args.weights_flow}, settings, args.thresholds,
                       args.threshold_macro, args.threshold_micro)
    names: dict[str, int] = {}
    for arg, outcome in zip(args.inputs, outcomes):
        try:
            if isinstance(outcome, SpotError):
                raise outcome
            inp = outcome
            k = names.get(inp.name, 0)
            names[inp.name] = k + 1
            out_dir = ensure_writable(out_root / (inp.name if k == 0 else f"{inp.name}_{k + 1}"), "output", "--out")
            res = spot_one(inp, model, settings, params, out_dir, args.annotate, args.ground_truth)
        except ModelMismatch:
            raise
        except Exception as exc:  # noqa: BLE001 - one input's failure must not stop the others
            c = exit_code_of(exc)
            if c == EXIT_BUG:
                log.error("%s: internal error:\n%s", arg, traceback.format_exc())
            elif not isinstance(outcome, SpotError):
                log.error("%s", exc)
            status.append(f"{Path(arg).name}: FAILED (exit {c}: {str(exc).splitlines()[0][:160]})")
            code = code or c
            continue
        results.append(res)
        counts = res.doc["counts"]
        heavy = "/".join(res.steps[s] for s in HEAVY_STEPS)
        lost = f", face lost in {len(res.lost_spans)} span(s)" if len(res.lost_spans) else ""
        status.append(f"{inp.name}: {counts['macro']} macro, {counts['micro']} micro{lost} "
                      f"[crop/flow/features {heavy}] -> {res.out_dir}")
    return code, results, status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``m2es spot`` (see the module doc for the exit codes)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    setup_logging(args.verbose)
    try:
        code, results, status = run(args)
    except Exception as exc:  # noqa: BLE001 - every failure ends in one message and a documented code
        code = exit_code_of(exc)
        if code == EXIT_BUG:
            log.error("spot: internal error:\n%s", traceback.format_exc())
        else:
            log.error("spot: %s", exc)
        print(f"m2es spot: failed (exit {code}): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
              file=sys.stderr)
        return code
    thr = f"thresholds macro {results[0].doc['thresholds']['macro']:.2f} / micro " \
          f"{results[0].doc['thresholds']['micro']:.2f}" if results else ""
    print(f"m2es spot: {len(results)} of {len(status)} input(s) spotted{', ' + thr if thr else ''}: "
          + "; ".join(status))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
