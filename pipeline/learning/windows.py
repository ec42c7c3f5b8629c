"""Sliding windows over per-video features, and IAENet's label assignment.

Frames are 0-based positions at the target fps; intervals are inclusive [onset, offset].
Feature step i covers frames [i*fs, i*fs + clip) (fs = ``feature_stride`` = 2), so a
window of ``steps`` feature steps starting at step a covers frames [a*fs, (a+steps)*fs).

* Training windows start every ``train_step`` frames and are kept when they hold at
  least one interval with >= ``min_inside`` of its length (frames, inclusive) inside;
  only such intervals are labels, in window-relative frames clipped to the window.
* Test windows start every ``test_step`` frames over the whole video, plus one aligned
  to the video's end.
* A video shorter than a window gives one window, padded with zero features; its
  points beyond the video are masked (never merged with another video).

All windows of a run index one feature bank (:class:`FeatureBank`: every video's
features concatenated, plus one zero row used as padding), so a batch is one gather.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from models.blocks import InputStandardize

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

CLASS_IDS = {"macro": 1, "micro": 2}   # 0 = background; logit channel = id - 1
CLASS_NAMES = {v: k for k, v in CLASS_IDS.items()}


@dataclass(frozen=True)
class WindowSpec:
    """Window geometry in frames (from a model preset's ``window`` section)."""

    frames: int = 128
    feature_stride: int = 2
    train_step: int = 32
    test_step: int = 16
    min_inside: float = 0.9

    @classmethod
    def from_preset(cls, preset: Mapping[str, Any]) -> "WindowSpec":
        """Build from ``preset['window']`` and check that the steps are whole feature steps."""
        w = dict(preset["window"])
        spec = cls(frames=int(w["frames"]), feature_stride=int(w["feature_stride"]),
                   train_step=int(w["train_step"]), test_step=int(w["test_step"]),
                   min_inside=float(w["min_inside"]))
        for name in ("frames", "train_step", "test_step"):
            v = getattr(spec, name)
            if v <= 0 or v % spec.feature_stride:
                raise ConfigError(f"model preset {preset.get('name')}: window.{name}={v} must be a positive "
                                  f"multiple of feature_stride={spec.feature_stride}.")
        if not 0 < spec.min_inside <= 1:
            raise ConfigError(f"model preset {preset.get('name')}: window.min_inside must be in (0, 1].")
        return spec

    @property
    def steps(self) -> int:
        """Feature steps per window."""
        return self.frames // self.feature_stride


@dataclass
class WindowSet:
    """A set of windows: video, start (feature step), valid steps; training sets add labels.

    ``boxes`` [W, K, 2] window-relative frames (clipped), ``box_labels`` [W, K] class ids
    (0 = padding slot).
    """

    video: np.ndarray
    start: np.ndarray
    valid: np.ndarray
    boxes: np.ndarray | None = None
    box_labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.start)

    def subset(self, keep: np.ndarray) -> "WindowSet":
        """The windows where ``keep`` (bool mask or index array) selects."""
        return WindowSet(self.video[keep], self.start[keep], self.valid[keep],
                         None if self.boxes is None else self.boxes[keep],
                         None if self.box_labels is None else self.box_labels[keep])

    @staticmethod
    def concat(sets: list["WindowSet"], max_boxes: int | None = None) -> "WindowSet":
        """Concatenate window sets (box slots padded to the largest K)."""
        if not sets:
            return WindowSet(np.array([], dtype=object), np.zeros(0, np.int64), np.zeros(0, np.int64))
        video = np.concatenate([s.video for s in sets])
        start = np.concatenate([s.start for s in sets])
        valid = np.concatenate([s.valid for s in sets])
        if sets[0].boxes is None:
            return WindowSet(video, start, valid)
        k = max_boxes or max(1, max(s.boxes.shape[1] for s in sets))
        boxes = np.zeros((len(start), k, 2), np.float32)
        labels = np.zeros((len(start), k), np.int64)
        i = 0
        for s in sets:
            n, kk = s.boxes.shape[:2]
            boxes[i:i + n, :kk] = s.boxes
            labels[i:i + n, :kk] = s.box_labels
            i += n
        return WindowSet(video, start, valid, boxes, labels)


def grid_starts(n_steps: int, spec: WindowSpec, step_frames: int, align_end: bool) -> np.ndarray:
    """Window starts (feature steps) every ``step_frames`` frames; [0] for a short video.

    ``align_end`` adds a window ending at the last feature step when the grid misses it.
    """
    if n_steps <= 0:
        return np.zeros(0, np.int64)
    if n_steps <= spec.steps:
        return np.zeros(1, np.int64)
    hop = step_frames // spec.feature_stride
    starts = list(range(0, n_steps - spec.steps + 1, hop))
    if align_end and starts[-1] != n_steps - spec.steps:
        starts.append(n_steps - spec.steps)
    return np.asarray(starts, np.int64)


def inside_ratio(onset: np.ndarray, offset: np.ndarray, win_start: int, win_frames: int) -> np.ndarray:
    """Share of each inclusive interval's frames that lie inside frames [win_start, win_start + win_frames)."""
    onset = np.asarray(onset, np.float64)
    offset = np.asarray(offset, np.float64)
    inter = np.minimum(offset, win_start + win_frames - 1) - np.maximum(onset, win_start) + 1
    return np.clip(inter, 0, None) / (offset - onset + 1)


def window_labels(onset: np.ndarray, offset: np.ndarray, cls: np.ndarray, start_frame: int,
                  spec: WindowSpec) -> tuple[np.ndarray, np.ndarray]:
    """The label intervals of a window: those with >= ``min_inside`` inside, relative and clipped.

    Returns (boxes [K, 2] float frames relative to ``start_frame`` clipped to
    [0, frames - 1], class ids [K]).
    """
    ratio = inside_ratio(onset, offset, start_frame, spec.frames)
    keep = ratio >= spec.min_inside - 1e-9
    rel = np.stack([np.asarray(onset)[keep], np.asarray(offset)[keep]], axis=1).astype(np.float64) - start_frame
    return np.clip(rel, 0, spec.frames - 1).astype(np.float32), np.asarray(cls)[keep].astype(np.int64)


def video_intervals(annotations: pd.DataFrame, video: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(onset, offset, class id) arrays of ``video`` from an annotations table."""
    rows = annotations[annotations["video"] == video]
    return (rows["onset"].to_numpy(np.int64), rows["offset"].to_numpy(np.int64),
            rows["type"].map(CLASS_IDS).to_numpy(np.int64))


def make_train_windows(lengths: Mapping[str, int], annotations: pd.DataFrame, spec: WindowSpec) -> WindowSet:
    """Training windows of every video in ``lengths`` (video → feature steps) that holds a label."""
    sets = []
    for video, n in lengths.items():
        onset, offset, cls = video_intervals(annotations, video)
        if len(onset) == 0:
            continue
        starts, boxes, labels = [], [], []
        for s in grid_starts(n, spec, spec.train_step, align_end=False):
            b, c = window_labels(onset, offset, cls, int(s) * spec.feature_stride, spec)
            if len(c):
                starts.append(int(s))
                boxes.append(b)
                labels.append(c)
        if not starts:
            continue
        k = max(len(c) for c in labels)
        bx = np.zeros((len(starts), k, 2), np.float32)
        lb = np.zeros((len(starts), k), np.int64)
        for i, (b, c) in enumerate(zip(boxes, labels)):
            bx[i, :len(c)] = b
            lb[i, :len(c)] = c
        st = np.asarray(starts, np.int64)
        sets.append(WindowSet(np.array([video] * len(st), dtype=object), st,
                              np.minimum(spec.steps, n - st), bx, lb))
    return WindowSet.concat(sets)


def make_test_windows(lengths: Mapping[str, int], spec: WindowSpec) -> WindowSet:
    """Test windows of every video in ``lengths`` (video → feature steps)."""
    sets = []
    for video, n in lengths.items():
        st = grid_starts(n, spec, spec.test_step, align_end=True)
        if len(st):
            sets.append(WindowSet(np.array([video] * len(st), dtype=object), st, np.minimum(spec.steps, n - st)))
    return WindowSet.concat(sets)


@dataclass
class PointGrid:
    """Points of all levels of a window: position (frames), stride (frames), regression range."""

    positions: torch.Tensor   # [P] float
    strides: torch.Tensor     # [P] float
    ranges: torch.Tensor      # [P, 2] float, inclusive

    @classmethod
    def from_preset(cls, preset: Mapping[str, Any]) -> "PointGrid":
        """Point i of a level with stride s sits at frame i*s + floor(s/2)."""
        frames = int(preset["window"]["frames"])
        pos, strd, rng = [], [], []
        for s, r in zip(preset["levels"]["strides"], preset["levels"]["ranges"]):
            s = int(s)
            n = frames // s
            pos.append(torch.arange(n, dtype=torch.float32) * s + s // 2)
            strd.append(torch.full((n,), float(s)))
            rng.append(torch.tensor([float(r[0]), float(r[1])]).expand(n, 2))
        return cls(torch.cat(pos), torch.cat(strd), torch.cat(rng))

    def to(self, device: torch.device | str) -> "PointGrid":
        """A copy on ``device``."""
        return PointGrid(self.positions.to(device), self.strides.to(device), self.ranges.to(device))

    def __len__(self) -> int:
        return len(self.positions)


def assign_labels(boxes: torch.Tensor, labels: torch.Tensor, grid: PointGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """IAENet's label assignment for a batch of windows.

    ``boxes`` [B, K, 2] window-relative frames, ``labels`` [B, K] class ids (0 = empty
    slot). A point is positive for an interval when strictly inside it (both distances
    > 0) and the larger distance lies in the point's level range (both ends inclusive);
    among qualifying intervals the shortest wins (first on ties). Returns class ids
    [B, P] and (left, right) targets [B, P, 2] divided by the point's stride (0 for
    background).
    """
    pos = grid.positions.to(boxes.device)[None, :, None]                  # [1, P, 1]
    left = pos - boxes[:, None, :, 0]                                      # [B, P, K]
    right = boxes[:, None, :, 1] - pos
    m = torch.maximum(left, right)
    lo = grid.ranges[:, 0].to(boxes.device)[None, :, None]
    hi = grid.ranges[:, 1].to(boxes.device)[None, :, None]
    ok = (torch.minimum(left, right) > 0) & (m >= lo) & (m <= hi) & (labels[:, None, :] > 0)
    length = (boxes[..., 1] - boxes[..., 0])[:, None, :].expand_as(left)
    length = torch.where(ok, length, torch.full_like(length, float("inf")))
    best = length.argmin(dim=-1, keepdim=True)                             # [B, P, 1]
    has = ok.any(dim=-1)
    won = labels[:, None, :].expand_as(left).gather(-1, best)[..., 0]
    cls = torch.where(has, won, torch.zeros_like(won))
    tgt = torch.stack([left.gather(-1, best)[..., 0], right.gather(-1, best)[..., 0]], dim=-1)
    tgt = tgt / grid.strides.to(boxes.device)[None, :, None]
    tgt = torch.where(has[..., None], tgt, torch.zeros_like(tgt))
    return cls.long(), tgt


def point_mask(valid_steps: torch.Tensor, grid: PointGrid, feature_stride: int) -> torch.Tensor:
    """[W, P] True for points inside the video (position < valid frames of the window)."""
    return grid.positions.to(valid_steps.device)[None, :] < (valid_steps[:, None] * feature_stride).float()


def per_video_norm(preset: Mapping[str, Any]) -> str:
    """How a model preset normalises each video's features before windows are cut
    (``model.input_norm.per_video``: ``none``, ``median`` or ``robust``; :func:`normalise_video`)."""
    norm = preset["model"].get("input_norm") or {}
    how = str(norm.get("per_video", "none"))
    if how not in InputStandardize.PER_VIDEO:
        raise ConfigError(f"model preset {preset.get('name', '?')}: input_norm.per_video '{how}' is not one of "
                          f"{', '.join(InputStandardize.PER_VIDEO)}.")
    return how


def normalise_video(arr: np.ndarray, how: str) -> np.ndarray:
    """``arr`` [T, D] as it is (``none``), minus its per-channel median (``median``), or that divided by
    its per-channel noise scale, 1.4826 x the median absolute deviation (``robust``; a channel with no
    spread is only centred)."""
    if how == "none" or not len(arr):
        return arr
    out = np.asarray(arr, np.float32) - np.median(arr, axis=0, keepdims=True).astype(np.float32)
    if how == "robust":
        scale = 1.4826 * np.median(np.abs(out), axis=0, keepdims=True)
        out = out / np.where(scale > 1e-6, scale, 1.0).astype(np.float32)
    return out


class FeatureBank:
    """Every video's features in one tensor [M + 1, D]; the last row is zeros (padding).
    ``per_video``: :func:`normalise_video` applied to each video first (a model preset's :func:`per_video_norm`)."""

    def __init__(self, features: Mapping[str, np.ndarray], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, per_video: str = "none") -> None:
        if not features:
            raise ConfigError("FeatureBank: no videos with features.")
        widths = {v: a.shape[1] for v, a in features.items()}
        if len(set(widths.values())) != 1:
            raise ConfigError(f"FeatureBank: videos have different feature widths {sorted(set(widths.values()))}; "
                              "recompute features with one backbone.")
        self.offsets: dict[str, int] = {}
        self.lengths: dict[str, int] = {}
        parts, at = [], 0
        for video, arr in features.items():
            self.offsets[video] = at
            self.lengths[video] = int(arr.shape[0])
            parts.append(torch.from_numpy(np.ascontiguousarray(normalise_video(arr, per_video), dtype=np.float32)))
            at += arr.shape[0]
        d = next(iter(widths.values()))
        parts.append(torch.zeros(1, d))
        self.pad_row = at
        self.width = int(d)
        self.data = torch.cat(parts).to(device=device, dtype=dtype)

    def video_rows(self, video: str) -> torch.Tensor:
        """The features [T, D] of one video (a view of the bank)."""
        at = self.offsets[video]
        return self.data[at:at + self.lengths[video]]

    def rows(self, windows: WindowSet, steps: int) -> torch.Tensor:
        """Row indices [W, steps] (long, on the bank's device) of each window; padding → zero row."""
        off = np.array([self.offsets[v] for v in windows.video], np.int64)
        ar = np.arange(steps, dtype=np.int64)[None, :]
        idx = off[:, None] + windows.start[:, None] + ar
        idx = np.where(ar < windows.valid[:, None], idx, self.pad_row)
        return torch.from_numpy(idx).to(self.data.device)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Features [B, steps, D] of a batch of row-index windows."""
        return self.data[rows]
