"""Stage ``baseline@<dataset>``: a non-learned spotter, reported by evaluate beside IAENet.

``python -m pipeline.baseline --dataset NAME`` reads ``data/<ds>/resample/videos.csv`` (videos,
subjects, fps), and per video ``data/<ds>/flow/<video>.h5`` and the reference landmarks of
``data/<ds>/faces/<video>.h5``, exactly as ``features.backbone: roi_flow`` reads them (and with
its ``features.roi`` knobs). Per video it reduces roi_flow's region displacement against a
sliding reference to one motion signal per frame (:mod:`pipeline.detect.signal`) and turns
its peaks into scored macro/micro intervals (:mod:`pipeline.detect.intervals`); nothing is
learned, the evaluate stage chooses its score thresholds by the same protocols as IAENet's.
Writes ``data/<ds>/baseline/``:

* ``predictions.csv``: the columns of ``runs/predictions.csv`` (video, subject, fold, epoch,
  onset, offset, type, score), frame numbers of the resampled sequence; ``fold`` is the
  video's subject (nothing was trained on any fold) and ``epoch`` is 0;
* ``method.json``: the method's name, version and every param it ran with.

It takes about a second per 600-frame video per reference span on one core; it keeps no
per-video files (a rerun recomputes every video).
"""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.core.runner import VideoTask, map_videos
from pipeline.core.stage import StageContext, stage_main
from pipeline.detect.params import METHOD, VERSION, BaselineParams
from pipeline.detect.video import baseline_video
from pipeline.extract.params import RoiParams
from pipeline.io.artifacts import PREDICTION_COLUMNS
from pipeline.io.atomic import write_json
from pipeline.io.tables import read_videos, write_table

log = logging.getLogger(__name__)

EPOCH = 0  # the predictions' epoch: one set, nothing trained
DESCRIPTION = ("no learning: the head-free motion of roi_flow's landmark regions against a sliding reference "
               "(both sides of each frame, several spans; the eyes' motion taken out against blinks), normalised per "
               "video by its median and MAD; each peak's interval is where the signal stays above a fraction of "
               "the peak, micro when it lasts at most 0.5 s, scored by the peak's height")


def run(ctx: StageContext) -> None:
    """Spot every video of the dataset with the baseline and write its predictions."""
    params = BaselineParams.from_params(ctx.section())  # a bad key or value fails before any input is read
    roi = RoiParams.from_params((ctx.section("features") or {}).get("roi"), where="params.yaml: features.roi")
    paths = ctx.paths
    videos = read_videos(paths.resample / "videos.csv")
    videos["subject"] = videos["subject"].astype(str)
    tasks = []
    for row in videos.itertuples(index=False):
        if int(row.n_frames) < 2:
            log.warning("baseline: video %s has %d frame(s) and no flow; no predictions", row.video, row.n_frames)
            continue
        tasks.append(VideoTask(row.video, None, "", {
            "faces": str(paths.h5(paths.faces, row.video)), "flow": str(paths.h5(paths.flow, row.video)),
            "fps": float(row.fps), "n_frames": int(row.n_frames),
            "roi": roi.as_params(), "baseline": params.as_params()}))
    results = map_videos(baseline_video, tasks, stage="baseline", parallel=ctx.parallel)
    subject_of = dict(zip(videos["video"], videos["subject"]))
    parts = [df.assign(video=video, subject=subject_of[video], fold=subject_of[video], epoch=EPOCH)
             for video, df in sorted(results.items()) if len(df)]
    preds = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PREDICTION_COLUMNS)
    preds["score"] = preds["score"].astype(float).round(6)
    out = paths.baseline
    out.mkdir(parents=True, exist_ok=True)
    write_table(preds[PREDICTION_COLUMNS], out / "predictions.csv")
    write_json(out / "method.json", {"method": METHOD, "version": VERSION, "description": DESCRIPTION,
                                     "params": {"baseline": params.as_params(), "features.roi": roi.as_params()}})
    log.info("baseline@%s: %d predictions (%d macro, %d micro) in %d videos -> %s", ctx.name, len(preds),
             int((preds["type"] == "macro").sum()), int((preds["type"] == "micro").sum()), len(results),
             out / "predictions.csv")


main = stage_main("baseline", run)

if __name__ == "__main__":
    raise SystemExit(main())
