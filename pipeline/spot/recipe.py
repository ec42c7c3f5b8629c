"""The model spot feeds: its checkpoint, the recipe of its training features, its thresholds.

Where the feature recipe comes from (first that exists): the checkpoint's ``params``
(:func:`recipe_from_checkpoint`), the run's dataset folder (:func:`recipe_from_dataset_folder`),
or ``--dataset NAME`` (:func:`recipe_from_params`). :func:`check_feature_recipe` refuses a
recipe whose features would differ from the model's training features, naming what to pass.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py

from models.errors import ModelError
from models.iaenet import load_checkpoint
from models.weights import RANDOM_INIT
from pipeline.core.device import resolve_device
from pipeline.core.params import PRESET_DIR, digest, load_dataset, stage_params
from pipeline.cropping.params import INPUT_HANDLING
from pipeline.errors import ConfigError, InputError, M2esError
from pipeline.extract.params import ROI_FLOW, ROI_VERSION, FeaturesParams, RoiParams
from pipeline.extract.writer import weights_identity
from pipeline.io.h5io import PARAMS_ATTR, file_digest, read_attr_json
from pipeline.io.tables import TYPES
from pipeline.scoring.protocols import load_thresholds
from pipeline.spot.errors import ModelMismatch, SpotError
from pipeline.spot.params import SpotParams

log = logging.getLogger(__name__)

#: features keys that change how fast, not what: taken from params when the recipe comes from files
SPEED_KEYS = ("batch_size", "prefetch", "read_workers")


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
    def last_epoch(self) -> int | None:
        """The epochs the model trained (its history's length, else its preset's ``train.epochs``): spot
        predicts as the train stage did after that epoch (the model preset's NMS-then-WBF schedule)."""
        history = (self.blob.get("extra") or {}).get("history")
        if history:
            return len(history)
        epochs = (self.preset.get("train") or {}).get("epochs")
        return int(epochs) if epochs is not None else None

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
    """(stage params, other attrs) of a pipeline HDF5 file."""
    with h5py.File(path, "r") as f:
        params = read_attr_json(f, PARAMS_ATTR, {}) or {}
        attrs = {k: read_attr_json(f, k) for k in f.attrs if k != PARAMS_ATTR}
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
    """The recipe of dataset preset ``dataset`` in ``params`` (each section with ``per_dataset.<dataset>`` merged in,
    as the stages read it: :func:`pipeline.core.params.stage_params`)."""
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
    try:
        cfg = FeaturesParams.from_params(section, where="spot: features (from the model's recipe)")
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
    quantize = provenance.get("flow_quantize", "none")  # features made before the key read the float flow
    if quantize != cfg.flow_quantize:
        problems.append(f"features.flow_quantize: model trained on {quantize} flow, this run {cfg.flow_quantize} "
                        f"(set features.flow_quantize: {quantize})")
    if cfg.backbone == ROI_FLOW and trained == ROI_FLOW:
        problems += _roi_problems(cfg, provenance)
    if problems:
        raise ModelMismatch(f"{checkpoint}: " + "; ".join(problems) + ". " + _needs(provenance))
    try:
        have = weights_identity(cfg)
    except (ConfigError, ModelError) as exc:
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


def _roi_problems(cfg: FeaturesParams, provenance: Mapping[str, Any]) -> list[str]:
    """How this run's roi_flow features would differ from a roi_flow model's: its ``roi`` knobs and version."""
    problems = []
    version = provenance.get("roi_version")
    if version is not None and int(version) != ROI_VERSION:
        problems.append(f"roi_flow version: the model was trained on version {version} roi_flow features but this "
                        f"code computes version {ROI_VERSION} (the regions or statistics changed); retrain the model "
                        "on features of this version (dvc repro features@<dataset> train@<dataset>)")
    recorded = provenance.get("roi")
    if recorded is None:
        return problems
    try:
        want = RoiParams.from_params(recorded, where="the model's features.roi").as_params()
    except ConfigError as exc:
        return problems + [f"features.roi: the model records roi_flow knobs this code does not know ({exc})"]
    have = cfg.roi_params.as_params()
    problems += [f"features.roi.{key}: model trained with {want[key]!r}, this run {have[key]!r}"
                 for key in want if want[key] != have[key]]
    return problems


def _needs(provenance: Mapping[str, Any]) -> str:
    """What the model needs, as an instruction (backbone, per-stream weights and where they were;
    for roi_flow, which loads no weights, its ``roi`` knobs)."""
    if provenance.get("backbone") == ROI_FLOW:
        roi = provenance.get("roi")
        return (f"The model needs {ROI_FLOW} features (no weights file; features.roi {roi}, roi_flow version "
                f"{provenance.get('roi_version')}): set features.backbone: {ROI_FLOW} and features.roi to those "
                "values (params.yaml, or per_dataset.<NAME>.features for --dataset NAME).")
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
            f"features.backbone: {backbone} (params.yaml, or per_dataset.<NAME>.features for --dataset NAME) and "
            "pass those files with --weights-rgb/--weights-flow (features.weights.rgb/flow).")


def _describe(identity: str) -> str:
    """A weights identity (SHA-256 or ``random-init:<seed>``) in words."""
    if identity.startswith(RANDOM_INIT):
        return f"random-init weights (seed {identity.split(':', 1)[1]}) because no weights file was given"
    return f"weights with SHA-256 {identity}"


def find_thresholds(checkpoint: Path, explicit_file: str | None, macro: float | None, micro: float | None,
                    defaults: Mapping[str, float]) -> tuple[dict[str, float], str, dict[str, Any]]:
    """(thresholds, where they came from, file metadata): CLI values > --thresholds > the run's evaluate > params."""
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
               weights: Mapping[str, str | None], settings: SpotParams, thresholds_file: str | None,
               macro: float | None, micro: float | None) -> SpotModel:
    """Load and check the model: checkpoint, feature recipe, weights, thresholds."""
    dev = resolve_device(device)
    try:
        model, blob = load_checkpoint(checkpoint, dev)
    except (M2esError, ModelError) as exc:
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
        speed = {k: v for k, v in (params.get("features") or {}).items() if k in SPEED_KEYS}
        recipe.features = {**recipe.features, **speed}
    # how unreadable frames are treated, and crop speed: the user's, whatever the recipe's source
    recipe.crop = {**recipe.crop, **{k: v for k, v in (params.get("crop") or {}).items() if k in INPUT_HANDLING}}
    log.info("model %s: preset %s, %d-wide %s features at %g fps (recipe from %s)", checkpoint,
             blob["preset"].get("name"), blob["in_dim"], prov.get("backbone", "?"), recipe.target_fps, recipe.source)
    recipe.features = feature_config(recipe, prov, weights, device)
    recipe.flow = dict(recipe.flow, device=device)
    check_feature_recipe(recipe.features, prov, int(blob["in_dim"]), checkpoint)
    thresholds, source, meta = find_thresholds(checkpoint, thresholds_file, macro, micro, settings.thresholds)
    return SpotModel(checkpoint, model, blob, recipe, thresholds, source, meta)
