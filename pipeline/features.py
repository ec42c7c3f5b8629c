"""Stage ``features``: per 8-frame clip, I3D RGB + flow (or roi_flow motion) features from crops and flow.

Reads ``data/<ds>/faces/<video>.h5`` (``frames`` uint8 [T, H, W, C]) and
``data/<ds>/flow/<video>.h5`` (``flow`` float16 [T-1, H, W, 2]) and writes
``data/<ds>/features/<video>.h5`` with ``rgb`` and ``flow`` float32 [N, D].

The published recipe, point by point (each a parameter where it can vary):

* crops resized to ``input_size`` (224) when they are not already that size (bilinear,
  antialiased when shrinking; flow values are resized like the flow images of the
  published tooling, i.e. not rescaled);
* RGB scaled to [-1, 1] (``x / 127.5 - 1``); grayscale replicated to 3 channels;
* flow clipped to ±``flow_bound`` px (15) and divided by it, before resizing; with
  ``flow_quantize: jpeg`` (real presets) first stored and read as the published tooling did:
  0-255 levels, one JPEG (quality 95) per component, read back as ``k * 2 / 255 - 1``
  (:mod:`pipeline.extract.flow_jpeg`; for either backbone);
* clips of ``clip`` (8) frames every ``stride`` (2) frames; the last RGB frame is dropped
  so RGB and flow give the same count N = (T - 1 - clip) // stride + 1; clip i covers
  frames [stride*i, stride*i + clip) and flow fields [stride*i, stride*i + clip);
* per clip the ``Mixed_5c`` output averaged over time and space (1024 per stream for the
  Inception I3D, 2048 for ``i3d_r50``).

How it runs: one process; a reader thread reads whole videos ahead of the model, their
HDF5 chunks read and decompressed by a thread pool (``read_threads``) straight into
page-locked memory on CUDA; each video moves to the device once (uint8 frames,
float16 flow) and is normalised and resized there once per frame; clips are strided
views (``unfold``) of that tensor, gathered into batches that span videos; ``inflight``
batches (2) stay queued on the device while the host waits for the oldest one's features
and prepares the next, so a slow moment of the host (a video's first copy, an output
file's fsync) does not leave the device idle. Fast-path options (``precision: bf16``,
``channels_last``, ``fuse``, ``space_to_depth``, ``compile``) are checked against the
plain fp32 path in tests.

``backbone: roi_flow`` replaces both networks by landmark-region flow statistics on the same
clip grid (:mod:`pipeline.extract.roi_flow`: no weights, CPU, reads the flow and the faces
files' reference landmarks only).

A video with fewer than ``clip + 1`` frames has no clip: it gets no features file and a
row in ``data/<ds>/features/skipped.csv`` (video, n_frames, reason), which later stages
read to know it was left out on purpose.

Where it lives: this module runs the stage (probe every video's inputs, write
``skipped.csv``, hand the videos lacking an up-to-date file to the runner's batched
consumer, :func:`pipeline.core.runner.run_batched`, which skips complete outputs, collects
per-video failures into :class:`~pipeline.errors.StageFailed` and honours ``fail_fast``);
the machinery is in :mod:`pipeline.extract` (params, reader, device preparation, the
batching engine, the writer).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from tqdm.auto import tqdm

from pipeline.core.runner import Outcomes, VideoTask, run_batched
from pipeline.core.stage import StageContext, stage_main
from pipeline.errors import M2esError, StageFailed
from pipeline.extract.extractor import FeatureExtractor
from pipeline.extract.params import ROI_FLOW, STREAMS, FeaturesParams
from pipeline.extract.prepare import clip_count
from pipeline.extract.reader import Failed, PrefetchReader, VideoProbe, probe_video
from pipeline.extract.roi_flow import RoiFlowExtractor
from pipeline.extract.writer import too_short, video_digest, weights_identity, write_features, write_skipped
from pipeline.io.h5io import remove_partials, remove_stale
from pipeline.io.tables import read_videos

log = logging.getLogger(__name__)


def list_videos(ctx: StageContext) -> list[str]:
    """The videos of the dataset: ``resample/videos.csv`` order."""
    return [str(v) for v in read_videos(ctx.paths.resample / "videos.csv")["video"]]


def _probe_all(ctx: StageContext, videos: list[str], cfg: FeaturesParams
               ) -> tuple[list[VideoProbe], list[dict[str, Any]], dict[str, str]]:
    """(probes of the videos with clips, skipped.csv rows of those too short, {video: reason} of bad inputs).

    A too-short video's features file, if an earlier run (other params) left one, is removed.
    """
    probes: list[VideoProbe] = []
    skipped: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    for video in videos:
        try:
            probe = probe_video(video, ctx.paths.h5(ctx.paths.faces, video), ctx.paths.h5(ctx.paths.flow, video))
        except M2esError as exc:
            failures[video] = str(exc)
            continue
        if clip_count(probe.n_frames, cfg.clip, cfg.stride) == 0:
            row = too_short(probe, cfg.clip)
            log.warning("features: %s skipped (%s)", video, row["reason"])
            skipped.append(row)
            ctx.paths.h5(ctx.paths.features, video).unlink(missing_ok=True)
            continue
        probes.append(probe)
    return probes, skipped, failures


def _extract(todo: list[VideoTask], out: Outcomes, cfg: FeaturesParams, bad_inputs: dict[str, str]) -> None:
    """The batched consumer: report the videos whose inputs failed their probe, then compute and write the
    features of ``todo`` (batches span videos), reporting each video to ``out``; stop when it says so."""
    for video, reason in bad_inputs.items():
        out.failed(video, reason)
    if out.stopped:
        return
    extractor = RoiFlowExtractor(cfg) if cfg.backbone == ROI_FLOW else FeatureExtractor(cfg)
    provenance = extractor.provenance()
    by_video = {t.video: t for t in todo}
    n_clips = sum(clip_count(t.payload["probe"].n_frames, cfg.clip, cfg.stride) for t in todo)
    log.info("features: %d videos, %d clips per stream on %s (%s)", len(todo), n_clips, extractor.device,
             cfg.precision)
    with PrefetchReader([t.payload["probe"] for t in todo], cfg.prefetch, cfg.read_workers,
                        pin=extractor.device.type == "cuda", threads=cfg.read_threads,
                        streams=extractor.streams, flow_quantize=cfg.flow_quantize,
                        flow_bound=cfg.flow_bound) as reader, \
            tqdm(total=n_clips, desc="features", unit="clip") as bar:
        for result in extractor.run(reader):
            if isinstance(result, Failed):
                out.failed(result.video, result.reason)
            else:
                task = by_video[result.probe.video]
                write_features(task.output, result, task.digest, cfg, provenance)
                out.succeeded(task.video)
                bar.update(result.features[STREAMS[0]].shape[0])
            if out.stopped:
                break


def run(ctx: StageContext) -> None:
    """Compute features for every video of the dataset that lacks an up-to-date file."""
    cfg = FeaturesParams.from_params(ctx.section())
    out_dir = ctx.paths.features
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_partials(out_dir)
    if removed:
        log.info("features: removed %d partial file(s) of an interrupted run", removed)
    videos = list_videos(ctx)
    stale = remove_stale(out_dir, set(videos))
    if stale:
        log.info("features: removed %d output(s) of videos no longer in the tables: %s", len(stale),
                 ", ".join(stale))
    probes, skipped, bad_inputs = _probe_all(ctx, videos, cfg)
    skipped_csv = write_skipped(out_dir, skipped)
    weights = weights_identity(cfg)
    tasks = [VideoTask(p.video, ctx.paths.h5(out_dir, p.video), video_digest(cfg, p, weights), {"probe": p})
             for p in probes]
    try:
        # the consumer reports the bad inputs first (run_batched then raises them with the others); with no
        # video to compute it is not called, and they fail the stage here
        run_batched(partial(_extract, cfg=cfg, bad_inputs=bad_inputs), tasks, stage="features",
                    fail_fast=ctx.parallel.fail_fast)
        if bad_inputs:
            raise StageFailed("features", bad_inputs)
    finally:
        if skipped:
            log.warning("features: %d video(s) too short, listed in %s", len(skipped), skipped_csv)


main = stage_main("features", run)

if __name__ == "__main__":
    raise SystemExit(main())
