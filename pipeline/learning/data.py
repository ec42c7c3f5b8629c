"""The train stage's inputs: features, annotations and subjects read, then put on the device.

:func:`load_inputs` reads a dataset's features (``features/<video>.h5``, through
:func:`pipeline.io.artifacts.read_features`), ``resample/annotations.csv`` and
``resample/videos.csv``; :func:`prepare` builds what every fold shares on the training
device (:class:`Prepared`): the feature bank, the training windows with their labels,
assigned once, and the test windows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from pipeline.core.params import digest
from pipeline.core.stage import StageContext
from pipeline.errors import InputError
from pipeline.io.artifacts import read_features
from pipeline.io.h5io import COMPLETE_ATTR, DIGEST_ATTR
from pipeline.io.tables import read_annotations, read_table
from pipeline.learning.windows import (FeatureBank, PointGrid, WindowSet, WindowSpec, assign_labels,
                                       per_video_norm, make_test_windows, make_train_windows,
                                       point_mask)

log = logging.getLogger(__name__)


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

    def training_rows(self, train_idx: np.ndarray) -> torch.Tensor:
        """Every feature row [N, D] of the videos whose subjects own the training windows
        ``train_idx`` (what a model's input statistics may be computed from: no held-out video)."""
        subjects = set(self.train_subject[np.asarray(train_idx, np.int64)])
        videos = [v for v in self.bank.offsets if self.subjects.get(v) in subjects]
        return torch.cat([self.bank.video_rows(v) for v in videos])


def prepare(features: Mapping[str, np.ndarray], annotations: pd.DataFrame, subjects: Mapping[str, str],
            preset: Mapping[str, Any], device: torch.device | str = "cpu") -> Prepared:
    """Build the feature bank, the training windows with labels and the test windows."""
    spec = WindowSpec.from_preset(preset)
    grid = PointGrid.from_preset(preset)
    bank = FeatureBank(features, device=device, per_video=per_video_norm(preset))
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
