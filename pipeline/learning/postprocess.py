"""From IAENet outputs to interval predictions: decode, 1-D NMS / weighted boxes fusion,
per-class top-k, minimum length; and :func:`predict_video` for one video's features.

Decoding (published code): scores = sigmoid(logits); each point proposes its best
class (``class_per_point: argmax``; ``all`` proposes both); distances x stride;
interval = point ± distance, clipped to the window's frames inside the video
([0, valid frames - 1]), shifted by the window's start frame.

Suppression per video and class (``inference`` section of the model preset):
* ``nms``: greedy 1-D NMS, a candidate is dropped when its IoU with a kept one
  exceeds ``iou``; at most ``top_k`` kept; then intervals with
  ``offset - onset < min_length`` are dropped (the published order). Equal scores:
  ``nms_ties: later`` takes the later candidate first (published: the reverse of an
  ascending argsort), ``earlier`` the earlier one.
* ``wbf``: candidates below the class's ``score_floor`` are skipped; in descending
  score order each joins the fused box it overlaps best with IoU > ``iou`` or starts a
  new one; a fused box's ends are the score**power-weighted mean of its members' and
  its score their mean score**power (a box that never merged keeps its own score with
  ``wbf_unmerged_score: raw``, published, or gets score**power with ``power``); then
  short intervals are dropped, and at most ``top_k`` kept per class when ``wbf_top_k``
  is true (the published code keeps all).
* ``wbf_from_epoch`` (with ``method: wbf``): predictions after fewer epochs than this use
  ``nms`` (published SAMM-LV: NMS for its 0-based epochs < 15, i.e. up to m2es's epoch 15,
  WBF from epoch 16); null: WBF at every epoch. The epoch is the count of epochs trained
  (``loop.py``: epoch + 1; ``m2es spot``: the final model's last); none given: the method.
A key missing from a preset (checkpoints from before it existed) takes m2es's earlier
behaviour: WBF every epoch, WBF capped at ``top_k``, unmerged scores powered, earlier
proposal first on ties. IoU here is continuous: intersection / union of [onset, offset]
with length offset - onset. Output onset/offset are rounded half up to frame indices.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from pipeline.errors import ConfigError
from pipeline.learning.windows import (CLASS_NAMES, FeatureBank, PointGrid, WindowSet, WindowSpec, per_video_norm,
                                       make_test_windows)

log = logging.getLogger(__name__)

PRED_COLUMNS = ["video", "onset", "offset", "type", "score"]


def iou_1d(onset: float, offset: float, onsets: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Continuous IoU of one interval against many (0 where the union is empty)."""
    inter = np.maximum(np.minimum(offset, offsets) - np.maximum(onset, onsets), 0)
    union = (offset - onset) + (offsets - onsets) - inter
    # the dtype of inter / union (float32 stays float32), without the cost of an errstate block
    out = np.zeros(np.shape(union), np.result_type(inter, union, 0.5))
    return np.divide(inter, union, out=out, where=union > 0)


#: ``inference`` keys of the suppression switches, their allowed values and the value a preset without the key
#: gets (m2es's behaviour before the switches existed; the paper presets set the published ones)
NMS_TIES = ("earlier", "later")
UNMERGED_SCORES = ("power", "raw")
SWITCH_DEFAULTS = {"nms_ties": "earlier", "wbf_top_k": True, "wbf_unmerged_score": "power", "wbf_from_epoch": None}


def nms_1d(onsets: np.ndarray, offsets: np.ndarray, scores: np.ndarray, iou: float,
           top_k: int | None = None, ties: str = "earlier") -> np.ndarray:
    """Greedy 1-D NMS: indices kept, best first; suppress IoU > ``iou``; stop at ``top_k``. Equal scores:
    ``earlier`` takes the earlier index first, ``later`` the later one (the published code's
    ``scores.argsort()[::-1]``)."""
    if ties == "later":
        order = np.argsort(np.asarray(scores), kind="stable")[::-1]
    elif ties == "earlier":
        order = np.argsort(-np.asarray(scores), kind="stable")
    else:
        raise ConfigError(f"inference.nms_ties '{ties}' is not one of {', '.join(NMS_TIES)}. Fix the model preset.")
    keep: list[int] = []
    while order.size and (top_k is None or len(keep) < top_k):
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        order = rest[iou_1d(onsets[i], offsets[i], onsets[rest], offsets[rest]) <= iou]
    return np.asarray(keep, np.int64)


def wbf_1d(onsets: np.ndarray, offsets: np.ndarray, scores: np.ndarray, iou: float, floor: float = 0.0,
           power: float = 1.0, unmerged: str = "power") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D weighted boxes fusion of one class: (onsets, offsets, scores) of fused boxes, best first.
    A box that merged nothing scores its member's score**power (``unmerged: power``) or its raw score
    (``raw``, the published code)."""
    if unmerged not in UNMERGED_SCORES:
        raise ConfigError(f"inference.wbf_unmerged_score '{unmerged}' is not one of {', '.join(UNMERGED_SCORES)}. "
                          "Fix the model preset.")
    onsets, offsets, scores = (np.asarray(a, np.float64) for a in (onsets, offsets, scores))
    sel = scores >= floor
    onsets, offsets, scores = onsets[sel], offsets[sel], scores[sel]
    order = np.argsort(-scores, kind="stable")
    n = len(order)
    f_on, f_off = np.zeros(n), np.zeros(n)           # current fused ends
    s_w, s_on, s_off, cnt = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    own = np.zeros(n)                                 # each box's first member's raw score
    k = 0
    for j in order:
        w = scores[j] ** power
        best = -1
        if k:
            ious = iou_1d(onsets[j], offsets[j], f_on[:k], f_off[:k])
            b = int(np.argmax(ious))
            if ious[b] > iou:
                best = b
        if best < 0:
            best = k
            own[k] = scores[j]
            k += 1
        s_w[best] += w
        s_on[best] += w * onsets[j]
        s_off[best] += w * offsets[j]
        cnt[best] += 1
        f_on[best] = s_on[best] / s_w[best]
        f_off[best] = s_off[best] / s_w[best]
    fused_score = s_w[:k] / np.maximum(cnt[:k], 1)
    if unmerged == "raw":   # a one-member box keeps its member's score (its ends are the member's either way)
        fused_score = np.where(cnt[:k] == 1, own[:k], fused_score)
    out = np.argsort(-fused_score, kind="stable")
    return f_on[:k][out], f_off[:k][out], fused_score[out]


def check_inference(inference: Mapping[str, Any]) -> None:
    """Refuse a bad value of a suppression switch before any model trains (ConfigError naming the key)."""
    method_at(inference, None)
    for key, allowed in (("nms_ties", NMS_TIES), ("wbf_unmerged_score", UNMERGED_SCORES), ("wbf_top_k", (True, False))):
        value = inference.get(key, SWITCH_DEFAULTS[key])
        if not any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed):
            raise ConfigError(f"inference.{key} = {value!r} is not one of {', '.join(map(str, allowed))}. "
                              "Fix the model preset.")


def method_at(inference: Mapping[str, Any], epoch: int | None) -> str:
    """The suppression method of predictions made after ``epoch`` epochs (1-based count; None: the
    preset's ``method``): ``nms`` before ``wbf_from_epoch`` when the method is ``wbf`` and that key is set."""
    method = str(inference.get("method", "nms"))
    start = inference.get("wbf_from_epoch", SWITCH_DEFAULTS["wbf_from_epoch"])
    if start is not None and (isinstance(start, bool) or not isinstance(start, int)):
        raise ConfigError(f"inference.wbf_from_epoch = {start!r}; use an epoch number (1-based) or null. "
                          "Fix the model preset.")
    if method == "wbf" and start is not None and epoch is not None and epoch < start:
        return "nms"
    return method


def suppress_arrays(onsets: np.ndarray, offsets: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                    inference: Mapping[str, Any],
                    epoch: int | None = None) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Per-class suppression of one video's candidates → [(type, onsets, offsets, scores)] per class,
    classes in id order, intervals best first (the rows of :func:`suppress`). ``epoch``: the epochs the
    model has trained (:func:`method_at`)."""
    method = method_at(inference, epoch)
    iou = float(inference.get("iou", 0.01))
    top_k = int(inference.get("top_k", 30))
    min_len = float(inference.get("min_length", 4))
    floors = dict(inference.get("score_floor") or {})
    power = float(inference.get("wbf_power", 1.0))
    ties = str(inference.get("nms_ties", SWITCH_DEFAULTS["nms_ties"]))
    unmerged = str(inference.get("wbf_unmerged_score", SWITCH_DEFAULTS["wbf_unmerged_score"]))
    cap = inference.get("wbf_top_k", SWITCH_DEFAULTS["wbf_top_k"])
    check_inference(inference)
    out = []
    for cid, name in sorted(CLASS_NAMES.items()):
        m = classes == cid
        on, off, sc = onsets[m], offsets[m], scores[m]
        if method == "nms":
            keep = nms_1d(on, off, sc, iou, top_k, ties)
            on, off, sc = on[keep], off[keep], sc[keep]
            long_enough = (off - on) >= min_len
            on, off, sc = on[long_enough], off[long_enough], sc[long_enough]
        elif method == "wbf":
            on, off, sc = wbf_1d(on, off, sc, iou, float(floors.get(name, 0.0)), power, unmerged)
            long_enough = (off - on) >= min_len
            on, off, sc = on[long_enough], off[long_enough], sc[long_enough]
            if cap:
                on, off, sc = on[:top_k], off[:top_k], sc[:top_k]
        else:
            raise ConfigError(f"inference.method '{method}' is not one of nms, wbf. Fix the model preset.")
        out.append((name, on, off, sc))
    return out


def _frame(parts: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One DataFrame video, onset, offset, type, score from (video, type, onsets, offsets, scores) parts."""
    return pd.DataFrame({   # dtype=str: pandas' own string dtype, also for no rows
        "video": pd.Series([p[0] for p in parts for _ in range(len(p[2]))], dtype=str),
        "onset": np.concatenate([p[2] for p in parts]), "offset": np.concatenate([p[3] for p in parts]),
        "type": pd.Series([p[1] for p in parts for _ in range(len(p[2]))], dtype=str),
        "score": np.concatenate([p[4] for p in parts])})


def suppress(onsets: np.ndarray, offsets: np.ndarray, scores: np.ndarray, classes: np.ndarray,
             inference: Mapping[str, Any], epoch: int | None = None) -> pd.DataFrame:
    """Per-class suppression of one video's candidates → DataFrame onset, offset, type, score."""
    parts = [("", *p) for p in suppress_arrays(onsets, offsets, scores, classes, inference, epoch)]
    return _frame(parts).drop(columns="video")


def decode(logits: torch.Tensor, dists: torch.Tensor, start_frames: np.ndarray, valid_frames: np.ndarray,
           grid: PointGrid, class_per_point: str = "argmax") -> dict[str, np.ndarray]:
    """Candidates of a batch of windows (CPU numpy): window index, onset, offset, score, class id."""
    scores = torch.sigmoid(logits.float()).cpu().numpy()                 # [W, P, C]
    d = dists.float().cpu().numpy() * grid.strides.cpu().numpy()[None, :, None]
    pos = grid.positions.cpu().numpy()[None, :]
    valid = np.asarray(valid_frames, np.float64)[:, None]
    onset = np.clip(pos - d[..., 0], 0, valid - 1) + np.asarray(start_frames)[:, None]
    offset = np.clip(pos + d[..., 1], 0, valid - 1) + np.asarray(start_frames)[:, None]
    inside = np.broadcast_to(pos < valid, onset.shape)
    win = np.broadcast_to(np.arange(len(onset))[:, None], onset.shape)
    if class_per_point == "argmax":
        cls = scores.argmax(-1)
        sc = np.take_along_axis(scores, cls[..., None], -1)[..., 0]
        return {"window": win[inside], "onset": onset[inside], "offset": offset[inside],
                "score": sc[inside], "class": cls[inside] + 1}
    if class_per_point == "all":
        c = scores.shape[-1]
        return {"window": np.repeat(win[inside], c), "onset": np.repeat(onset[inside], c),
                "offset": np.repeat(offset[inside], c), "score": scores[inside].reshape(-1),
                "class": np.tile(np.arange(1, c + 1), int(inside.sum()))}
    raise ConfigError(f"inference.class_per_point '{class_per_point}' is not one of argmax, all.")


@torch.no_grad()
def run_windows(model: torch.nn.Module, bank: FeatureBank, windows: WindowSet, steps: int, batch_size: int = 512,
                precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Forward every window (eval mode) → (logits [W, P, C], distances [W, P, 2]) on the CPU."""
    was_training = model.training
    model.eval()
    rows = bank.rows(windows, steps)
    device = bank.data.device
    logits, dists = [], []
    for i in range(0, len(windows), batch_size):
        with autocast(device, precision):
            lg, ds = model(bank.gather(rows[i:i + batch_size]))
        logits.append(lg.float().cpu())
        dists.append(ds.float().cpu())
    model.train(was_training)
    if not logits:
        p = getattr(model, "num_points", 0)
        return torch.zeros(0, p, 2), torch.zeros(0, p, 2)
    return torch.cat(logits), torch.cat(dists)


def autocast(device: torch.device | str, precision: str, cache: bool = True):
    """bf16 autocast when ``precision == 'bf16'``, otherwise a disabled autocast context.
    ``cache=False`` while a CUDA graph is captured (casts of the weights are then recorded,
    not kept)."""
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"train.precision '{precision}' is not one of fp32, bf16.")
    dev = torch.device(device).type
    return torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=cache)


def predictions_from_outputs(logits: torch.Tensor, dists: torch.Tensor, windows: WindowSet, spec: WindowSpec,
                             grid: PointGrid, inference: Mapping[str, Any], epoch: int | None = None) -> pd.DataFrame:
    """Decode and suppress the outputs of ``windows`` → predictions per video (PRED_COLUMNS). ``epoch``: the
    epochs the model has trained (the NMS-then-WBF schedule, :func:`method_at`)."""
    cand = decode(logits, dists, windows.start * spec.feature_stride, windows.valid * spec.feature_stride, grid,
                  str(inference.get("class_per_point", "argmax")))
    code, videos = pd.factorize(windows.video)          # videos in order of first appearance
    if not len(videos):
        return pd.DataFrame(columns=PRED_COLUMNS)
    # each video's candidates in their order (a stable sort by video), as one slice per video
    cand_code = code[cand["window"]]
    order = np.argsort(cand_code, kind="stable")
    bounds = np.searchsorted(cand_code[order], np.arange(len(videos) + 1))
    parts = []
    for k, video in enumerate(videos):
        sel = order[bounds[k]:bounds[k + 1]]
        parts += [(video, *p) for p in suppress_arrays(cand["onset"][sel], cand["offset"][sel], cand["score"][sel],
                                                       cand["class"][sel], inference, epoch)]
    df = _frame(parts)
    df["onset"] = np.floor(df["onset"].to_numpy(np.float64) + 0.5).astype(np.int64)
    df["offset"] = np.floor(df["offset"].to_numpy(np.float64) + 0.5).astype(np.int64)
    return df[PRED_COLUMNS]


def predict_video(model: torch.nn.Module, features: np.ndarray | torch.Tensor, preset: Mapping[str, Any],
                  video: str = "video", batch_size: int = 512, precision: str = "fp32",
                  device: torch.device | str | None = None, epoch: int | None = None) -> pd.DataFrame:
    """Spot intervals in one video: ``features`` [N, D] (rgb and flow concatenated) → DataFrame
    video, onset, offset, type, score (frames of the video, inclusive), using the
    preset's window geometry and ``inference`` settings. The model's device is used
    unless ``device`` is given. ``epoch``: the epochs the model has trained (``m2es spot``: the
    final model's last), which picks NMS or WBF where the preset schedules them (:func:`method_at`).
    """
    feats = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if feats.ndim != 2:
        raise ConfigError(f"predict_video({video}): features must be [N, D], got shape {feats.shape}.")
    if device is None:
        device = next(model.parameters()).device
    spec = WindowSpec.from_preset(preset)
    grid = PointGrid.from_preset(preset)
    bank = FeatureBank({video: feats}, device=device, per_video=per_video_norm(preset))
    windows = make_test_windows(bank.lengths, spec)
    logits, dists = run_windows(model, bank, windows, spec.steps, batch_size, precision)
    return predictions_from_outputs(logits, dists, windows, spec, grid, preset["inference"], epoch)
