"""Spotting one input end to end: hash, cache, stages, lost-face check, IAENet, thresholds, outputs.

IAENet inference is :func:`pipeline.learning.postprocess.predict_video`; thresholds are applied
with :func:`pipeline.scoring.protocols.apply_thresholds`; positions go back to the input's frame
numbers through :mod:`pipeline.spot.intervals`. Predictions overlapping a lost-face span are
dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.io.artifacts import read_features
from pipeline.io.tables import TYPES, read_frames, read_videos
from pipeline.learning.postprocess import predict_video
from pipeline.scoring.protocols import apply_thresholds
from pipeline.spot.errors import ModelMismatch
from pipeline.spot.faces_check import cached_face_check
from pipeline.spot.ground_truth import hits, read_user_ground_truth, score_against
from pipeline.spot.inputs import VIDEO_NAME, SpotInput, content_key, link_path, prepare_cache
from pipeline.spot.intervals import overlaps, passes, spans_table, to_input_frames
from pipeline.spot.messages import UserTerms
from pipeline.spot.outputs import CSV_COLUMNS, plot_spot_timeline, write_annotated, write_intervals
from pipeline.spot.params import SpotParams, image_extensions
from pipeline.spot.recipe import SpotModel
from pipeline.spot.stages import run_pipeline

log = logging.getLogger(__name__)


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


def check_fed_features(attrs: Mapping[str, Any], width: int, model: SpotModel) -> None:
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


def spot_one(inp: SpotInput, model: SpotModel, settings: SpotParams, params: Mapping[str, Any], out_dir: Path,
             annotate: bool = False, ground_truth: str | None = None, verbose: bool = False) -> SpotResult:
    """Spot one input end to end and write its outputs into ``out_dir``.

    Errors and the stages' log records name the input and its frame numbers, not its cache
    (:mod:`pipeline.spot.messages`); the stages' progress lines about the cache show only when ``verbose``.
    """
    cache_root = settings.cache_root.resolve()
    n_steps = 9 + int(annotate)  # hash, ingest, resample, crop, flow, features, face check, IAENet, write
    terms = UserTerms(inp)
    with tqdm(total=n_steps, desc=f"spot {inp.name}", unit="step") as bar, terms.logging(verbose):
        bar.set_postfix_str("hash")
        inp.key = content_key(inp, image_extensions(params), settings.hash_chunk_mb)
        bar.update(1)
        base, raw = prepare_cache(inp, cache_root)
        terms.link = link_path(inp, raw)
        ctxs, steps = run_pipeline(inp, model, cache_root, raw, params, settings.fps_tolerance, bar, terms)
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
        check_fed_features(attrs, feats.shape[1], model)
        device = next(model.model.parameters()).device
        cand = predict_video(model.model, feats, model.preset, VIDEO_NAME, batch_size=settings.batch_size,
                             device=device, epoch=model.last_epoch)   # the final model's last epoch
        cand = cand.sort_values(["onset", "offset", "type"], kind="stable").reset_index(drop=True)
        lost = overlaps(cand["onset"].to_numpy(np.int64), cand["offset"].to_numpy(np.int64), spans)
        kept = apply_thresholds(cand[~lost].reset_index(drop=True), model.thresholds)
        excluded = int((lost & passes(cand, model.thresholds)).sum())
        bar.update(1)

        bar.set_postfix_str("write")
        intervals = pd.concat([kept[["type"]].reset_index(drop=True),
                               to_input_frames(kept, frames, last_frame, first_frame, inp.fps)], axis=1)
        intervals.insert(0, "video", inp.name)
        intervals["score"] = np.round(kept["score"].to_numpy(np.float64), 6)
        intervals = intervals[CSV_COLUMNS]
        span_df = spans_table(spans, frames, last_frame, first_frame, inp.fps)
        gt = read_user_ground_truth(ground_truth, inp) if ground_truth else None
        notes = _notes(inp, model, n_model, model_fps, spans, span_df, excluded)
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
            doc["ground_truth"] = score_against(intervals, gt, str(ground_truth))
        write_intervals(out["csv"], out["json"], intervals, doc)
        plot_spot_timeline(out["png"], inp, cand, lost, model.thresholds, span_df, frames, last_frame, first_frame,
                           gt, f"{inp.name}: {len(intervals)} interval(s); thresholds macro "
                               f"{model.thresholds['macro']:.2f} / micro {model.thresholds['micro']:.2f} "
                               f"({model.threshold_source})", None if gt is None else hits(intervals, gt))
        bar.update(1)
        if annotate:
            bar.set_postfix_str("annotate")
            write_annotated(out["video"], paths, intervals, span_df, faces_path, settings.annotate_codec, inp.fps,
                            UserTerms(inp, terms.link, numbers))
            bar.update(1)
    return SpotResult(inp, out_dir, intervals, cand, span_df, steps, doc)


def _notes(inp: SpotInput, model: SpotModel, n_model: int, model_fps: float, spans: list[tuple[int, int]],
           span_df: pd.DataFrame, excluded: int) -> list[str]:
    """What the reader of intervals.json should know: a short input, lost face, a frame rate taken as is."""
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
    return notes
