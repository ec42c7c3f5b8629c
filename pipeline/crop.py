"""Stage ``crop``: decode the kept frames of every video, find the face, write face crops.

``python -m pipeline.crop --dataset NAME`` reads ``data/<ds>/resample/{videos,frames}.csv``
and writes ``data/<ds>/faces/<video>.h5`` (one per video, by :func:`pipeline.cropping.video.crop_video`):

* ``frames`` uint8 [T, size, size, C] (C = 3 colour, 1 grayscale), chunked along T
  (``chunk_frames``), compressed by ``compression``: ``blosc-lz4`` by default, the Blosc
  HDF5 filter (32001) with bit-shuffle and LZ4 (see :mod:`pipeline.io.h5chunks`);
* ``boxes`` int32 [T, 4] the crop box of each frame [x0, y0, x1, y1) in pixels of the
  reference frame's full size (a merged video, ``resample.merge``: of its part's
  reference frame; each part of a merged video has its own reference frame and box, as
  its parts may show the face elsewhere or be other subjects; attrs ``part_starts``,
  ``part_boxes``, ``part_reference_frames`` record them, the other attrs are the first part's); ``source_frames`` int64 [T] the dataset's frame numbers;
* attrs: video, subject, fps, source (as videos.csv holds it: no path of this machine), size,
  channels, detector, mode, box, landmarks (the reference frame's 68 points), reference_frame,
  reference_source_frame, frame_shape,
  decode_reduction, outside_fraction, mixed_size_frames, repeated_frames,
  track_keyframes, short, plus ``m2es_params`` (the crop params) and ``m2es_digest``.

The ``crop`` params (:class:`pipeline.cropping.params.CropParams`) are checked before any
input is read. The stage resumes: complete outputs with the same digest are skipped,
partial files and the outputs of videos no longer in the tables are removed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from pipeline.core.params import digest
from pipeline.core.runner import VideoTask, map_videos
from pipeline.core.stage import StageContext, stage_main
from pipeline.cropping.params import NOT_IN_DIGEST, VERSION, CropParams
from pipeline.cropping.video import crop_video
from pipeline.io.h5io import remove_partials, remove_stale
from pipeline.io.tables import SOURCE_VIDEO, read_frames, read_videos


log = logging.getLogger(__name__)


def source_parts(frames: pd.DataFrame | None) -> list[list[int]]:
    """[start, end) position ranges of a video's consecutive ``source_video`` runs (one range when it is not merged).

    ``frames``: the video's rows of a resample frames.csv, sorted by frame.
    """
    if frames is None or frames.empty:
        return [[0, 0]]
    if SOURCE_VIDEO not in frames.columns:
        return [[0, len(frames)]]
    names = frames[SOURCE_VIDEO].astype(str).to_numpy()
    starts = [0] + [i for i in range(1, len(names)) if names[i] != names[i - 1]]
    return [[a, b] for a, b in zip(starts, starts[1:] + [len(names)])]


def build_tasks(videos: pd.DataFrame, frames: pd.DataFrame, out_dir: Path,
                params: CropParams | Mapping[str, Any], root: Path | None = None) -> list[VideoTask]:
    """One VideoTask per row of ``videos`` (a resample videos.csv) with its rows of ``frames``.

    ``params``: the checked :class:`CropParams`, or the ``crop`` section to check.
    Relative paths in the tables are taken relative to ``root`` (default: the working
    directory, the repository root under DVC); the digest uses the tables' own values.
    """
    root = Path.cwd() if root is None else Path(root)
    p = params if isinstance(params, CropParams) else CropParams.from_params(params)
    values = asdict(p)
    groups = {v: g.sort_values("frame") for v, g in frames.groupby("video", sort=False)}
    tasks = []
    for row in videos.to_dict("records"):
        video = str(row["video"])
        g = groups.get(video)
        rows = [] if g is None else [[int(r["frame"]), int(r["source_frame"]), str(r["path"])]
                                     for r in g.to_dict("records")]
        identity = {k: str(row[k]) for k in ("subject", "fps", "source", "kind", "color")}
        stage = {k: v for k, v in values.items() if k not in NOT_IN_DIGEST}
        inputs: dict[str, Any] = {"video": identity, "frames": rows}
        parts = source_parts(g)
        if len(parts) > 1:   # a merged video (resample.merge): one face box per part; unmerged digests unchanged
            inputs["parts"] = parts
        d = digest({"stage": stage, "inputs": inputs, "version": VERSION})

        def resolve(path: str) -> str:
            return path if not path or Path(path).is_absolute() else str(root / path)

        payload = {
            "params": values, "subject": row["subject"], "fps": row["fps"], "kind": str(row["kind"]),
            "source": resolve(str(row["source"])), "color": int(row["color"]),
            "source_in_table": str(row["source"]),   # what the faces file records: no path of this machine
            "positions": [r[0] for r in rows], "source_frames": [r[1] for r in rows],
            "paths": [resolve(r[2]) for r in rows],
        }
        if len(parts) > 1:
            payload["parts"] = parts
        tasks.append(VideoTask(video, Path(out_dir) / f"{video}.h5", d, payload))
    return tasks


def run(ctx: StageContext) -> None:
    """Crop every video of the dataset (resumable: complete outputs with the same digest are skipped)."""
    params = CropParams.from_params(ctx.section())  # a bad key or value fails before any input is read
    videos = read_videos(ctx.paths.resample / "videos.csv")
    frames = read_frames(ctx.paths.resample / "frames.csv")
    removed = remove_partials(ctx.paths.faces)
    if removed:
        log.info("crop: removed %d partial file(s) left by an interrupted run", removed)
    tasks = build_tasks(videos, frames, ctx.paths.faces, params)
    stale = remove_stale(ctx.paths.faces, {t.video for t in tasks})
    if stale:
        log.info("crop: removed %d output(s) of videos no longer in the tables: %s", len(stale), ", ".join(stale))
    results = map_videos(crop_video, tasks, stage="crop", parallel=ctx.parallel)
    n_warn = sum(bool(r.get("warnings")) for r in results.values())
    log.info("crop@%s: %d video(s) cropped, %d with warnings, %d already complete",
             ctx.name, len(results), n_warn, len(tasks) - len(results))


main = stage_main("crop", run)

if __name__ == "__main__":
    raise SystemExit(main())
