"""Throughput of the crop stage against decoding alone, on real-size frame folders.

Writes two frame folders like the datasets' (CAS(ME)^2: 640x480 colour JPEG; SAMM-LV:
2040x1088 grayscale JPEG), then measures, in frames per second of one video:

* ``decode``: every frame decoded at full size with the same thread count (what any
  pipeline has to do at least), with OpenCV (``cv2.imdecode``); ``decode_libjpeg``: the
  same with libjpeg-turbo called directly (the region decoder asked for the whole frame,
  where the extension is built), the stricter baseline where it is faster;
* ``stage_<compression>``: the whole per-video crop (reference detection, landmarks,
  region and reduced decode, crop, resize, compression, HDF5 write, fsync) for each
  ``crop.compression`` (blosc-lz4, the default, blosc-zstd, lzf, gzip, none), with the
  file's bytes per frame, under the default ``crop.interpolation`` (auto);
  ``*_vs_decode`` against OpenCV's decode, ``*_vs_decode_libjpeg`` against libjpeg-turbo's;
* ``stage_<compression>_area``: the default compression with ``interpolation: area``;
* ``stage_<compression>_whole``: the default compression with ``region_decode: false``
  (every frame decoded whole, as the stage did before the region decoder).

``--source synth`` (the default) renders the frames with the project's synthetic generator
(:func:`pipeline.synth.generate`, ``params.yaml: synth`` at the dataset's size, colour and
layout, one subject, one video at 30 fps: face width 50-60% of the frame height, JPEG
quality 90, sensor noise sigma 2); ``--source noise`` renders a drifting astronaut
portrait with noise sigma 3 at JPEG quality 95 (face about 240 / 560 px), which makes the
JPEGs larger and slower to decode and the crops harder to compress.

Each stage run is paired with a decode-alone run just before it; ``*_vs_decode`` is the
median of those pairs' ratios (each pair's in ``*_vs_decode_runs``), ``*_fps`` the best run.

Each scenario's video has its dataset's mean length unless ``--frames`` says otherwise:
CAS(ME)^2 248k frames / 95 videos ~ 2,600 frames at 30 fps; SAMM-LV 491k frames / 147
videos at 200 fps ~ 3,340, of which the 30 fps resampling keeps ~500. The per-video costs
(reference detection ~45 ms, fsync) weigh on short videos: ``--frames 200`` shows them.

Prints one JSON object (machine, versions, figures). Not part of pytest; no assertion.
``--videos N`` adds the all-cores run (``all_cores`` in each scenario): N copies of the video
over ``--jobs`` processes (default: every core), one video per process with ``crop.threads``
threads, through the stage's own runner, against decode alone in the same processes and
threads. That is how the stage runs a dataset; ``--threads 16`` instead spreads one video
over 16 threads, which its serial parts (reference detection, chunk writes, fsync) bound.
``--all-cores-compressions blosc-lz4,none`` repeats the all-cores run per codec
(``all_cores_none``...), which separates the codec's cost from the disk writes';
``--all-cores-whole`` adds it with ``region_decode: false`` (``all_cores_whole``).

Usage: ``python benchmarks/bench_crop.py [--source synth|noise] [--frames N] [--threads 2] [--size 224]
[--videos 32 --jobs 16]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
from skimage import data

from pipeline.io import jpeg_region
from pipeline.cropping.params import CropParams
from pipeline.cropping.video import crop_video, make_finder
from pipeline.io.decode import ImageFolderSource, region_decoder_agrees
from pipeline.io.h5chunks import CODECS
from pipeline.core.params import deep_merge, digest, load_params
from pipeline.core.runner import ParallelParams, VideoTask
from pipeline.synth import generate

SCENARIOS = {
    "casme2_640x480_color": {"shape": (480, 640), "scale": 2.6, "offset": (-160, -150), "color": True,
                             "frames": 2600, "layout": "casme2"},
    "samm_2040x1088_gray": {"shape": (1088, 2040), "scale": 6.0, "offset": (-300, -300), "color": False,
                            "frames": 500, "layout": "samm"},
}
SYNTH_FPS = 30.0  # the frames the crop stage sees (SAMM-LV's 200 fps are resampled to 30 before it)


def synth_folder(folder: Path, n: int, shape: tuple[int, int], color: bool, layout: str,
                 seed: int = 0) -> list[str]:
    """Render one ``n``-frame video with the project's synthetic generator; return its frame paths in order."""
    p = deep_merge(load_params()["synth"], {
        "size": [shape[1], shape[0]], "color": color, "seed": seed, "fps": SYNTH_FPS, "n_subjects": 1,
        "videos_per_subject": 1, "duration_s": n / SYNTH_FPS})
    dataset = {"name": f"bench_{layout}", "layout": layout, "frames_dir": "frames", "source_fps": SYNTH_FPS,
               "color": color}
    (spec,) = generate(p, dataset, folder, ParallelParams(backend="sequential"))
    video_dir = folder / spec.rel_path
    paths = sorted(video_dir.glob("*.jpg"), key=lambda q: int(q.stem.rsplit("_", 1)[-1]))
    if len(paths) != n:
        raise RuntimeError(f"{video_dir}: the generator wrote {len(paths)} frames, expected {n}")
    return [str(q) for q in paths]


def render_folder(folder: Path, n: int, shape: tuple[int, int], scale: float, offset: tuple[int, int],
                  color: bool, seed: int = 0) -> list[str]:
    """Write ``n`` noisy JPEG frames of a slightly moving face; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = data.astronaut()
    paths = []
    for i in range(n):
        dx = offset[0] + 1.5 * np.sin(i / 10)
        m = np.float32([[scale, 0, dx], [0, scale, offset[1]]])
        img = cv2.warpAffine(base, m, (shape[1], shape[0]), borderValue=(128, 128, 128))
        img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if color else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        path = folder / f"img_{i + 1}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(str(path))
    return paths


def _whole_box(_position: int, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    return 0, 0, shape[1], shape[0]


def _decode_count(paths: list[str], color: bool, threads: int, decoder: str = "opencv") -> int:
    """Decode every frame at full size (what any pipeline has to do at least); returns the frame count.

    ``decoder``: ``opencv`` (``cv2.imdecode``, the stage's whole-frame decode) or ``libjpeg``
    (the region decoder asked for the whole frame: libjpeg-turbo without OpenCV's overhead).
    """
    source = ImageFolderSource("bench", paths, color, threads)
    if decoder == "opencv":
        for _pos, res in source.map(lambda p, f: f.shape, batch=64):
            assert not isinstance(res, Exception), res
    else:
        for _group, items in source.map_groups(lambda g, items: items, 8, window=8, region=_whole_box):
            assert all(it.pixels.shape[:2] == it.frame_shape[:2] for it in items), "not a whole-frame decode"
    return len(paths)


def time_decode(paths: list[str], color: bool, threads: int, decoder: str = "opencv") -> float:
    """Frames/s of a full-size decode of every frame."""
    t0 = time.perf_counter()
    return _decode_count(paths, color, threads, decoder) / (time.perf_counter() - t0)


def crop_task(paths: list[str], color: bool, out: Path, params: dict, video: str = "bench") -> VideoTask:
    """The crop stage's task for the frames ``paths`` (a video of its own), written to ``out``."""
    payload = {"params": params, "subject": "1", "fps": 30.0, "kind": "frames", "source": str(Path(paths[0]).parent),
               "color": int(color), "positions": list(range(len(paths))),
               "source_frames": list(range(1, len(paths) + 1)), "paths": paths}
    return VideoTask(video, out, digest(params), payload)


def stage_tasks(paths: list[str], color: bool, folder: Path, params: dict, n: int) -> list[VideoTask]:
    """``n`` crop tasks over the same frames, each with its own output file (as the stage builds them)."""
    return [crop_task(paths, color, folder / f"bench_{k}.h5", params, f"bench_{k}") for k in range(n)]


def all_cores(paths: list[str], color: bool, folder: Path, params: dict, videos: int, jobs: int,
              repeats: int) -> dict:
    """Frames/s of decode alone and of the crop stage over ``videos`` videos in ``jobs`` processes.

    This is how the stage runs a dataset: one video per process (``crop.threads`` threads
    each) through :func:`pipeline.core.runner.map_videos`. The processes are started and their
    dlib models loaded by a first, untimed run; each timed stage run is paired with a
    decode-alone run just before it (the same videos, processes and threads).
    """
    from joblib import Parallel, delayed

    from pipeline.core.runner import map_videos

    threads = int(params["threads"])
    cfg = ParallelParams(backend="loky", n_jobs=jobs)

    def stage_run() -> float:
        tasks = stage_tasks(paths, color, folder, params, videos)
        for t in tasks:
            t.output.unlink(missing_ok=True)
        t0 = time.perf_counter()
        map_videos(crop_video, tasks, stage="crop", parallel=cfg)
        return videos * len(paths) / (time.perf_counter() - t0)

    def decode_run(decoder: str) -> float:
        t0 = time.perf_counter()
        total = sum(Parallel(n_jobs=jobs, backend="loky")(
            delayed(_decode_count)(paths, color, threads, decoder) for _ in range(videos)))
        return total / (time.perf_counter() - t0)

    stage_run()  # start the workers, load the models
    decoders = decoders_here()
    runs: dict[str, list[float]] = {d: [] for d in decoders}
    stages = []
    for _ in range(repeats):
        for d in decoders:
            runs[d].append(decode_run(d))
        stages.append(stage_run())
    out = {"videos": videos, "processes": jobs, "threads_per_video": threads,
           "region_decode": bool(params.get("region_decode", True) and region_decoder_agrees()),
           "stage_fps": round(max(stages), 1)}
    out.update(ratios(stages, runs))
    return out


def decoders_here() -> list[str]:
    """The whole-frame decoders to compare with: OpenCV, and libjpeg-turbo where the extension is built."""
    return ["opencv", "libjpeg"] if region_decoder_agrees() else ["opencv"]


def ratios(stages: list[float], decodes: dict[str, list[float]]) -> dict:
    """Best decode-alone frames/s per decoder and the median stage / decode ratio of the paired runs."""
    out: dict = {}
    for d, fps in decodes.items():
        key = "" if d == "opencv" else f"_{d}"
        out[f"decode{key}_fps"] = round(max(fps), 1)
        out[f"stage_vs_decode{key}"] = round(float(np.median([s / f for s, f in zip(stages, fps)])), 3)
        out[f"stage_vs_decode{key}_runs"] = [round(s / f, 3) for s, f in zip(stages, fps)]
    return out


def time_stage(paths: list[str], color: bool, out: Path, params: dict) -> tuple[float, dict]:
    """Frames/s of the whole per-video crop (models already loaded)."""
    task = crop_task(paths, color, out, params)
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    summary = crop_video(task)
    fps = len(paths) / (time.perf_counter() - t0)
    with h5py.File(out) as f:
        summary["bytes_per_frame"] = round(os.path.getsize(out) / len(paths))
        summary["box_side"] = int(f.attrs["box"][2] - f.attrs["box"][0])
    return fps, summary


def machine() -> dict:
    """What ran the benchmark."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import dlib
    import blosc
    import hdf5plugin

    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "opencv": cv2.__version__, "dlib": dlib.__version__, "h5py": h5py.__version__,
            "hdf5plugin": hdf5plugin.version, "blosc": blosc.__version__,
            "libjpeg_turbo_region_decoder": jpeg_region.libjpeg_version(), "gpu": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=("synth", "noise"), default="synth",
                    help="synth: the project's synthetic generator; noise: a noisy astronaut portrait")
    ap.add_argument("--frames", type=int, default=None, help="frames per video (default: the dataset's mean)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3, help="decode + stage pairs per variant (median ratio)")
    ap.add_argument("--compressions", default=",".join(CODECS),
                    help=f"crop.compression variants of the one-video runs (default: all, {','.join(CODECS)})")
    ap.add_argument("--no-area", action="store_true", help="skip the interpolation: area variant")
    ap.add_argument("--no-whole", action="store_true",
                    help="skip the region_decode: false variant (whole-frame OpenCV decode, the stage before)")
    ap.add_argument("--videos", type=int, default=0,
                    help="also the all-cores run: this many videos over --jobs processes, one video per process "
                         "with crop.threads threads, as the stage runs a dataset (0: skip)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes of the all-cores run")
    ap.add_argument("--all-cores-compressions", default=None,
                    help="crop.compression variants of the all-cores run (default: the default codec only); "
                         "each but the default is reported as all_cores_<codec>")
    ap.add_argument("--all-cores-whole", action="store_true",
                    help="also the all-cores run with region_decode: false (reported as all_cores_whole)")
    ap.add_argument("--stage-threads", type=int, default=None,
                    help="crop.threads per video in the all-cores run (default: params.yaml's)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="which frame folders (comma-separated)")
    ap.add_argument("--out", type=Path, default=None,
                    help="also write the JSON here, after every measurement (\"complete\": false until the "
                         "last), so a run stopped by a time limit keeps what it measured")
    args = ap.parse_args()
    base = CropParams(size=args.size, threads=args.threads)
    t0 = time.perf_counter()
    make_finder(base)
    load_s = time.perf_counter() - t0
    figures: dict = {"source": args.source, "model_load_s_once_per_process": round(load_s, 3),
                     "load_avg_1min_before": round(os.getloadavg()[0], 2)}  # other jobs on the machine
    result = {"benchmark": "crop", "machine": machine(), "figures": figures, "complete": False}

    def save() -> None:
        if args.out is not None:
            args.out.write_text(json.dumps(result, indent=2))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scenarios.split(","):
            if name not in SCENARIOS:
                raise SystemExit(f"--scenarios: unknown {name!r}; known: {', '.join(SCENARIOS)}")
            sc = SCENARIOS[name]
            frames = args.frames or sc["frames"]
            if args.source == "synth":
                t_render = time.perf_counter()
                paths = synth_folder(Path(tmp) / name, frames, sc["shape"], sc["color"], sc["layout"])
                render_s = round(time.perf_counter() - t_render, 1)
            else:
                paths = render_folder(Path(tmp) / name, frames, sc["shape"], sc["scale"], sc["offset"], sc["color"])
                render_s = None
            fig: dict = {"frames": frames, "threads": args.threads, "size": args.size, "render_s": render_s,
                         "jpeg_bytes_per_frame": round(sum(os.path.getsize(q) for q in paths) / len(paths))}
            variants = {comp: {"compression": comp} for comp in args.compressions.split(",")}
            if not args.no_area:
                variants[f"{base.compression}_area"] = {"interpolation": "area"}
            if not args.no_whole:
                variants[f"{base.compression}_whole"] = {"region_decode": False}
            decodes: dict[str, list[float]] = {d: [] for d in decoders_here()}
            figures[name] = fig
            for comp, change in variants.items():
                params = {**base.__dict__, **change}
                stages, paired, summary = [], {d: [] for d in decodes}, {}
                for _ in range(args.repeats):
                    # decode alone right before each stage run: on a shared machine the load drifts,
                    # so each ratio compares runs seconds apart
                    for d in decodes:
                        paired[d].append(time_decode(paths, sc["color"], args.threads, d))
                        decodes[d].append(paired[d][-1])
                    fps, summary = time_stage(paths, sc["color"], Path(tmp) / f"{name}.h5", params)
                    stages.append(fps)
                fig[f"stage_{comp}_fps"] = round(max(stages), 1)
                for key, value in ratios(stages, paired).items():
                    if key.startswith("stage_vs_"):
                        fig[key.replace("stage_", f"stage_{comp}_", 1)] = value
                fig[f"stage_{comp}_bytes_per_frame"] = summary["bytes_per_frame"]
                fig[f"stage_{comp}_region_decode"] = summary["region_decode"]
                fig["decode_reduction"] = summary["reduce"]
                fig["box_side"] = summary["box_side"]
                save()
            for d, fps in decodes.items():
                key = "decode" if d == "opencv" else f"decode_{d}"
                fig[f"{key}_fps"] = round(max(fps), 1)
                fig[f"{key}_fps_range"] = [round(min(fps), 1), round(max(fps), 1)]
            if args.videos:
                threads = args.stage_threads or CropParams().threads
                all_variants = {comp: {"compression": comp}
                                for comp in (args.all_cores_compressions or base.compression).split(",")}
                if args.all_cores_whole:
                    all_variants["whole"] = {"region_decode": False}
                for comp, change in all_variants.items():
                    params = {**base.__dict__, "threads": threads, **change}
                    key = "all_cores" if comp == base.compression else f"all_cores_{comp}"
                    fig[key] = all_cores(paths, sc["color"], Path(tmp) / f"{name}_all", params, args.videos,
                                         args.jobs, args.repeats)
                    save()
    result["complete"] = True
    save()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
