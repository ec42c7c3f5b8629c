"""Work accounting of the end-to-end benchmark: what each stage computed in the project copy (frames,
pairs, clips, window passes per model) and the seconds the train stage's models took (its timing
records) (``benchmarks/e2e.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.train_cost import model_seconds
from pipeline.core.paths import DataPaths
from pipeline.io.jsonl import read_jsonl
from pipeline.learning.timings import TIMINGS_FILE

STAGE_UNITS: dict[str, tuple[str, str]] = {   # stage: (measured quantity, throughput name)
    "synth": ("source_frames", "frames_per_s"),
    "ingest": ("source_frames", "frames_per_s"),
    "resample": ("kept_frames", "frames_per_s"),
    "crop": ("crop_frames", "frames_per_s"),
    "flow": ("flow_pairs", "pairs_per_s"),
    "features": ("feature_clips_per_stream", "clips_per_s_per_stream"),
    "train": ("train_window_passes", "window_passes_per_s"),
    "evaluate": ("kept_frames", "frames_per_s"),
    "overlap": ("flow_pairs", "pairs_per_s"),
}


def _h5_rows(folder: Path, key: str) -> int:
    import h5py

    total = 0
    for path in sorted(folder.glob("*.h5")):
        with h5py.File(path, "r") as f:
            total += int(f[key].shape[0])
    return total


def work_done(project: Path, dataset: str, stride: int) -> dict[str, Any]:
    """What the run computed: frames, videos, subjects, pairs, clips, folds (from the stages' outputs)."""
    import pandas as pd

    base = project / "data" / dataset
    out: dict[str, Any] = {}
    ing = base / "ingest" / "videos.csv"
    if ing.is_file():
        out["source_frames"] = int(pd.read_csv(ing)["n_frames"].sum())
    res = base / "resample" / "videos.csv"
    if res.is_file():
        v = pd.read_csv(res, dtype={"subject": str})
        out.update(videos=len(v), kept_frames=int(v["n_frames"].sum()), subjects=int(v["subject"].nunique()))
    if (base / "faces").is_dir():
        out["crop_frames"] = _h5_rows(base / "faces", "frames")
        out["faces_bytes"] = sum(p.stat().st_size for p in (base / "faces").glob("*.h5"))
    if (base / "flow").is_dir():
        out["flow_pairs"] = _h5_rows(base / "flow", "flow")
        out["flow_bytes"] = sum(p.stat().st_size for p in (base / "flow").glob("*.h5"))
    if (base / "features").is_dir():
        out["feature_clips_per_stream"] = _h5_rows(base / "features", "rgb")
        out["features_stride"] = stride
    runs = base / "runs"
    if runs.is_dir():
        folds = sorted(p.name.removeprefix("fold_") for p in runs.glob("fold_*") if (p / "model.pt").is_file())
        final = (runs / "final" / "model.pt").is_file()
        out.update(loso_folds=len(folds), final_model=final, trained_models=len(folds) + int(final))
        passes = out["_model_passes"] = run_window_passes(project, dataset)
        out["train_window_passes"] = sum(passes.get(m, 0) for m in [*(f"fold_{f}" for f in folds),
                                                                    *(["final"] if final else [])])
    return out


def train_context(project: Path, dataset: str) -> Any:
    """The train stage's context of the project copy (its params.yaml and dataset preset)."""
    from pipeline.core.stage import make_context

    return make_context("train", dataset, project / "params.yaml", project / "data",
                        project / "configs" / "datasets")


def run_window_passes(project: Path, dataset: str) -> dict[str, int]:
    """{model: window passes} of the run's LOSO (benchmarks.train_cost.loso_window_passes) from the resample
    stage's videos (lengths in feature steps as the features stage counts them) and annotations;
    empty before resample has written them."""
    import pandas as pd

    from benchmarks.train_cost import loso_window_passes
    from pipeline.extract.prepare import clip_count
    from pipeline.io.tables import read_annotations
    from pipeline.learning.recipe import model_recipe

    res = project / "data" / dataset / "resample"
    if not (res / "annotations.csv").is_file() or not (res / "videos.csv").is_file():
        return {}
    videos = pd.read_csv(res / "videos.csv", dtype={"subject": str})
    ctx = train_context(project, dataset)
    preset, cfg = model_recipe(ctx, project / "configs")
    feats = ctx.section("features")
    lengths = {str(r.video): clip_count(int(r.n_frames), int(feats["clip"]), int(feats["stride"]))
               for r in videos.itertuples()}
    subjects = {str(r.video): str(r.subject) for r in videos.itertuples()}
    return loso_window_passes({k: n for k, n in lengths.items() if n > 0}, read_annotations(res / "annotations.csv"),
                              subjects, preset, cfg)


# the train stage's timing records (pipeline.learning.timings): one JSON object per trained model
# ({"model": "fold_<subject>" | "final", "windows", "seconds", "device", "final_loss", "pid"}) in data/<ds>/train_timings.jsonl;
# run_stage keeps each train run's own records beside its log as <log name>_timings.jsonl


def timings_path(project: Path, dataset: str) -> Path:
    """The train stage's timing records file in the project copy."""
    return DataPaths(dataset, project / "data").train_timings


def read_records(path: Path) -> list[dict[str, Any]]:
    """The timing records in ``path`` (:func:`pipeline.io.jsonl.read_jsonl`); none when it is missing."""
    return read_jsonl(path) if path.is_file() else []


def keep_run_records(before: list[dict[str, Any]], path: Path, out: Path) -> None:
    """Write to ``out`` the records of the train run that has just ended: what ``path`` holds beyond
    ``before`` (its records before the run), or all of it when it no longer starts with them (the
    stage begins the file afresh at the start of every run)."""
    after = read_records(path)
    mine = after[len(before):] if after[:len(before)] == before else after
    out.write_text("".join(json.dumps(r) + "\n" for r in mine))


def run_model_seconds(logs: Path, name: str) -> dict[str, float]:
    """{model (``fold_<subject>`` or ``final``): seconds it spent training} of one train run, from the
    records :func:`keep_run_records` kept as ``logs/<name>_timings.jsonl``
    (:func:`benchmarks.train_cost.model_seconds`), in the order they ended; empty when there are none."""
    path = logs / f"{name}_{TIMINGS_FILE}"
    return model_seconds(path) if path.is_file() else {}
