"""Stage ``evaluate@<dataset>``: MEGC-style F1 of the out-of-fold predictions, three protocols.

Reads ``data/<ds>/runs/predictions.csv`` (video, subject, fold, epoch, onset, offset,
type, score), ``data/<ds>/resample/{videos,annotations,frames}.csv`` (and
``distractors.csv`` where the dataset lists its distractors: the synthetic presets) and
the dvclive logs under ``data/<ds>/runs/live/``. Writes:

* ``metrics/<ds>.json`` (the DVC metrics, committed to git): the headline only (:func:`headline`):
  ``{"<ds>": {"f1": ..., "base": ...}}``, the cross-fold overall F1 under the default counting and the
  non-learned baseline's;
* ``data/<ds>/evaluate/details.json``: everything: per counting rule, per protocol (``cross-fold``,
  ``paper-optimistic``, ``fixed``) and per type (+ ``overall``): f1, precision, recall,
  tp, fp, fn, n_pred, n_gt; the chosen thresholds and epoch; ground-truth counts; the
  ``baseline`` block; ``features`` (backbone and weights, from the train stage's checkpoints),
  ``reproduction`` (each published switch, its value and whether it is the published one) and
  ``caveats`` (:func:`pipeline.scoring.caveats.caveat_lines`, also in summary.md, thresholds.json
  and every picture title);
* ``data/<ds>/evaluate/thresholds.json``: thresholds and epoch chosen on all subjects'
  out-of-fold predictions, for new videos (``m2es spot``);
* ``data/<ds>/evaluate/f1_vs_threshold.csv``, ``per_subject.csv``, ``timelines/*.png``,
  ``training_curves.csv`` + ``.png``, ``predictions_<ds>_megc.csv`` (final intervals of
  the default protocol, dataset frame numbering), ``summary.md``;
* ``data/<ds>/evaluate/errors.csv`` (each false positive of the default protocol labelled
  by what it overlaps most, each miss by type and length), ``errors_by_length.csv`` (the
  FP share per predicted-length bin, misses per ground-truth length bin), ``errors.png``
  and the ``Error analysis`` section of ``summary.md`` (:mod:`pipeline.scoring.errors`).

It also reads ``data/<ds>/baseline/predictions.csv`` and ``method.json`` (stage ``baseline``, a
non-learned spotter) and runs the same protocols on them under the default counting: the
``baseline`` block of the metrics and a table of ``summary.md`` put it beside IAENet. Without
that file (evaluate run alone on an older tree) it warns and writes neither.

See :mod:`pipeline.scoring.metrics` (matching, counting rules) and :mod:`pipeline.scoring.protocols`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pipeline.core.paths import DataPaths
from pipeline.core.stage import StageContext, stage_main
from pipeline.errors import InputError
from pipeline.io.artifacts import read_ground_truth, read_predictions
from pipeline.io.atomic import write_json, write_text
from pipeline.io.tables import DISTRACTORS_FILE, TYPES, read_distractors, read_frames, read_videos, write_table
from pipeline.scoring import report
from pipeline.scoring.caveats import (Silent, caveat_lines, feature_source, read_run_record, reproduction,
                                      silent_types)
from pipeline.scoring.errors import analyse_errors, errors_markdown, plot_errors
from pipeline.scoring.metrics import OVERALL, Counts, Matching, count_by_type, counts_by_group, match
from pipeline.scoring.params import EvaluateParams
from pipeline.scoring.protocols import (OUTPUT_NAMES, Choice, Cube, build_cube, f1_curve, paper_search,
                                        save_thresholds, select_cross_fold, select_fixed, select_paper,
                                        selection_mask)

log = logging.getLogger(__name__)

DETAILS_FILE = "details.json"  # data/<ds>/evaluate/details.json: every figure (metrics/<ds>.json: the headline)


def natural_key(value: str) -> tuple:
    """Sort key that orders ``s2`` before ``s10`` and ``2`` before ``10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(value)))


@dataclass
class ProtocolResult:
    """One protocol under one counting rule: the per-subject choices, kept rows and counts."""

    protocol: str
    counting: str
    choices: dict[str, Choice]
    mask: np.ndarray
    counts: dict[str, Counts]

    @property
    def name(self) -> str:
        """The name in outputs (``paper`` is ``paper-optimistic``)."""
        return OUTPUT_NAMES[self.protocol]


@dataclass
class Evaluation:
    """Everything computed for one counting rule."""

    counting: str
    matching: Matching
    cube: Cube
    all_subjects: tuple[Choice, float]
    results: dict[str, ProtocolResult]
    paper_search: dict[str, Any] | None = None   # the published search's settings, when ``paper`` ran it


def evaluate_predictions(pred: pd.DataFrame, gt: pd.DataFrame, subjects: Sequence[str], settings: EvaluateParams,
                         counting: str) -> Evaluation:
    """Match once, build the threshold cube, and run every protocol of ``settings`` under ``counting``.

    The all-subjects choice (``thresholds.json``) is m2es's own search on the shared grid; the ``paper``
    protocol is the same choice unless ``evaluate.paper_search`` asks for another search (the published
    one: :func:`pipeline.scoring.protocols.paper_search`)."""
    epochs = sorted(int(e) for e in pred["epoch"].unique()) or [0]
    matching = match(pred, gt, settings.iou_threshold, counting)
    cube = build_cube(pred, gt, matching, subjects, epochs, settings.grid)
    paper_choice = select_paper(cube)
    search = settings.search
    results: dict[str, ProtocolResult] = {}
    for protocol in settings.protocols:
        if protocol == "paper" and not search.shared:
            choice, _, mask = paper_search(pred, gt, matching, subjects, epochs, search)
            choices = {s: choice for s in subjects}
            results[protocol] = ProtocolResult(protocol, counting, choices, mask,
                                               count_by_type(pred, gt, matching, mask))
            continue
        if protocol == "paper":
            choices = {s: paper_choice[0] for s in subjects}
        elif protocol == "cross-fold":
            choices = select_cross_fold(cube, settings.cross_fold_ties)
        else:
            fixed = select_fixed(settings.fixed, epochs)
            choices = {s: fixed for s in subjects}
        mask = selection_mask(pred, choices)
        results[protocol] = ProtocolResult(protocol, counting, choices, mask, count_by_type(pred, gt, matching, mask))
    return Evaluation(counting, matching, cube, paper_choice, results,
                      None if search.shared else search.as_dict())


def _protocol_block(res: ProtocolResult, ev: Evaluation) -> dict[str, Any]:
    """The JSON block of one protocol."""
    block: dict[str, Any] = {"optimistic": res.protocol == "paper"}
    block.update({k: v.as_dict() for k, v in res.counts.items()})
    if res.protocol == "cross-fold":
        chosen = list(res.choices.values())
        block["selection"] = {
            "per_subject": {"epoch": report.spread([c.epoch for c in chosen]),
                            **{t: report.spread([c.thresholds[t] for c in chosen]) for t in TYPES}},
            "all_subjects": {**ev.all_subjects[0].as_dict(), "f1_on_selection_set": round(ev.all_subjects[1], 6)},
        }
    else:
        block["selection"] = next(iter(res.choices.values())).as_dict() if res.choices else {}
    if res.protocol == "paper" and ev.paper_search is not None:
        block["search"] = ev.paper_search   # evaluate.paper_search (published); absent: m2es's own search
    return block


def headline(doc: dict[str, Any]) -> dict[str, Any]:
    """``metrics/<ds>.json``: the figure a reader compares across experiments and its yardstick, under the
    dataset's name: ``{"<ds>": {"f1": cross-fold overall F1 (default counting), "base": the non-learned
    baseline's cross-fold overall F1}}``. The dataset's name is in the keys so that DVC, which prefixes a
    column with its file's path only when two files share a key, heads ``dvc exp show`` columns
    ``<ds>.f1``: a training experiment on both default presets changes two short columns and
    ``dvc exp show --only-changed`` fits in 120 columns. Macro, micro, the paper-optimistic figure and the
    reproduction switches are in ``details.json`` (``m2es summary`` prints them). A figure whose protocol
    did not run is left out. Nothing machine-dependent (a rerun writes the same bytes)."""
    figures: dict[str, float] = {}
    cross = doc[doc["default"]["counting"]].get("cross-fold")
    if cross:
        figures["f1"] = cross[OVERALL]["f1"]
    base = (doc.get("baseline") or {}).get("cross-fold")
    if base:
        figures["base"] = base[OVERALL]["f1"]
    return {doc["dataset"]: figures}


def find_silent(pred: pd.DataFrame, ev: Evaluation) -> tuple[list[Silent], list[Silent]]:
    """(types never reported by the all-subjects thresholds of ``thresholds.json``, types some protocol of
    ``ev`` reports not at all): the caveats' warnings (:func:`pipeline.scoring.caveats.silent_types`)."""
    choice = ev.all_subjects[0]
    at_epoch = pred[pred["epoch"] == choice.epoch]
    top = at_epoch.groupby("type")["score"].max().to_dict()
    for_new = silent_types(choice.thresholds, top, "thresholds.json, for new videos")
    present = set(pred["type"])
    never: list[Silent] = []
    for res in ev.results.values():
        for t in TYPES:
            if t in present and res.counts[t].n_pred == 0:
                thresholds = {c.thresholds[t] for c in res.choices.values()}
                never.append(Silent(t, res.name, thresholds.pop() if len(thresholds) == 1 else None))
    return for_new, never


def column_prefix(protocol: str) -> str:
    """Column prefix of a protocol in per-subject tables (``paper`` -> ``paper_optimistic``)."""
    return OUTPUT_NAMES[protocol].replace("-", "_")


def per_subject_table(pred: pd.DataFrame, gt: pd.DataFrame, videos: pd.DataFrame, ev: Evaluation) -> pd.DataFrame:
    """One row per subject: videos, ground truths, and per protocol its choice and counts."""
    subjects = sorted(set(videos["subject"]), key=natural_key)
    out = pd.DataFrame({"subject": subjects})
    out["videos"] = out["subject"].map(videos.groupby("subject").size()).astype(int)
    for t in TYPES:
        out[f"gt_{t}"] = out["subject"].map(gt[gt["type"] == t].groupby("subject").size()).fillna(0).astype(int)
    for protocol, res in ev.results.items():
        c = column_prefix(protocol)
        g = counts_by_group(pred, gt, ev.matching, res.mask, "subject").set_index("subject").reindex(subjects)
        out[f"{c}_epoch"] = [res.choices[s].epoch for s in subjects]
        for t in TYPES:
            out[f"{c}_thr_{t}"] = [res.choices[s].thresholds[t] for s in subjects]
        out[f"{c}_tp"] = g[f"tp_{OVERALL}"].fillna(0).astype(int).to_numpy()
        out[f"{c}_n_pred"] = g[f"n_pred_{OVERALL}"].fillna(0).astype(int).to_numpy()
        for t in TYPES:
            out[f"{c}_{t}_f1"] = g[f"f1_{t}"].fillna(0.0).round(6).to_numpy()
        out[f"{c}_f1"] = g[f"f1_{OVERALL}"].fillna(0.0).round(6).to_numpy()
    return out


def write_timelines(out_dir: Path, pred: pd.DataFrame, gt: pd.DataFrame, videos: pd.DataFrame, ev: Evaluation,
                    protocol: str, n: int, caveats: Sequence[str] = ()) -> list[str]:
    """Draw ``n`` videos (worst, best, spread) under ``protocol``, ``caveats`` under each title; returns the
    files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    res = ev.results[protocol]
    per_video = counts_by_group(pred, gt, ev.matching, res.mask, "video")
    per_video = per_video.assign(n_gt=per_video[f"n_gt_{OVERALL}"], f1=per_video[f"f1_{OVERALL}"])
    subject_of = dict(zip(videos["video"], videos["subject"]))
    n_frames = dict(zip(videos["video"], videos["n_frames"]))
    written = []
    pred_video = pred["video"].to_numpy()
    for video, why in report.pick_timeline_videos(per_video[["video", "n_gt", "f1"]], n):
        choice = res.choices[subject_of[video]]
        rows = (pred_video == video) & (pred["epoch"].to_numpy() == choice.epoch)
        f1 = float(per_video.loc[per_video["video"] == video, "f1"].iloc[0])
        title = (f"{video} (subject {subject_of[video]}, {why}): {OUTPUT_NAMES[protocol]}, {ev.counting}, "
                 f"epoch {choice.epoch}, thresholds macro {choice.thresholds['macro']:.2f} / micro "
                 f"{choice.thresholds['micro']:.2f}, F1 {f1:.3f}")
        title = report.with_caveats(title, caveats, width=150)
        path = out_dir / f"{why}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', video)}.png"
        report.plot_timeline(path, video, gt[gt["video"] == video], pred[rows].reset_index(drop=True),
                             res.mask[rows], ev.matching.tp[rows], choice.thresholds,
                             int(n_frames.get(video, 0)) or None, title)
        written.append(path.name)
    return written


def write_error_analysis(out: Path, name: str, pred: pd.DataFrame, gt: pd.DataFrame, videos: pd.DataFrame,
                         ev: Evaluation, protocol: str, iou_threshold: float,
                         distractors: pd.DataFrame | None, caveats: Sequence[str] = ()) -> str:
    """``errors.csv``, ``errors_by_length.csv`` and ``errors.png`` of ``protocol``'s final predictions
    under ``ev``'s counting (``caveats`` under the picture's title); returns the summary's ``Error analysis``
    section."""
    if distractors is not None:
        distractors = distractors[distractors["video"].isin(set(videos["video"]))]
    ea = analyse_errors(pred, gt, ev.matching, ev.results[protocol].mask, iou_threshold, distractors,
                        dict(zip(videos["video"], videos["n_frames"].astype(int))))
    write_table(ea.rows(), out / "errors.csv")
    write_table(ea.by_length, out / "errors_by_length.csv")
    label = f"{OUTPUT_NAMES[protocol]}, {ev.counting}"
    plot_errors(ea, out / "errors.png",
                report.with_caveats(f"{name}: errors of the final predictions ({label})", caveats, width=160))
    rates = sorted(set(videos["fps"].astype(float)))
    return errors_markdown(ea, label, rates[0] if len(rates) == 1 else None)


def evaluate_baseline(paths: DataPaths, videos: pd.DataFrame, gt: pd.DataFrame, subjects: Sequence[str],
                      settings: EvaluateParams) -> dict[str, Any] | None:
    """The ``baseline`` block of the metrics: the non-learned baseline's predictions
    (``data/<ds>/baseline/predictions.csv``, stage ``baseline``) through the same protocols as IAENet's,
    under the default counting; None (with a warning) when the file is absent."""
    path = paths.baseline / "predictions.csv"
    if not path.is_file():
        log.warning("%s not found: the metrics and summary.md carry no baseline (the DVC pipeline makes it; "
                    "alone: python -m pipeline.baseline --dataset %s).", path, paths.name)
        return None
    pred = read_predictions(path, videos)
    method: dict[str, Any] = {}
    method_path = paths.baseline / "method.json"
    if method_path.is_file():
        try:
            method = json.loads(method_path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{method_path}: unreadable ({exc}). Rerun the baseline stage.") from None
    # one set of predictions (epoch 0): the fixed protocol and the paper search take it whatever epochs
    # IAENet's name
    own = dataclasses.replace(settings, fixed={**settings.fixed, "epoch": "last"},
                              paper_search={**settings.paper_search, "epochs": "all"})
    ev = evaluate_predictions(pred, gt, subjects, own, settings.default_counting)
    block: dict[str, Any] = {"method": method.get("method", "baseline"), "description": method.get("description", ""),
                             "version": method.get("version"), "params": method.get("params", {}),
                             "counting": settings.default_counting, "predictions": {"rows": len(pred)}}
    block.update({res.name: _protocol_block(res, ev) for res in ev.results.values()})
    return block


def run(ctx: StageContext) -> None:
    """Evaluate the dataset's out-of-fold predictions and write metrics, plots and exports."""
    settings = EvaluateParams.from_params(ctx.section())  # a bad key or value fails before any input is read
    paths = ctx.paths
    videos = read_videos(paths.resample / "videos.csv")
    videos["subject"] = videos["subject"].astype(str)
    gt = read_ground_truth(paths.resample / "annotations.csv", videos)
    frames = read_frames(paths.resample / "frames.csv")
    distractors = read_distractors(paths.resample / DISTRACTORS_FILE)  # None: the dataset lists none (real data)
    pred = read_predictions(paths.runs / "predictions.csv", videos)
    subjects = sorted(set(videos["subject"]), key=natural_key)
    missing = sorted(set(subjects) - set(pred["subject"]), key=natural_key)
    if missing:
        log.warning("%s: no predictions at all for subject(s) %s; their ground truth counts as missed.",
                    paths.runs / "predictions.csv", ", ".join(missing))
    log.info("evaluate@%s: %d predictions (%d epochs), %d ground-truth intervals, %d subjects",
             ctx.name, len(pred), pred["epoch"].nunique(), len(gt), len(subjects))

    evals = {c: evaluate_predictions(pred, gt, subjects, settings, c) for c in settings.countings}
    default_counting, default_protocol = settings.default_counting, settings.default_protocol
    head = evals[default_counting]

    doc: dict[str, Any] = {
        "dataset": ctx.name,
        "iou_threshold": settings.iou_threshold,
        "countings": list(settings.countings),
        "protocols": [OUTPUT_NAMES[p] for p in settings.protocols],
        "default": {"protocol": OUTPUT_NAMES[default_protocol], "counting": default_counting},
        "ground_truth": {**{t: int((gt["type"] == t).sum()) for t in TYPES}, OVERALL: len(gt),
                         "videos": int(videos["video"].nunique()), "subjects": len(subjects)},
        "predictions": {"rows": len(pred), "epochs": sorted(int(e) for e in pred["epoch"].unique())},
    }
    for counting, ev in evals.items():
        doc[counting] = {res.name: _protocol_block(res, ev) for res in ev.results.values()}

    baseline = evaluate_baseline(paths, videos, gt, subjects, settings)
    if baseline is not None:
        doc["baseline"] = baseline

    record = read_run_record(paths.runs)
    if record is None:
        log.warning("%s: no checkpoint (<fold>/model.pt): the results cannot say which backbone and weights made "
                    "the features.", paths.runs)
    source = feature_source(record.provenance if record else None)
    doc["features"] = source.as_dict()
    resample = ctx.section("resample") if "resample" in ctx.params else {}
    doc["reproduction"] = reproduction(resample, settings.search.as_dict(), record,
                                       ctx.dataset.get("layout"))
    for_new, never = find_silent(pred, head)
    doc["caveats"] = caveat_lines(source, for_new + never, upper_bound="paper" in settings.protocols)
    pictures = caveat_lines(source, for_new + never)   # every picture title

    out = paths.evaluate
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / DETAILS_FILE, doc)
    write_json(ctx.paths.metrics, headline(doc))
    save_thresholds(out / "thresholds.json", head.all_subjects[0], {
        "dataset": ctx.name, "counting": default_counting, "iou_threshold": settings.iou_threshold,
        "selected_on": "all subjects' out-of-fold predictions (maximising overall F1)",
        "f1_on_selection_set": round(head.all_subjects[1], 6),
        "features": source.as_dict(), "caveats": caveat_lines(source, for_new)})
    write_table(f1_curve(head.cube, head.all_subjects[0].epoch), out / "f1_vs_threshold.csv")
    per_subject = per_subject_table(pred, gt, videos, head)
    write_table(per_subject, out / "per_subject.csv")
    final = pred[head.results[default_protocol].mask]
    write_table(report.export_megc(final, frames), out / f"predictions_{ctx.name}_megc.csv")
    drawn = write_timelines(out / "timelines", pred, gt, videos, head, default_protocol, settings.timelines,
                            pictures)
    curves = report.collect_training_curves(paths.runs / "live")
    write_table(report.training_curves_wide(curves), out / "training_curves.csv")
    report.plot_training_curves(curves, out / "training_curves.png", f"{ctx.name}: training curves (dvclive)",
                                pictures)
    if curves.empty:
        log.warning("%s: no dvclive logs; training_curves.csv/png are empty.", paths.runs / "live")
    summary = report.summary_markdown(doc, per_subject, column_prefix(default_protocol))
    summary += report.baseline_markdown(doc)
    summary += write_error_analysis(out, ctx.name, pred, gt, videos, head, default_protocol,
                                    settings.iou_threshold, distractors, pictures)
    write_text(out / "summary.md", summary)
    log.info("evaluate@%s: wrote %s, %s (%d timelines)\n%s", ctx.name, ctx.paths.metrics, out, len(drawn),
             summary)


main = stage_main("evaluate", run)

if __name__ == "__main__":
    raise SystemExit(main())
