"""Crop and flow at once: the CPU crops the next videos while the GPU solves TV-L1 for the finished ones.

``python -m pipeline.overlap --dataset NAME`` (or ``m2es overlap``) starts the crop stage's own command
(``python -m pipeline.crop``, its processes spread over the CPU cores) and, in this
process, the flow stage's batched torch solver, which takes each faces file as soon as
the crop stage has renamed it into place complete and with the digest the crop stage
computes for the current params and tables. It writes exactly the files the two stages
write, with the same digests, so afterwards ``dvc repro`` runs both stage commands, finds
every video complete and skips it (their outputs are ``persist: true``), and records the
stages as usual: this command fills DVC's outputs faster, it does not replace DVC.

The crop processes run at a lower scheduling priority (``--crop-nice``, default 10): they
fill the cores, and the flow process, which keeps the GPU fed, gets the CPU it needs first.

Needs the ``resample`` outputs (``dvc repro resample@NAME``) and ``flow.impl`` resolving
to ``torch`` (``auto`` on a GPU machine). A crop failure fails this command (exit 2, as a failed stage does)
after the flow of every video that was cropped has been written; rerun it, or
``dvc repro``, after fixing the input.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from pipeline import crop, flow
from pipeline.errors import ConfigError, M2esError, StageFailed
from pipeline.io.h5io import file_digest, remove_partials
from pipeline.core.runner import TaskFeed, VideoTask
from pipeline.core.stage import EXIT_USER_ERROR, StageContext, make_context, setup_logging, stage_parser
from pipeline.io.tables import read_frames, read_videos
from pipeline.tvl1.backend import FlowPlan
from pipeline.tvl1.batch import run_torch

log = logging.getLogger(__name__)

STAGE = "overlap"


def expected_faces(ctx: StageContext) -> dict[str, str]:
    """{video: the ``m2es_digest`` the crop stage gives its faces file} for the current params and tables."""
    videos = read_videos(ctx.paths.resample / "videos.csv")
    frames = read_frames(ctx.paths.resample / "frames.csv")
    tasks = crop.build_tasks(videos, frames, ctx.paths.faces, ctx.section("crop"))
    return {t.video: t.digest for t in tasks}


def follow_faces(faces_dir: Path, expected: Mapping[str, str], producer: subprocess.Popen,
                 poll_s: float = 0.2) -> Iterator[Path]:
    """Yield each expected faces file once it is complete with its expected digest.

    Ends when every file was yielded, or when ``producer`` (the crop stage) has exited and
    a last look found no more; a file from an earlier run with another digest is not
    taken (the crop stage is about to replace it).
    """
    waiting = dict(expected)
    while waiting:
        finished = producer.poll() is not None  # look once more after the producer ended
        for video, dig in list(waiting.items()):
            path = faces_dir / f"{video}.h5"
            if file_digest(path) == dig:
                del waiting[video]
                yield path
        if finished:
            return
        time.sleep(poll_s)


def flow_feed(ctx: StageContext, plan: FlowPlan, faces: Iterator[Path]) -> Iterator[VideoTask]:
    """The flow tasks of the faces files as they come (:func:`run_torch` skips those already complete)."""
    for path in faces:
        task = flow.build_task(ctx, plan, path)
        if task is not None:
            yield task


def run(ctx: StageContext, crop_command: Sequence[str], poll_s: float = 0.2) -> dict[str, int]:
    """Run the crop command and the flow of its files at once; returns {video: pairs} of the flow written."""
    plan = FlowPlan.from_section(ctx.section("flow"))
    if plan.impl != "torch":
        raise ConfigError(f"overlap: flow.impl resolves to '{plan.impl}' on this machine; overlapping crop "
                          "and flow needs the batched torch solver (flow.impl: torch, or auto on a GPU). "
                          "Run `dvc repro` instead.")
    expected = expected_faces(ctx)
    remove_partials(ctx.paths.flow)
    log.info("%s@%s: cropping %d videos (%s) while solving TV-L1 on their faces as they come", STAGE, ctx.name,
             len(expected), " ".join(crop_command))
    producer = subprocess.Popen(list(crop_command))
    try:
        feed = TaskFeed(source=flow_feed(ctx, plan, follow_faces(ctx.paths.faces, expected, producer, poll_s)))
        written = run_torch(feed, plan.tvl1, plan.cfg, plan.ident, plan.section,
                                 fail_fast=ctx.parallel.fail_fast)
    except BaseException:
        producer.terminate()
        producer.wait()
        raise
    code = producer.wait()
    if code != 0:
        raise StageFailed("crop", {"*": f"the crop stage exited with status {code} (its log above names the "
                                        f"videos); the flow of the {len(written)} videos cropped was written"})
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m pipeline.overlap --dataset NAME`` (the stages' common arguments)."""
    parser = stage_parser(STAGE)
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--crop-nice", type=int, default=10,
                        help="scheduling niceness of the crop stage's processes (default 10; 0: none)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    command = [sys.executable, "-m", "pipeline.crop", "--dataset", args.dataset, "--params", args.params,
               "--data-root", args.data_root] + (["--fail-fast"] if args.fail_fast else [])
    if args.crop_nice and shutil.which("nice"):
        # the crop stage fills every core; at a lower priority it leaves the flow process (reading
        # crops, driving the GPU, writing fields) the CPU it needs, and takes all the rest
        command = ["nice", "-n", str(args.crop_nice)] + command
    try:
        ctx = make_context(STAGE, args.dataset, args.params, args.data_root, fail_fast=args.fail_fast)
        written = run(ctx, command)
    except M2esError as exc:
        log.error("%s@%s: %s", STAGE, args.dataset, exc)
        return EXIT_USER_ERROR
    log.info("%s@%s: flow written for %d videos; `dvc repro` records crop and flow", STAGE, args.dataset,
             len(written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
