"""The real datasets the end-to-end benchmark extrapolates to: their sizes, and their work at full scale
from the reference annotation tables (the train stage's window passes, the evaluate stage's inputs,
evaluate run at that scale) (``benchmarks/e2e.py``)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from benchmarks.e2e_monitor import Sampler
from benchmarks.e2e_run import run_stage
from benchmarks.e2e_work import train_context

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("e2e")

TARGETS: dict[str, dict[str, Any]] = {   # the real datasets' sizes
    "CAS(ME)^2": {"source_frames": 248_000, "source_fps": 30, "target_fps": 30, "subjects": 22,
                  "layout": "casme2", "source_size": [640, 480],
                  "model_preset": "iaenet_casme2", "table": "casme2_annotation_357.csv"},
    "SAMM-LV": {"source_frames": 491_000, "source_fps": 200, "target_fps": 30, "subjects": 30,
                "layout": "samm", "source_size": [2040, 1088],
                "model_preset": "iaenet_samm", "table": "samm_annotation.csv"},
}
# the real datasets' annotation tables (shared/reference/annotations): the train stage's work at their scale
REFERENCE_DIR_ENV = "M2ES_REFERENCE_DIR"


def reference_dir(arg: Path | None) -> Path:
    """``--reference-dir``, else ``$M2ES_REFERENCE_DIR``, else ``shared/reference/annotations`` beside
    the repository."""
    if arg is not None:
        return arg
    env = os.environ.get(REFERENCE_DIR_ENV)
    return Path(env) if env else REPO.parent / "shared" / "reference" / "annotations"


def frame_tables(videos: list[str], subjects: list[str], fps: float, n_frames: list[int]) -> tuple[Any, Any]:
    """The ingest stage's videos and frames tables of colour frame folders without files (sources and
    paths empty): frames 0..n-1 of each video, source frames 1-based."""
    import numpy as np
    import pandas as pd

    table = pd.DataFrame({"video": videos, "subject": subjects, "fps": float(fps), "n_frames": n_frames,
                          "source": "", "kind": "frames", "color": 1})
    frames = pd.DataFrame({"video": np.repeat(table["video"].to_numpy(), table["n_frames"].to_numpy()),
                           "frame": np.concatenate([np.arange(n) for n in table["n_frames"]]), "path": ""})
    frames["source_frame"] = frames["frame"] + 1
    return table, frames


def reference_videos(table: Path, source_fps: float, target_fps: float, max_duration_s: float | None,
                     clip: int, stride: int) -> tuple[dict[str, int], Any, dict[str, str]]:
    """(feature steps per video, intervals at ``target_fps``, subject per video) of a real dataset from its
    reference annotation table (the published tooling's CSV: video path, subject, type_idx 1 macro / 2 micro,
    1-based startFrame and endFrame, frame_num), as ingest tables (0-based frames, onsets before the first
    frame clipped) put through the resample stage's own :func:`pipeline.resample.resample_tables`."""
    import numpy as np
    import pandas as pd

    from pipeline.extract.prepare import clip_count
    from pipeline.resample import resample_tables

    df = pd.read_csv(table, dtype={"subject": str})
    df["video"] = df["video"].map(lambda v: Path(str(v)).name)
    per_video = df.groupby("video", sort=True).first()
    videos, frames = frame_tables(list(per_video.index), list(per_video["subject"]), source_fps,
                                  list(per_video["frame_num"].astype(int)))
    onset = np.clip(df["startFrame"].to_numpy() - 1, 0, None)
    offset = df["endFrame"].to_numpy() - 1
    ann = pd.DataFrame({"video": df["video"], "subject": df["subject"], "onset": onset, "apex": (onset + offset) // 2,
                        "offset": offset, "type": np.where(df["type_idx"].to_numpy() == 2, "micro", "macro")})
    for c in ("onset", "apex", "offset"):
        ann[f"source_{c}"] = ann[c] + 1
    vids, anns, _ = resample_tables(videos, ann, frames, target_fps, max_duration_s)
    lengths = {str(v): clip_count(int(n), clip, stride) for v, n in zip(vids["video"], vids["n_frames"])}
    subjects = {str(v): str(s) for v, s in zip(vids["video"], vids["subject"])}
    return {v: n for v, n in lengths.items() if n > 0}, anns, subjects


def target_window_passes(project: Path, dataset: str, ref_dir: Path, final: bool) -> dict[str, dict[str, int] | None]:
    """{target: {model: window passes}} of a LOSO run on each real dataset (its table in ``ref_dir``) with the
    run's training recipe and the target's model preset; None for a target whose table is missing."""
    from benchmarks.train_cost import loso_window_passes
    from pipeline.learning.recipe import model_recipe

    ctx = train_context(project, dataset)
    feats, res = ctx.section("features"), ctx.section("resample")
    max_s = res.get("max_duration_s")
    out: dict[str, dict[str, int] | None] = {}
    for name, target in TARGETS.items():
        table = ref_dir / target["table"]
        if not table.is_file():
            log.warning("%s: no reference table %s (--reference-dir or $%s): train not extrapolated to %s",
                        name, table, REFERENCE_DIR_ENV, name)
            out[name] = None
            continue
        lengths, ann, subjects = reference_videos(table, target["source_fps"], target["target_fps"],
                                                  None if max_s is None else float(max_s),
                                                  int(feats["clip"]), int(feats["stride"]))
        preset, cfg = model_recipe(ctx, project / "configs", model_preset=target["model_preset"])
        out[name] = loso_window_passes(lengths, ann, subjects, preset, cfg, final=final)
    return out


def target_evaluate_inputs(target: dict[str, Any], ref_dir: Path, density: float, epochs: list[int],
                           max_duration_s: float | None = None, clip: int = 8, stride: int = 2,
                           seed: int = 0) -> dict[str, Any]:
    """The evaluate stage's inputs at a real dataset's scale: its resampled videos, frames and intervals
    (from the reference table, :func:`reference_videos`) and random predictions, ``density`` per kept
    frame and predicted epoch, for ``epochs``; {"videos", "frames", "annotations", "predictions"}."""
    import numpy as np
    import pandas as pd

    steps, anns, subjects = reference_videos(ref_dir / target["table"], target["source_fps"], target["target_fps"],
                                             max_duration_s, clip, stride)
    rng = np.random.default_rng(seed)
    n_frames = {v: stride * s + clip - 1 for v, s in steps.items()}  # the most frames with these clip counts
    videos, frames = frame_tables(list(n_frames), [subjects[v] for v in n_frames], target["target_fps"],
                                  list(n_frames.values()))
    parts = []
    for v, n in n_frames.items():
        k = max(1, int(round(n * density)))
        for epoch in epochs:
            onset = rng.integers(0, max(1, n - 60), k)
            parts.append(pd.DataFrame({"video": v, "subject": subjects[v], "fold": subjects[v], "epoch": epoch,
                                       "onset": onset, "offset": np.minimum(onset + rng.integers(8, 60, k), n - 1),
                                       "type": rng.choice(["macro", "micro"], k), "score": rng.random(k)}))
    return {"videos": videos, "frames": frames, "annotations": anns[anns["video"].isin(n_frames)],
            "predictions": pd.concat(parts, ignore_index=True)}


def evaluate_preset(target: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The dataset preset of :func:`target_evaluate_inputs`' tables (evaluate reads only the tables)."""
    return {"layout": target["layout"], "root": f"data/raw/{dataset}", "source_fps": target["target_fps"],
            "target_fps": target["target_fps"], "color": True, "model_preset": target["model_preset"]}


def write_evaluate_tables(project: Path, dataset: str, inputs: dict[str, Any]) -> None:
    """The tables ``python -m pipeline.evaluate --dataset <dataset>`` reads, in ``project``."""
    from pipeline.io.tables import write_table

    base = project / "data" / dataset
    for name, rel in (("videos", "resample/videos.csv"), ("frames", "resample/frames.csv"),
                      ("annotations", "resample/annotations.csv"), ("predictions", "runs/predictions.csv")):
        write_table(inputs[name], base / rel)


def evaluate_at_targets(project: Path, dataset: str, ref_dir: Path, work: dict[str, Any], args: argparse.Namespace,
                        logs: Path) -> dict[str, dict[str, Any]]:
    """The evaluate stage run on each real dataset's scale (its inputs from :func:`target_evaluate_inputs`, with
    the run's own prediction density and predicted epochs), measured: {target: record}. Evaluate's time grows
    with predictions x subjects, not only frames, and is mostly start-up in a small run, so it is measured
    there (seconds) instead of scaled."""
    import pandas as pd

    pred = pd.read_csv(project / "data" / dataset / "runs" / "predictions.csv")
    epochs = sorted(int(e) for e in pred["epoch"].unique())
    if not epochs or not work.get("kept_frames"):
        return {}
    density = len(pred) / work["kept_frames"] / len(epochs)
    ctx = train_context(project, dataset)
    feats, max_s = ctx.section("features"), ctx.section("resample").get("max_duration_s")
    out: dict[str, dict[str, Any]] = {}
    for name, target in TARGETS.items():
        if not (ref_dir / target["table"]).is_file():
            continue
        slug = "".join(c for c in name.lower() if c.isalnum())
        inputs = target_evaluate_inputs(target, ref_dir, density, epochs, None if max_s is None else float(max_s),
                                        int(feats["clip"]), int(feats["stride"]))
        name_at = f"{dataset}_at_{slug}"
        (project / "configs" / "datasets" / f"{name_at}.yaml").write_text(yaml.safe_dump(evaluate_preset(target,
                                                                                                         name_at)))
        write_evaluate_tables(project, name_at, inputs)
        rec = run_stage(project, "evaluate", name_at, False, Sampler(args.interval, None), logs,
                        args.stage_timeout, log_name=f"evaluate_at_{slug}")
        out[name] = {"rc": rec["rc"], "wall_s": rec["wall_s"], "predictions": len(inputs["predictions"]),
                     "kept_frames": int(inputs["videos"]["n_frames"].sum()),
                     "subjects": int(inputs["videos"]["subject"].nunique()), "prediction_density": density}
    return out
