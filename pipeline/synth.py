"""Stage ``synth``: generate a synthetic dataset in a real dataset's layout.

``python -m pipeline.synth --dataset synth_casme2`` (or ``m2es synth --dataset ...``)
writes ``<preset root>`` (``data/raw/<name>/``): frame folders (or mp4 files), the
dataset's annotation spreadsheet, ``ground_truth.csv`` and ``distractors.csv``.
Everything is drawn from ``params.yaml: synth`` (with ``per_dataset.<name>.synth``)
and its seed, so a rerun writes identical bytes. See ``docs/datasets.md``.

The plan (who, how long, what happens when) is drawn in this process; videos are
rendered in parallel with :func:`pipeline.core.runner.map_videos`, each written under a
temporary name and renamed when complete. A video whose marker in
``<root>/.synth/<video>.json`` carries the same digest is skipped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from pipeline.core.params import digest
from pipeline.core.runner import ParallelParams, VideoTask, map_videos
from pipeline.core.stage import StageContext, stage_main
from pipeline.errors import ConfigError
from pipeline.io.atomic import write_text
from pipeline.synthetic.faces import FaceDetector, make_subject
from pipeline.synthetic.layouts import (DISTRACTORS, GROUND_TRUTH, FrameSink, VideoSpec, distractor_table,
                                        ground_truth_table, name_video, write_casme2_xlsx, write_csv,
                                        write_generic_annotations, write_samm_xlsx)
from pipeline.synthetic.params import SynthParams
from pipeline.synthetic.render import VideoRenderer
from pipeline.synthetic.schedule import Schedule, sample_schedule

log = logging.getLogger(__name__)

VERSION = 1  # bump when the frames of the same params change (enters every video's digest)
MARKER_DIR = ".synth"


def _range(value: Any, key: str) -> tuple[float, float]:
    """A number or [lo, hi] (lo <= hi) as (lo, hi)."""
    if isinstance(value, (int, float)):
        return float(value), float(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and float(value[0]) <= float(value[1]):
        return float(value[0]), float(value[1])
    raise ConfigError(f"params.yaml: synth.{key} must be a number or [lo, hi] with lo <= hi, got {value!r}.")


def _params(p: SynthParams | Mapping[str, Any]) -> SynthParams:
    """The checked ``synth`` params (``p`` as they are, or the section to check)."""
    return p if isinstance(p, SynthParams) else SynthParams.from_params(p)


def resolve_layout(p: SynthParams | Mapping[str, Any], dataset: Mapping[str, Any]) -> str:
    """``mp4`` when ``synth.format`` is mp4, else the preset's layout (casme2 / samm)."""
    if _params(p).format == "mp4":
        return "mp4"
    layout = str(dataset.get("layout"))
    if layout not in ("casme2", "samm"):
        raise ConfigError(f"configs/datasets/{dataset.get('name')}.yaml: layout '{layout}' has no frame-folder "
                          f"generator; use layout casme2 or samm, or set params.yaml per_dataset.{dataset.get('name')}"
                          ".synth.format: mp4.")
    return layout


def plan_dataset(p: SynthParams | Mapping[str, Any], dataset: Mapping[str, Any]) -> tuple[str, list[VideoSpec]]:
    """Draw the whole dataset (names, lengths, expressions, distractors) without rendering a frame."""
    cfg = _params(p)
    layout = resolve_layout(cfg, dataset)
    fps = float(cfg.fps or dataset.get("source_fps") or 30)
    seed = cfg.seed
    vps = _range(cfg.videos_per_subject, "videos_per_subject")
    dur = _range(cfg.duration_s, "duration_s")
    frames_dir = str(dataset.get("frames_dir") or "frames")
    schedule_params = cfg.as_params()
    specs: list[VideoSpec] = []
    for s in range(cfg.n_subjects):
        rng = np.random.default_rng([seed, 1, s])
        n_videos = int(rng.integers(int(vps[0]), int(vps[1]) + 1))
        for v in range(n_videos):
            vrng = np.random.default_rng([seed, 2, s, v])
            n_frames = int(round(vrng.uniform(*dur) * fps))
            sched = sample_schedule(n_frames, fps, schedule_params, vrng)
            video, subject, participant, rel, stim = name_video(layout, frames_dir, s, v)
            specs.append(VideoSpec(video, subject, participant, s, v, n_frames, fps, rel, stim, sched.instances,
                                   sched.events, sched.drift, seed=int(vrng.integers(2**31))))
    return layout, specs


def _render_video(task: VideoTask) -> int:
    """Render and write one video (runs in a worker); returns the number of frames."""
    pl = task.payload
    spec: VideoSpec = pl["spec"]
    cfg: SynthParams = pl["params"]
    marker = Path(pl["marker"])
    cv2.setNumThreads(1)
    size = cfg.frame_size()
    detector = FaceDetector(upsample=cfg.detector_upsample)
    subject = make_subject(spec.subject_index, cfg.face or {}, size, pl["color"], cfg.seed, detector,
                           name=spec.subject)
    schedule = Schedule(spec.n_frames, spec.fps, spec.instances, spec.events, spec.drift)
    renderer = VideoRenderer(subject, schedule, cfg.as_params(), spec.seed)
    sink = FrameSink(pl["layout"], Path(pl["root"]), spec, cfg.jpeg_quality, pl["color"], size)
    try:
        for frame in renderer.frames():
            sink.write(frame)
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    write_text(marker, json.dumps({"digest": task.digest, "n_frames": spec.n_frames}))
    return spec.n_frames


def _done(root: Path, spec: VideoSpec, marker: Path, dg: str) -> bool:
    """Whether ``spec``'s output exists and its marker carries digest ``dg``."""
    if not marker.is_file() or not (root / spec.rel_path).exists():
        return False
    try:
        return json.loads(marker.read_text()).get("digest") == dg
    except (OSError, json.JSONDecodeError):
        return False


def generate(p: Mapping[str, Any], dataset: Mapping[str, Any], root: str | Path,
             parallel: ParallelParams | None = None) -> list[VideoSpec]:
    """Write the synthetic dataset described by ``synth`` params ``p`` and ``dataset`` to ``root``.

    ``p`` is the section as written (checked here with :class:`SynthParams`): each video's
    digest is taken over it, so that a rerun with the same section skips the video.
    """
    root = Path(root)
    cfg = SynthParams.from_params(p)
    layout, specs = plan_dataset(cfg, dataset)
    color = bool(dataset.get("color", True)) if cfg.color is None else cfg.color
    tasks = []
    skipped = 0
    for spec in specs:
        marker = root / MARKER_DIR / f"{spec.video}.json"
        dg = digest({"params": dict(p), "layout": layout, "color": color, "video": spec.video, "version": VERSION})
        if _done(root, spec, marker, dg):
            skipped += 1
            continue
        tasks.append(VideoTask(spec.video, None, dg, {"spec": spec, "params": cfg, "layout": layout,
                                                      "root": str(root), "color": color, "marker": str(marker)}))
    if skipped:
        log.info("synth: %d of %d videos already generated with the same params, skipped", skipped, len(specs))
    n = sum(s.n_frames for s in specs)
    log.info("synth: %s layout, %d subjects, %d videos, %d frames to %s", layout, len({s.subject for s in specs}),
             len(specs), n, root)
    map_videos(_render_video, tasks, stage="synth", parallel=parallel)
    write_annotations(specs, layout, root, dataset)
    return specs


def write_annotations(specs: list[VideoSpec], layout: str, root: Path, dataset: Mapping[str, Any]) -> None:
    """Write the layout's annotation file plus ``ground_truth.csv`` and ``distractors.csv``."""
    root.mkdir(parents=True, exist_ok=True)
    name = str(dataset.get("annotation_file") or "")
    if layout == "casme2":
        write_casme2_xlsx(specs, root / (name or "CAS(ME)^2code_final.xlsx"))
    elif layout == "samm":
        if "?" in name or "*" in name or not name:
            name = "SAMM_LongVideos_V3_Release.xlsx"
        write_samm_xlsx(specs, root / name)
    else:
        write_generic_annotations(specs, root / "annotations.csv")
    write_csv(ground_truth_table(specs, layout), root / GROUND_TRUTH)
    write_csv(distractor_table(specs, layout), root / DISTRACTORS)


def run(ctx: StageContext) -> None:
    """Generate the synthetic dataset of ``ctx.dataset`` into its ``root``."""
    section = ctx.section()
    SynthParams.from_params(section)  # a bad key or value fails before anything is read or written
    ds = ctx.dataset
    if not ds.get("synthetic"):
        raise ConfigError(f"configs/datasets/{ctx.name}.yaml: not a synthetic preset (no 'synthetic: true'); "
                          "the synth stage only generates synthetic datasets. List it under params.yaml: "
                          "synth_datasets only if it is synthetic.")
    generate(section, ds, Path(ds["root"]), ctx.parallel)


main = stage_main("synth", run)

if __name__ == "__main__":
    raise SystemExit(main())
