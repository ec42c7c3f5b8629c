"""Stage ``flow``: Dual TV-L1 optical flow between consecutive face crops.

Reads ``data/<ds>/faces/<video>.h5`` (``frames`` uint8 [T, H, W, C], C 3 or 1),
converts the frames to grayscale like ``cv2.cvtColor`` and writes
``data/<ds>/flow/<video>.h5``: ``flow`` float16 [T-1, H, W, 2] (u, v in pixels at crop
resolution) with attrs ``impl`` and every TV-L1 parameter.

Two implementations of the same algorithm (``flow.impl``; the machinery is in
:mod:`pipeline.tvl1`):

* ``opencv`` -- ``cv2.optflow.DualTVL1OpticalFlow``, one thread per process, videos
  spread over processes by :func:`pipeline.core.runner.map_videos`
  (:func:`pipeline.tvl1.opencv.opencv_video`);
* ``torch`` -- :class:`pipeline.tvl1.solver.TorchTVL1`, pairs from many videos batched
  in one process on the GPU (:func:`pipeline.tvl1.batch.run_torch`); each video is still
  written atomically and skipped when complete;
* ``auto`` -- ``torch`` when CUDA is available, ``opencv`` otherwise.

Colour frames are taken to be stored in RGB order (``flow.channel_order``; set it to
``bgr`` if a faces file was written from OpenCV's BGR frames). The section's keys are
declared by :class:`pipeline.tvl1.params.FlowParams` and
:class:`pipeline.tvl1.params.TVL1Params`; an unknown key is refused before any input is read.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.core.params import digest
from pipeline.core.runner import VideoTask, map_videos
from pipeline.core.stage import StageContext, stage_main
from pipeline.errors import InputError, StageFailed
from pipeline.io.h5io import file_digest, remove_partials, remove_stale
from pipeline.tvl1.backend import FlowPlan
from pipeline.tvl1.batch import run_torch
from pipeline.tvl1.opencv import opencv_video

log = logging.getLogger(__name__)

STAGE = "flow"
VERSION = 1


def build_task(ctx: StageContext, plan: FlowPlan, faces: Path) -> VideoTask | None:
    """The task of one faces file (None when it is incomplete); its digest includes the file's ``m2es_digest``."""
    faces_digest = file_digest(faces)
    if faces_digest is None:
        return None
    dig = digest({"stage": plan.digest_identity, "inputs": faces_digest, "version": VERSION})
    return VideoTask(faces.stem, ctx.paths.h5(ctx.paths.flow, faces.stem), dig,
                     {"faces": str(faces), "section": dict(plan.section), "attrs": dict(plan.ident),
                      "channel_order": plan.cfg.channel_order, "compression": plan.cfg.compression})


def build_tasks(ctx: StageContext, plan: FlowPlan) -> tuple[list[VideoTask], dict[str, str]]:
    """One task per complete faces file; the incomplete ones as {video: reason}."""
    faces_dir = ctx.paths.faces
    files = sorted(faces_dir.glob("*.h5")) if faces_dir.is_dir() else []
    if not files:
        raise InputError(f"{faces_dir}: no faces files (<video>.h5). Run the crop stage first: "
                         f"dvc repro crop@{ctx.name}.")
    tasks, bad = [], {}
    for path in files:
        task = build_task(ctx, plan, path)
        if task is None:
            bad[path.stem] = f"{path}: faces file is incomplete or unreadable. Rerun the crop stage."
        else:
            tasks.append(task)
    return tasks, bad


def run(ctx: StageContext) -> None:
    """Compute the flow of every video of the dataset (skipping complete outputs)."""
    plan = FlowPlan.from_section(ctx.section())
    remove_partials(ctx.paths.flow)
    tasks, bad = build_tasks(ctx, plan)
    stale = remove_stale(ctx.paths.flow, {t.video for t in tasks} | set(bad))
    if stale:
        log.info("%s: removed %d output(s) of videos no longer in the tables: %s", STAGE, len(stale),
                 ", ".join(stale))
    log.info("%s@%s: %d videos, impl %s", STAGE, ctx.name, len(tasks), plan.impl)
    failures, kinds = dict(bad), {}
    try:
        if plan.impl == "opencv":
            map_videos(opencv_video, tasks, stage=STAGE, parallel=ctx.parallel)
        else:
            run_torch(tasks, plan.tvl1, plan.cfg, plan.ident, plan.section, fail_fast=ctx.parallel.fail_fast)
    except StageFailed as exc:
        failures.update(exc.failures)
        kinds.update(exc.kinds)
    if failures:
        raise StageFailed(STAGE, failures, kinds)


main = stage_main(STAGE, run)

if __name__ == "__main__":
    raise SystemExit(main())
