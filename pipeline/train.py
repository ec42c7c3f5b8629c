"""Stage ``train``: IAENet, leave-one-subject-out, out-of-fold predictions, checkpoints.

``python -m pipeline.train --dataset NAME`` reads ``data/<ds>/features/<video>.h5``
(``rgb`` and ``flow`` [N, D], concatenated), ``data/<ds>/resample/annotations.csv``
and, when present, ``data/<ds>/resample/videos.csv`` (subjects of videos without
annotations), and writes under ``data/<ds>/runs/``:

* ``fold_<subject>/model.pt`` per LOSO fold, ``final/model.pt`` trained on every subject
  (state_dict, resolved preset, params, feature provenance; :func:`models.iaenet.load_checkpoint`);
* ``fold_<subject>/predictions.csv`` and the union ``predictions.csv``: video, subject,
  fold, epoch, onset, offset, type, score for every epoch from the end of warm-up
  (``epoch`` counts epochs trained, 1-based);
* ``live/<fold>/``: dvclive logs per epoch (train/loss, train/cls, train/reg, lr).

Speed: every video's features live on the device as one tensor and every window is a
row of indices into it; labels of all training windows are assigned once. A fold's
seed is derived from ``train.seed`` and its subject, so its result does not depend on
the order of folds. A fold whose checkpoint and predictions exist with the same digest
is skipped (resume after a kill). ``train.fold_workers`` > 1 trains folds in parallel
processes (one GPU each, round-robin, when several are visible; the dask cluster when
``parallel.backend`` is ``dask``) with the same results as one after another.
``train.cuda_graphs`` replays each model's training step as a CUDA graph
(:mod:`pipeline.learning.step`): eager steps leave a GPU mostly idle at this model size.
A model's checkpoint is written in a background thread while the next model trains.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from models.iaenet import build_model, count_parameters, load_model_preset, resolve_preset, save_checkpoint

from pipeline.core.device import resolve_device
from pipeline.errors import ConfigError, InputError
from pipeline.io.artifacts import PREDICTION_COLUMNS, read_features
from pipeline.io.h5io import COMPLETE_ATTR, DIGEST_ATTR
from pipeline.core.params import digest
from pipeline.core.paths import DataPaths
from pipeline.learning.postprocess import predictions_from_outputs, run_windows
from pipeline.core.runner import ParallelConfig, VideoTask, map_videos
from pipeline.core.stage import StageContext, stage_main
from pipeline.io.tables import read_annotations, read_table, write_table
from pipeline.learning.step import LossSpec, StepTensors, TrainStep
from pipeline.learning.windows import (FeatureBank, PointGrid, WindowSet, WindowSpec, assign_labels, make_test_windows,
                      make_train_windows, point_mask)

log = logging.getLogger(__name__)

CODE_VERSION = 1
EpochCallback = Callable[[int, dict[str, float]], None]
# one line per trained model; benchmarks/e2e.py --calibrate reads the seconds back (model_seconds)
MODEL_LOG = "%s: %d training windows, %.1f s on %s, final loss %.4f"
_MODEL_LINE = re.compile(r"\b(fold_\S+|final): \d+ training windows, ([\d.]+) s on ")


@dataclass
class TrainConfig:
    """The resolved training recipe of one run (model preset + params.yaml overrides)."""

    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    warmup_epochs: int
    schedule: str = "epoch"
    precision: str = "fp32"
    eval_batch_size: int = 512
    predict_from_epoch: int | None = None
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    micro_weight: float = 4.0
    reg_weight: float = 0.05
    cuda_graphs: bool = False

    @classmethod
    def from_preset(cls, preset: Mapping[str, Any], train_params: Mapping[str, Any]) -> "TrainConfig":
        """Build from a resolved preset (``train``, ``loss``) and the runtime keys of params ``train``."""
        t, lo = preset["train"], preset["loss"]
        cfg = cls(lr=float(t["lr"]), weight_decay=float(t.get("weight_decay", 0.0)),
                  batch_size=int(t["batch_size"]), epochs=int(t["epochs"]),
                  warmup_epochs=int(t.get("warmup_epochs", 0)), schedule=str(t.get("schedule", "epoch")),
                  precision=str(train_params.get("precision") or "fp32"),
                  eval_batch_size=int(train_params.get("eval_batch_size") or 512),
                  predict_from_epoch=train_params.get("predict_from_epoch"),
                  focal_alpha=float(lo.get("focal_alpha", 0.25)), focal_gamma=float(lo.get("focal_gamma", 2.0)),
                  micro_weight=float(lo.get("micro_weight", 4.0)), reg_weight=float(lo["reg_weight"]),
                  cuda_graphs=bool(train_params.get("cuda_graphs") or False))
        if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
            raise ConfigError("train: epochs and batch_size must be >= 1 and lr > 0 (params.yaml train / preset).")
        if not 0 <= cfg.warmup_epochs < cfg.epochs:
            raise ConfigError(f"train: warmup_epochs={cfg.warmup_epochs} must be in [0, epochs={cfg.epochs}).")
        if cfg.schedule not in ("epoch", "step"):
            raise ConfigError(f"train.schedule '{cfg.schedule}' is not one of epoch, step.")
        if cfg.precision not in ("fp32", "bf16"):
            raise ConfigError(f"train.precision '{cfg.precision}' is not one of fp32, bf16.")
        return cfg

    def identity(self, cuda: bool) -> dict[str, Any]:
        """The fields that decide a trained model, for the run's digest. ``cuda_graphs`` counts only
        where it takes effect, on and training on CUDA (``cuda``): a graphed run draws other dropout
        masks. Elsewhere the steps are eager, those of runs made before the setting existed, whose
        checkpoints stay valid."""
        return {k: v for k, v in self.__dict__.items() if k != "cuda_graphs" or self.graphs_on(cuda)}

    def graphs_on(self, cuda: bool) -> bool:
        """Whether training steps are CUDA graphs: the setting on and training on CUDA (``cuda``)."""
        return self.cuda_graphs and cuda

    def loss_spec(self) -> LossSpec:
        """The loss settings and precision of a training step."""
        return LossSpec(alpha=self.focal_alpha, gamma=self.focal_gamma, micro_weight=self.micro_weight,
                        reg_weight=self.reg_weight, precision=self.precision)

    @property
    def first_predicted_epoch(self) -> int:
        """First epoch (1-based count of epochs trained) whose predictions are written."""
        if self.predict_from_epoch is None:
            return self.warmup_epochs + 1
        return max(1, int(self.predict_from_epoch))


def lr_factor(t: float, warmup: int, epochs: int) -> float:
    """Published schedule at (fractional) epoch ``t`` (0-based): t / warmup during warm-up
    (``t <= warmup``), then 0.5 * (1 + cos(pi * (t - warmup) / (epochs - warmup)))."""
    if warmup > 0 and t <= warmup:
        return t / warmup
    return 0.5 * (math.cos(math.pi * (t - warmup) / max(epochs - warmup, 1)) + 1)


def fold_seed(seed: int, fold: str) -> int:
    """A fold's seed from the run seed and the fold's name (independent of fold order)."""
    return int(hashlib.sha256(f"{int(seed)}:{fold}".encode()).hexdigest()[:8], 16)


@dataclass
class Prepared:
    """Everything the folds share, on the training device."""

    bank: FeatureBank
    spec: WindowSpec
    grid: PointGrid
    train: WindowSet
    test: WindowSet
    train_subject: np.ndarray
    test_subject: np.ndarray
    train_rows: torch.Tensor
    train_cls: torch.Tensor
    train_reg: torch.Tensor
    train_mask: torch.Tensor
    subjects: dict[str, str] = field(default_factory=dict)

    def fold_windows(self, fold: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(training windows, held-out test windows) of fold ``fold``, a subject left out, or of
        ``final`` (every training window, nothing held out), as indices."""
        train_idx = np.flatnonzero(self.train_subject != fold)
        return train_idx, None if fold == "final" else np.flatnonzero(self.test_subject == fold)


def prepare(features: Mapping[str, np.ndarray], annotations: pd.DataFrame, subjects: Mapping[str, str],
            preset: Mapping[str, Any], device: torch.device | str = "cpu") -> Prepared:
    """Build the feature bank, the training windows with labels and the test windows."""
    spec = WindowSpec.from_preset(preset)
    grid = PointGrid.from_preset(preset)
    bank = FeatureBank(features, device=device)
    train = make_train_windows(bank.lengths, annotations, spec)
    test = make_test_windows(bank.lengths, spec)
    if len(train):
        cls, reg = assign_labels(torch.from_numpy(train.boxes), torch.from_numpy(train.box_labels), grid)
        mask = point_mask(torch.from_numpy(train.valid), grid, spec.feature_stride)
    else:
        cls = torch.zeros(0, len(grid), dtype=torch.long)
        reg = torch.zeros(0, len(grid), 2)
        mask = torch.zeros(0, len(grid), dtype=torch.bool)
    log.info("%d videos, %d feature steps, %d training windows (%d positive points), %d test windows",
             len(bank.lengths), bank.pad_row, len(train), int((cls > 0).sum()), len(test))
    return Prepared(bank=bank, spec=spec, grid=grid, train=train, test=test,
                    train_subject=np.array([subjects[v] for v in train.video], dtype=object),
                    test_subject=np.array([subjects[v] for v in test.video], dtype=object),
                    train_rows=bank.rows(train, spec.steps), train_cls=cls.to(device), train_reg=reg.to(device),
                    train_mask=mask.to(device), subjects=dict(subjects))


def train_model(prep: Prepared, train_idx: np.ndarray, preset: Mapping[str, Any], cfg: TrainConfig, seed: int,
                test_idx: np.ndarray | None = None, on_epoch: EpochCallback | None = None,
                desc: str = "fold") -> tuple[torch.nn.Module, pd.DataFrame, list[dict[str, float]]]:
    """Train one model on the training windows ``train_idx``; predict test windows ``test_idx``
    after every epoch from ``cfg.first_predicted_epoch``.

    Returns (model, predictions with an ``epoch`` column, per-epoch history).
    """
    device = prep.bank.data.device
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(preset, prep.bank.width).to(device)
    model.train()
    idx_all = torch.as_tensor(np.asarray(train_idx, np.int64))
    n = len(idx_all)
    if n == 0:
        raise ConfigError(f"{desc}: no training windows (no annotated interval fits a window). "
                          "Check annotations.csv and the features.")
    graph = cfg.graphs_on(device.type == "cuda")
    step = TrainStep(model, prep.bank, StepTensors(prep.train_rows, prep.train_cls, prep.train_reg, prep.train_mask),
                     cfg.loss_spec(), cfg.lr, cfg.weight_decay, cfg.batch_size, static=graph,
                     warm_idx=idx_all[:cfg.batch_size].to(device) if graph else None)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    history, preds = [], []
    for epoch in range(cfg.epochs):
        perm = idx_all[torch.randperm(n, generator=gen)].to(device)
        lr_epoch = cfg.lr * lr_factor(epoch, cfg.warmup_epochs, cfg.epochs)
        for b in range(steps_per_epoch):
            t = epoch + (b / steps_per_epoch if cfg.schedule == "step" else 0.0)
            step.step(perm[b * cfg.batch_size:(b + 1) * cfg.batch_size], cfg.lr * lr_factor(t, cfg.warmup_epochs,
                                                                                            cfg.epochs))
        mean = step.take_sums(steps_per_epoch)
        rec = {"loss": mean[0], "cls": mean[1], "reg": mean[2], "lr": lr_epoch}
        history.append(rec)
        if on_epoch is not None:
            on_epoch(epoch + 1, rec)
        if test_idx is not None and len(test_idx) and epoch + 1 >= cfg.first_predicted_epoch:
            wins = prep.test.subset(np.asarray(test_idx))
            logits, dists = run_windows(model, prep.bank, wins, prep.spec.steps, cfg.eval_batch_size, cfg.precision)
            df = predictions_from_outputs(logits, dists, wins, prep.spec, prep.grid, preset["inference"])
            df.insert(1, "epoch", epoch + 1)
            preds.append(df)
        log.debug("%s epoch %d: loss %.4f cls %.4f reg %.4f lr %.2e", desc, epoch + 1, *mean, lr_epoch)
    out = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(columns=["video", "epoch", "onset",
                                                                                  "offset", "type", "score"])
    return model, out, history


# ---------------------------------------------------------------------------------------
# the stage


def load_inputs(ctx: StageContext, feature_stride: int, report: bool = True) -> tuple[
        dict[str, np.ndarray], pd.DataFrame, dict[str, str], dict[str, Any]]:
    """Features per video, annotations, subject per video and feature provenance of a dataset.
    ``report``: warn of the videos left out (a fold process, which reads the inputs again, does not:
    the stage has said it once)."""
    warn = log.warning if report else log.debug
    ann_path = ctx.paths.resample / "annotations.csv"
    annotations = read_annotations(ann_path)
    bad = ~annotations["type"].isin(["macro", "micro"]) | (annotations["offset"] < annotations["onset"])
    if bad.any():
        row = annotations[bad].iloc[0]
        raise InputError(f"{ann_path}: row of video {row['video']} has type '{row['type']}' / onset {row['onset']} "
                         f"> offset {row['offset']}; types must be macro/micro and onset <= offset. Rerun ingest.")
    subjects = dict(zip(annotations["video"], annotations["subject"].astype(str)))
    videos_path = ctx.paths.resample / "videos.csv"
    listed: list[str] = []
    if videos_path.is_file():
        videos = read_table(videos_path, ["video", "subject"])
        subjects.update(dict(zip(videos["video"], videos["subject"].astype(str))))
        listed = list(videos["video"])
    feat_dir = ctx.paths.features
    files = sorted(feat_dir.glob("*.h5")) if feat_dir.is_dir() else []
    if not files:
        raise InputError(f"{feat_dir}: no features files. Run the features stage first (dvc repro features).")
    features: dict[str, np.ndarray] = {}
    provenance: dict[str, Any] = {}
    digests = []
    for path in files:
        video = path.stem
        if video not in subjects:
            raise InputError(f"{path}: video '{video}' is in neither {videos_path} nor {ann_path}, so its subject "
                             "is unknown. Remove the stale file or rerun ingest/resample.")
        feats, attrs = read_features(path)
        if len(feats) == 0:
            warn("%s: no feature steps (video too short), skipped", video)
            continue
        stride = attrs.get("stride")
        if stride is not None and int(stride) != feature_stride:
            raise InputError(f"{path}: features have stride {stride} but the model preset expects "
                             f"window.feature_stride={feature_stride}. Recompute features or fix the preset.")
        ident = {k: v for k, v in attrs.items() if k not in (DIGEST_ATTR, COMPLETE_ATTR, "video", "subject",
                                                             "n_frames", "n_clips")}
        if not provenance:
            provenance = ident
        elif ident.get("backbone") != provenance.get("backbone") or \
                {k: v for k, v in ident.items() if "weights" in k} != \
                {k: v for k, v in provenance.items() if "weights" in k}:
            raise InputError(f"{path}: made with backbone/weights {ident} unlike the other videos ({provenance}). "
                             "Recompute all features with one backbone.")
        features[video] = feats
        digests.append(f"{video}:{attrs.get(DIGEST_ATTR)}")
    for video in listed:
        if video not in features:
            warn("%s: no features file (video shorter than one clip?), skipped", video)
    lost = sorted(set(annotations["video"]) - set(features))
    if lost:
        warn("%d annotated video(s) without features are not used: %s", len(lost), ", ".join(lost[:10]))
    provenance = dict(provenance, feature_width=int(next(iter(features.values())).shape[1]),
                      features_digest=digest(sorted(digests)))
    return features, annotations, {v: subjects[v] for v in features}, provenance


#: dvclive's step signal file (see :meth:`_Live.close`)
STEP_SIGNAL = "DVCLIVE_STEP_COMPLETED"


class _Live:
    """dvclive logging of one fold (losses and lr per epoch) into ``directory``."""

    def __init__(self, directory: Path) -> None:
        try:
            from dvclive import Live
        except ImportError as exc:  # pragma: no cover - dvclive is a declared dependency
            raise ConfigError("dvclive is not installed: pip install dvclive (or pip install -e .).") from exc
        self.live = Live(dir=str(directory), save_dvc_exp=False, dvcyaml=False)

    def __call__(self, epoch: int, rec: Mapping[str, float]) -> None:
        for key in ("loss", "cls", "reg"):
            self.live.log_metric(f"train/{key}", float(rec[key]))
        self.live.log_metric("lr", float(rec["lr"]))
        self.live.next_step()

    def close(self) -> None:
        try:
            self.live.end()
        except FileNotFoundError as exc:
            # the last thing end() does is remove a signal file for DVC's VS Code extension, shared by every
            # Live under one DVC root (.dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED), after checking that it
            # exists: with folds in parallel processes (train.fold_workers), another fold's end() may have
            # removed it in between. The fold's own logs are complete by then.
            if not str(exc.filename or "").endswith(STEP_SIGNAL):
                raise


@dataclass
class FoldJob:
    """What training one fold needs besides the features (small, so it pickles to fold processes).

    ``ctx`` has absolute paths, so that a process with another working directory (a dask
    worker) reads and writes the same files; ``device`` is the device of that fold.
    """

    ctx: StageContext
    preset: dict[str, Any]
    cfg: TrainConfig
    seed: int
    run_id: str
    provenance: dict[str, Any]
    ckpt_params: dict[str, Any]
    device: str


def model_seconds(log_text: str) -> dict[str, float]:
    """{model (``fold_<subject>`` or ``final``): seconds it spent training} from this stage's log text,
    in the order the models were trained."""
    return {m.group(1): float(m.group(2)) for m in _MODEL_LINE.finditer(log_text)}


def window_passes(n_train: int, n_test: int, cfg: TrainConfig) -> int:
    """The windows one model goes through: every training window in every epoch (forward and
    backward) plus every held-out window in every predicted epoch (forward and post-processing).

    This, not the frames, is what a model's training time follows: training windows are the
    windows that hold an annotated interval, so their number grows with the intervals.
    ``benchmarks/e2e.py`` extrapolates the train stage by it. The two kinds count alike: on an
    H200 (``bench_train.py``, CAS(ME)^2 size) a training window cost 0.19 ms per epoch and a
    held-out window about 0.17 ms per predicted epoch.
    """
    predicted = max(0, cfg.epochs - cfg.first_predicted_epoch + 1)
    return int(n_train) * cfg.epochs + int(n_test) * predicted


def loso_window_passes(lengths: Mapping[str, int], annotations: pd.DataFrame, subjects: Mapping[str, str],
                       preset: Mapping[str, Any], cfg: TrainConfig, final: bool = True) -> dict[str, int]:
    """{model: :func:`window_passes`} of a LOSO run (every fold, then ``final`` if asked) over
    videos of ``lengths`` feature steps, with the windows the train stage builds."""
    spec = WindowSpec.from_preset(preset)
    train = make_train_windows(lengths, annotations, spec)
    test = make_test_windows(lengths, spec)
    train_subject = np.array([subjects[v] for v in train.video], dtype=object)
    test_subject = np.array([subjects[v] for v in test.video], dtype=object)
    out = {f"fold_{s}": window_passes(int((train_subject != s).sum()), int((test_subject == s).sum()), cfg)
           for s in sorted(set(subjects.values()))}
    if final:
        out["final"] = window_passes(len(train), 0, cfg)
    return out


def model_recipe(ctx: StageContext, preset_dir: str | Path | None = None,
                 model_preset: str | None = None) -> tuple[dict[str, Any], TrainConfig]:
    """The resolved IAENet preset and training recipe of the dataset: its model preset (``model_preset``,
    else ``train.model_preset`` or the dataset's ``model_preset``, from ``preset_dir``, default
    ``train.preset_dir`` or ``configs``) with the ``train`` params applied."""
    p = ctx.section("train")
    preset_name = model_preset or p.get("model_preset") or ctx.dataset.get("model_preset")
    if not preset_name:
        raise ConfigError(f"configs/datasets/{ctx.name}.yaml: no model_preset (e.g. iaenet_casme2).")
    preset = resolve_preset(load_model_preset(preset_name, preset_dir or p.get("preset_dir") or "configs"), p)
    return preset, TrainConfig.from_preset(preset, p)


def train_fold(prep: Prepared, job: FoldJob, fold: str,
               writer: ThreadPoolExecutor | None = None) -> tuple[pd.DataFrame | None, Future | None]:
    """Train fold ``fold`` (a held-out subject, or ``final``): write its dvclive logs and, for a LOSO
    fold, its out-of-fold predictions, then its checkpoint, in ``writer``'s thread when given.

    Returns (the out-of-fold predictions, None for ``final``; the checkpoint write's future, None
    when it was written here).
    """
    runs = job.ctx.paths.runs
    name = "final" if fold == "final" else f"fold_{fold}"
    out_dir = runs / name
    train_idx, test_idx = prep.fold_windows(fold)
    live = _Live(runs / "live" / name)
    t0 = time.perf_counter()
    try:
        model, preds, hist = train_model(prep, train_idx, job.preset, job.cfg, fold_seed(job.seed, fold), test_idx,
                                         on_epoch=live, desc=name)
    finally:
        live.close()
    log.info(MODEL_LOG, name, len(train_idx), time.perf_counter() - t0, prep.bank.data.device, hist[-1]["loss"])
    if fold != "final":
        preds.insert(1, "subject", fold)
        preds.insert(2, "fold", fold)
        preds = preds[PREDICTION_COLUMNS]
        write_table(preds, out_dir / "predictions.csv")
    # the checkpoint comes last: a fold is complete (skipped on rerun) only once it is on disk
    write = partial(save_checkpoint, out_dir / "model.pt", model.cpu(), job.preset, job.ckpt_params, job.provenance,
                    extra={"run_digest": job.run_id, "fold": fold, "history": hist,
                           "train_subjects": sorted(set(prep.train_subject[train_idx]))})
    result = None if fold == "final" else preds
    if writer is None:
        write()
        return result, None
    return result, writer.submit(write)


def train_folds(prep: Prepared, job: FoldJob, folds: list[str],
                progress: bool = False) -> dict[str, pd.DataFrame | None]:
    """Train ``folds`` one after another (:func:`train_fold`). Each checkpoint (120 MB for the
    CAS(ME)^2 model, ~0.3-0.5 s to write) is written in a background thread while the next model
    trains (``torch.save`` releases the GIL). Returns {fold: out-of-fold predictions} once every
    checkpoint is on disk; a failed write raises, and a failed fold still lets the others'
    checkpoints finish."""
    out: dict[str, pd.DataFrame | None] = {}
    writes: list[Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="m2es-checkpoint") as writer:
        for fold in tqdm(folds, desc="train folds", unit="fold", disable=not progress):
            for done in writes:      # a failed write stops the run at the next fold, not after the last
                if done.done():
                    done.result()
            out[fold], done = train_fold(prep, job, fold, writer)
            writes.append(done)
    for done in writes:
        done.result()
    return out


def _fold_group(task: VideoTask) -> dict[str, pd.DataFrame | None]:
    """Train the folds ``task.payload["folds"]`` one after another in one process (a
    :func:`pipeline.core.runner.map_videos` task): the process reads the features itself, once,
    instead of receiving them pickled, and refuses features that changed since the driver
    computed the run's digest. Returns {fold: out-of-fold predictions (None for ``final``)}."""
    job: FoldJob = task.payload["job"]
    features, annotations, subjects, provenance = load_inputs(job.ctx, int(job.preset["window"]["feature_stride"]),
                                                              report=False)
    if provenance.get("features_digest") != job.provenance.get("features_digest"):
        raise InputError(f"{job.ctx.paths.features}: features changed while the train stage ran. "
                         "Rerun the train stage (dvc repro train).")
    prep = prepare(features, annotations, subjects, job.preset, resolve_device(job.device))
    return train_folds(prep, job, list(task.payload["folds"]))


def fold_groups(models: list[str], workers: int) -> list[list[str]]:
    """The models each of ``workers`` fold processes trains, in order: process i takes models
    i, i + n, ... (n = the processes that have a model). ``benchmarks/e2e.py`` extrapolates by the
    same split."""
    n = min(workers, len(models))
    return [models[i::n] for i in range(n)]


def fold_devices(device: torch.device, n: int, backend: str, requested: str = "auto") -> list[str]:
    """The device of each of ``n`` fold processes: ``cuda:i`` round-robin over the visible GPUs when
    training on CUDA with local processes; on a dask cluster each worker resolves ``requested``
    (``train.device``) itself (start one worker per GPU, e.g. ``CUDA_VISIBLE_DEVICES=i dask worker``)."""
    if backend == "dask":
        return [requested] * n
    if device.type == "cuda" and torch.cuda.device_count() > 1 and device.index is None:
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(n)]
    return [str(device)] * n


def run(ctx: StageContext) -> None:
    """LOSO training of IAENet on one dataset, then a final model on every subject.

    ``train.fold_workers`` > 1 trains that many folds at once in separate processes (loky, one
    GPU each round-robin when several are visible), or on the dask cluster when
    ``parallel.backend`` is ``dask``; every fold has its own seed, so the results are those of
    the sequential run.
    """
    p = ctx.section()
    preset, cfg = model_recipe(ctx)
    device = resolve_device(str(p.get("device") or "auto"))
    fold_workers = 1 if p.get("fold_workers") is None else int(p["fold_workers"])
    if fold_workers < 1:
        raise ConfigError(f"params.yaml: train.fold_workers must be >= 1 (1: folds one after another), "
                          f"got {fold_workers}.")
    features, annotations, subjects, provenance = load_inputs(ctx, int(preset["window"]["feature_stride"]))
    width = int(next(iter(features.values())).shape[1])
    seed = int(p.get("seed", 0))
    runs = ctx.paths.runs
    backend = "dask" if ctx.parallel.backend == "dask" else "loky"
    # on a dask cluster the workers resolve the device: the driver's may not be theirs
    on_cuda = device.type == "cuda" or (fold_workers > 1 and backend == "dask")
    run_id = digest({"preset": preset, "cfg": cfg.identity(on_cuda), "seed": seed, "provenance": provenance,
                     "annotations": annotations.to_dict("list"), "subjects": subjects, "version": CODE_VERSION})
    folds = sorted(set(subjects.values()))
    only = p.get("folds")
    if only:
        folds = [f for f in folds if f in {str(s) for s in only}]
    if len(set(subjects.values())) < 2:
        raise ConfigError(f"{ctx.name}: leave-one-subject-out needs at least 2 subjects with features, "
                          f"found {len(set(subjects.values()))}.")
    n_params = count_parameters(build_model(preset, width))
    log.info("IAENet preset %s, %d parameters, input width %d, %d folds on %s, %s%s, %d at a time", preset["name"],
             n_params, width, len(folds), device, cfg.precision,
             ", CUDA graphs" if cfg.graphs_on(device.type == "cuda") else "", fold_workers)
    # the recipe of the features the model was trained on, so a copied model.pt spots new videos alone
    pipeline_recipe = {stage: ctx.section(stage) for stage in ("crop", "flow", "features")}
    pipeline_recipe["target_fps"] = ctx.dataset.get("target_fps") or ctx.section("resample").get("target_fps")
    pipeline_recipe["color"] = ctx.dataset.get("color")
    ckpt_params = {"train": p, "seed": seed, "pipeline": pipeline_recipe}
    job = FoldJob(ctx=ctx, preset=preset, cfg=cfg, seed=seed, run_id=run_id, provenance=provenance,
                  ckpt_params=ckpt_params, device=str(device))
    preds_of: dict[str, pd.DataFrame | None] = {}
    todo = []
    for fold in folds + (["final"] if p.get("final_model", True) else []):
        name = "final" if fold == "final" else f"fold_{fold}"
        pred_path = runs / name / "predictions.csv"
        if _done(runs / name / "model.pt", run_id) and (fold == "final" or pred_path.is_file()):
            log.info("%s: complete with the same inputs and params, skipped", name)
            if fold != "final":
                preds_of[fold] = pd.read_csv(pred_path, dtype={"video": str, "subject": str, "fold": str})
            continue
        todo.append(fold)
    if fold_workers == 1 or len(todo) <= 1:
        if todo:
            preds_of.update(train_folds(prepare(features, annotations, subjects, preset, device), job, todo,
                                        progress=True))
    else:
        del features   # each fold process reads its own copy
        absolute = replace(ctx, paths=DataPaths(ctx.paths.name, Path(ctx.paths.root).resolve()))
        groups = fold_groups(todo, fold_workers)
        n = len(groups)
        devices = fold_devices(device, n, backend, str(p.get("device") or "auto"))
        tasks = [VideoTask("folds " + ", ".join(group), None, run_id,
                           {"job": replace(job, ctx=absolute, device=devices[i]), "folds": group})
                 for i, group in enumerate(groups)]
        par = ParallelConfig(backend=backend, n_jobs=n, address=ctx.parallel.address,
                             fail_fast=ctx.parallel.fail_fast)
        log.info("%d folds in %d %s processes on %s", len(todo), n, backend, ", ".join(sorted(set(devices))))
        for group in map_videos(_fold_group, tasks, stage="train folds", parallel=par, unit="process").values():
            preds_of.update(group)
    all_preds = [preds_of[f] for f in folds if preds_of.get(f) is not None]
    preds = pd.concat(all_preds, ignore_index=True) if all_preds else pd.DataFrame(columns=PREDICTION_COLUMNS)
    write_table(preds[PREDICTION_COLUMNS], runs / "predictions.csv")
    log.info("wrote %d predictions of %d folds to %s", len(preds), len(all_preds), runs / "predictions.csv")


def _done(path: Path, run_id: str) -> bool:
    """True when the checkpoint at ``path`` was written by a run with digest ``run_id``."""
    if not path.is_file():
        return False
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable means not done
        return False
    return isinstance(blob, dict) and (blob.get("extra") or {}).get("run_digest") == run_id


main = stage_main("train", run)

if __name__ == "__main__":
    raise SystemExit(main())
