"""Running the pipeline's own stages on an input's cache folder.

:func:`pipeline.ingest.run` (generic door), :func:`pipeline.resample.run` (to the model's frame
rate), :func:`pipeline.crop.run`, :func:`pipeline.flow.run` and :func:`pipeline.features.run`
run with a :class:`~pipeline.core.stage.StageContext` whose data root is the cache and whose
crop, flow and features params are the model's recipe (:func:`pipeline.spot.recipe.load_model`
puts the user's knobs that do not change what the model saw over it). The stages' per-video digests make a
second run on the same input skip crop, flow and features (``cached`` vs ``computed``, from
the output file's inode and mtime).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Mapping

from tqdm.auto import tqdm

from models.errors import ModelError
from pipeline import crop, features, flow, ingest, resample
from pipeline.core.paths import DataPaths
from pipeline.core.runner import ParallelParams
from pipeline.core.stage import StageContext
from pipeline.errors import M2esError, StageFailed
from pipeline.io.tables import read_frames, read_videos
from pipeline.spot.errors import NoFaceError, SpotError
from pipeline.spot.inputs import VIDEO_NAME, SpotInput
from pipeline.spot.messages import UserTerms
from pipeline.spot.params import ingest_section
from pipeline.spot.recipe import SpotModel

log = logging.getLogger(__name__)

HEAVY_STEPS = ("crop", "flow", "features")
STAGES: dict[str, ModuleType] = {"ingest": ingest, "resample": resample, "crop": crop, "flow": flow,
                                 "features": features}


def _state(path: Path) -> tuple[int, int] | None:
    """(inode, mtime_ns) of a file, or None when absent."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _contexts(inp: SpotInput, model: SpotModel, cache_root: Path, raw: Path, params: Mapping[str, object],
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
    full = {"ingest": ingest_section(params), "resample": {"target_fps": tgt, "max_duration_s": None},
            "crop": recipe.crop, "flow": recipe.flow, "features": recipe.features}
    paths = DataPaths(inp.key, cache_root)
    par = ParallelParams(backend="sequential", n_jobs=1)
    return {stage: StageContext(stage=stage, dataset=preset, params=full, paths=paths, parallel=par)
            for stage in STAGES}


def _run_stage(stage: str, ctx: StageContext, inp: SpotInput, terms: UserTerms) -> None:
    """Run one pipeline stage on the input; turn its failure into the right SpotError, in the user's terms
    (the input's path and frame numbers, not the cache's)."""
    try:
        STAGES[stage].run(ctx)
    except StageFailed as exc:
        reason = terms("; ".join(exc.failures.values()))
        if stage == "crop" and "NoFaceFound" in exc.kinds.values():
            raise NoFaceError(f"{inp.label}: no face found. {reason}") from None
        raise SpotError(f"{inp.label}: {stage} failed: {reason}") from None
    except (M2esError, ModelError) as exc:
        raise SpotError(f"{inp.label}: {stage}: {terms(str(exc))}") from None


def run_pipeline(inp: SpotInput, model: SpotModel, cache_root: Path, raw: Path, params: Mapping[str, object],
                 fps_tolerance: float, bar: tqdm, terms: UserTerms) -> tuple[dict[str, StageContext], dict[str, str]]:
    """Ingest, resample, crop, flow and features of one input into its cache; returns (contexts, steps).

    ``terms`` learns the input's frame numbers once resample has run (the later stages count its frames)."""
    ctxs = _contexts(inp, model, cache_root, raw, params, fps_tolerance)
    steps: dict[str, str] = {}
    for stage in ("ingest", "resample"):
        bar.set_postfix_str(stage)
        _run_stage(stage, ctxs[stage], inp, terms)
        steps[stage] = "ran"
        bar.update(1)
    paths = ctxs["crop"].paths
    videos = read_videos(paths.resample / "videos.csv")
    terms.numbers = read_frames(paths.resample / "frames.csv").sort_values("frame")["source_frame"].to_numpy()
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
        _run_stage(stage, ctxs[stage], inp, terms)
        after = _state(outputs[stage])
        if after is None:
            raise SpotError(f"{inp.label}: {stage} wrote no output ({outputs[stage]}); see the log above.")
        steps[stage] = "cached" if before is not None and before == after else "computed"
        log.info("%s: %s %s", inp.name, stage, steps[stage])
        bar.update(1)
    return ctxs, steps
