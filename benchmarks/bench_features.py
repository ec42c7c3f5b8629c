"""Throughput of the features stage: clips/s per stream, end to end from HDF5, plain vs fast path.

Writes a few synthetic videos to a temporary folder as the stages write them (faces
uint8 224x224x3 in 8-frame chunks with the crop stage's default compression, flow
float16 in one-field chunks with the flow stage's default lzf), then runs
:class:`pipeline.extract.extractor.FeatureExtractor` fed by :class:`pipeline.extract.reader.PrefetchReader`
over that list repeated as many times as needed for ``--seconds`` of work:

* ``plain``: fp32 (TF32 off), contiguous memory, batch ``--plain-batch``;
* ``fast``: bf16 autocast, channels_last_3d, folded BatchNorm + merged 1x1 branches,
  optional space-to-depth stem (``--space-to-depth``) and ``torch.compile``
  (``--compile``), batch ``--fast-batch``.

For each path: clips/s of the RGB stream alone, the flow stream alone and both together
(both: clips/s of each stream while both run; the
models are built and compiled once per path), the model-only rate on a resident batch,
achieved TFLOP/s (27.8 GFLOP per RGB clip, 25.6 per flow clip, at 224 px) and the
fraction of the card's dense bf16 matrix peak; the fast path's agreement with the plain
path (minimum per-clip cosine similarity) on the same video; the reader's frames/s; and
``host_fraction``: the share of each end-to-end pass the host thread spent waiting for the
reader, moving and preparing videos (``to_device``), enqueuing batches (``launch``) and
waiting for the device's results (``device_wait``), which says whether the gap to the
model-only rate is the reader, the host or the device's own preparation work; with
``--diagnose`` each single stream also runs from videos already in host memory (no reader)
and with 1 and 3 batches in flight (``features.inflight``, default 2).
JSON goes to stdout and to ``--out``. ``--quick`` keeps the whole run under ~3 minutes.

``--reader-only`` measures only the host-side reader (no model): frames/s (each frame
with its flow field) of the old whole-dataset h5py read and of
:class:`~pipeline.extract.reader.PrefetchReader` with 1, 2, ... chunk threads (pinned memory on
CUDA, as the stage runs there), on files in the page cache, so decoding, not the disk,
is measured. The target is ~6,000 frames/s (3,000 clips/s per stream at stride 2).

Run (GPU machine, repository root): ``python benchmarks/bench_features.py --quick --out bench.json``;
reader only: ``python benchmarks/bench_features.py --reader-only --out reader.json``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.extract.extractor import FeatureExtractor, VideoFeatures  # noqa: E402
from pipeline.extract.params import FeaturesParams  # noqa: E402
from pipeline.extract.prepare import clip_count  # noqa: E402
from pipeline.extract.reader import PrefetchReader, VideoInput, probe_video, read_video, reader_pool  # noqa: E402
from pipeline.cropping.params import CropParams  # noqa: E402
from pipeline.tvl1.params import FlowParams  # noqa: E402
from benchmarks.jsonout import emit  # noqa: E402
from pipeline.io.h5chunks import CODECS, ChunkCodec, decode_threads  # noqa: E402
from pipeline.io.h5io import atomic_h5  # noqa: E402

log = logging.getLogger("bench_features")

GFLOP_PER_CLIP = {"rgb": 27.8, "flow": 25.6}  # Inception I3D, one 8x224x224 clip (reference measurement)
# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, most specific first.
BF16_PEAKS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
              ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("A10", 125.0))


def card_peak(name: str) -> float | None:
    """The dense bf16 peak of a card, from its name (None when unknown)."""
    for fragment, peak in BF16_PEAKS:
        if fragment in name:
            return peak
    return None


def synthetic_video(n_frames: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Face crops uint8 [T, size, size, 3] and smooth flow float16 [T-1, size, size, 2] (pixels).

    What the reader decodes depends on how compressible the data are, so both are made to
    compress like the stages' real outputs: the crops are the skimage astronaut's face,
    drifting, with sensor noise, through a quality-90 JPEG (the synthetic datasets' setting)
    and an area resize from a 1.43x larger box, as the crop stage makes them (lzf ~1.15x,
    as on ``bench_crop``'s crops); the flow is smooth with 0.01 px of noise, because TV-L1
    fields are not smooth to the last bit (lzf stores real 224 px fields 0.4% smaller at
    best; a perfectly smooth field it would store 27% smaller).
    """
    import cv2
    from skimage import data

    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    face, box = data.astronaut(), int(round(size * 1.43))
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    for i in range(n_frames):
        dx, dy = 3 * np.sin(i / 10 + seed), 2 * np.cos(i / 13 + seed)
        m = np.float32([[box / 300, 0, -60 * box / 300 + dx], [0, box / 300, -20 * box / 300 + dy]])
        img = cv2.warpAffine(face, m, (box, box), flags=cv2.INTER_LINEAR)
        img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
        img = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], cv2.IMREAD_COLOR)
        frames[i] = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    flow = torch.randn(n_frames - 1, 2, 6, 6, generator=gen) * 5
    flow = torch.nn.functional.interpolate(flow, size=(size, size), mode="bilinear", align_corners=False)
    flow = flow + torch.randn(flow.shape, generator=gen) * 0.01
    return frames, flow.permute(0, 2, 3, 1).half().contiguous().numpy()


def write_inputs(root: Path, n_videos: int, n_frames: int, size: int, faces_compression: str = "blosc-lz4",
                 flow_compression: str = "none", chunk_frames: int = 8) -> list[tuple]:
    """Faces and flow files as the crop and flow stages write them; returns (video, faces, flow) paths.

    Faces: ``chunk_frames``-frame chunks, compressed with :class:`pipeline.io.h5chunks.ChunkCodec`
    as the crop stage does; flow: one field per chunk, h5py's filter (the flow stage's layout).
    """
    out = []
    codec = ChunkCodec(faces_compression)
    flow_opts = {} if flow_compression == "none" else ChunkCodec(flow_compression).dataset_options()
    for k in range(n_videos):
        frames, flow = synthetic_video(n_frames, size, seed=k)
        video = f"bench_{k}"
        faces_path, flow_path = root / "faces" / f"{video}.h5", root / "flow" / f"{video}.h5"
        with atomic_h5(faces_path, f"faces-{k}") as f:
            d = f.create_dataset("frames", shape=frames.shape, dtype=np.uint8, chunks=(chunk_frames, size, size, 3),
                                 **codec.dataset_options())
            for r in range(0, n_frames, chunk_frames):
                whole = np.zeros((chunk_frames, size, size, 3), np.uint8)
                whole[:len(frames[r:r + chunk_frames])] = frames[r:r + chunk_frames]
                if codec.threaded:
                    d.id.write_direct_chunk((r, 0, 0, 0), codec.compress(whole))
                else:
                    d[r:r + chunk_frames] = frames[r:r + chunk_frames]
        with atomic_h5(flow_path, f"flow-{k}") as f:
            f.create_dataset("flow", data=flow, chunks=(1, size, size, 2), **flow_opts)
        out.append((video, faces_path, flow_path))
    return out


def make_config(path: str, args: argparse.Namespace) -> FeaturesParams:
    """The plain or fast feature config of this benchmark."""
    common = {"allow_random_init": True, "input_size": args.size, "device": args.device, "prefetch": 4}
    if path == "plain":
        return FeaturesParams.from_params({**common, "precision": "fp32", "batch_size": args.plain_batch,
                                          "read_workers": args.read_workers})
    return FeaturesParams.from_params({**common, "precision": "bf16", "channels_last": True, "fuse": True,
                                      "space_to_depth": args.space_to_depth, "compile": args.compile,
                                      "batch_size": args.fast_batch, "read_workers": args.read_workers})


def run_stream_set(extractor: FeatureExtractor, probes: list, pin: bool, workers: int, pool: Any,
                   resident: list[VideoInput] | None = None) -> tuple[int, float]:
    """Clips per stream and seconds for one end-to-end pass over ``probes`` (or over ``resident``
    videos already in host memory, which leaves the reader out)."""
    clips = 0
    sync = torch.cuda.synchronize if extractor.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    with ExitStack() as stack:
        inputs = resident if resident is not None else stack.enter_context(
            PrefetchReader(probes, prefetch=4, workers=workers, pin=pin, pool=pool, streams=extractor.streams))
        for result in extractor.run(inputs):
            if not isinstance(result, VideoFeatures):
                raise RuntimeError(f"{result.video}: {result.reason}")
            clips += next(iter(result.features.values())).shape[0]
    sync()
    return clips, time.perf_counter() - start


def host_fraction(extractor: FeatureExtractor, secs: float) -> dict[str, float]:
    """Share of a pass of ``secs`` seconds that the host thread spent in each part of the loop."""
    return {k: round(v / secs, 3) for k, v in extractor.host_seconds.items()}


def diagnose(extractor: FeatureExtractor, probes: list, pin: bool, workers: int, pool: Any,
             reps: int) -> dict[str, Any]:
    """Where an end-to-end pass loses time against the model alone, by changing one thing at a time.

    * ``resident``: the same videos read once into (page-locked) host memory before the
      pass, so the reader thread and its chunk threads are out of the loop;
    * ``inflight_<n>``: the pass with ``n`` batches queued on the device instead of the
      configured number.
    """
    out: dict[str, Any] = {}
    items = [read_video(p, pin=pin, streams=extractor.streams) for p in probes]
    clips, secs = run_stream_set(extractor, [], pin, workers, pool, resident=items * reps)
    out["resident"] = {"clips_per_s": round(clips / secs, 1), "host_fraction": host_fraction(extractor, secs)}
    for depth in sorted({1, 3} - {extractor.cfg.inflight}):
        other = extractor.with_options(inflight=depth)
        clips, secs = run_stream_set(other, probes * reps, pin, workers, pool)
        out[f"inflight_{depth}"] = {"clips_per_s": round(clips / secs, 1), "host_fraction": host_fraction(other, secs)}
    log.info("%s diagnosis: %s", "+".join(extractor.streams), json.dumps(out))
    return out


def model_only(extractor: FeatureExtractor, stream: str, batch: int, reps: int) -> float:
    """Clips/s of the model on a resident batch (no I/O, no preparation)."""
    cfg = extractor.cfg
    channels = 3 if stream == "rgb" else 2
    x = torch.randn(batch, channels, cfg.clip, cfg.input_size, cfg.input_size, device=extractor.device)
    x = x.to(extractor.dtype).contiguous(memory_format=extractor.memory_format)
    fn = extractor._fns[stream]
    sync = torch.cuda.synchronize if extractor.device.type == "cuda" else (lambda: None)
    with extractor._inference():
        fn(x)
        sync()
        start = time.perf_counter()
        for _ in range(reps):
            fn(x)
        sync()
    return batch * reps / (time.perf_counter() - start)


def bench_path(path: str, args: argparse.Namespace, inputs: list[tuple], peak: float | None,
               pool: Any) -> tuple[dict[str, Any], FeatureExtractor]:
    """All measurements of one path (plain or fast)."""
    cfg = make_config(path, args)
    pin = cfg.device != "cpu" and torch.cuda.is_available()
    probes = [probe_video(*item) for item in inputs]
    per_video = clip_count(probes[0].n_frames, cfg.clip, cfg.stride)
    out: dict[str, Any] = {"config": {k: v for k, v in cfg.__dict__.items() if not k.startswith("weights")}}
    results = []
    t0 = time.perf_counter()
    full = FeatureExtractor(cfg)  # both models, each compiled once (on its first batch) when --compile
    for streams in (("rgb",), ("flow",), ("rgb", "flow")):
        extractor = full.subset(streams)
        t1 = time.perf_counter()
        run_stream_set(extractor, probes[:1], pin, cfg.read_workers, pool)  # warm-up (compiles, autotunes)
        setup_s = time.perf_counter() - t1 + (t1 - t0 if streams == ("rgb",) else 0.0)
        clips, secs = run_stream_set(extractor, probes, pin, cfg.read_workers, pool)
        rate = clips / secs
        reps = max(1, int(np.ceil(args.seconds * rate / (per_video * len(probes)))))
        if reps > 1:
            clips, secs = run_stream_set(extractor, probes * reps, pin, cfg.read_workers, pool)
            rate = clips / secs
        gflop = sum(GFLOP_PER_CLIP[s] for s in streams) / len(streams) * (args.size / 224) ** 2
        entry = {"streams": "+".join(streams), "clips_per_stream": clips, "seconds": round(secs, 3),
                 "clips_per_s_per_stream": round(rate, 1), "setup_and_warmup_s": round(setup_s, 1),
                 "tflops": round(rate * gflop * len(streams) / 1e3, 1),
                 # where the host thread's time went in the measured pass (the rest: consuming results)
                 "host_fraction": host_fraction(extractor, secs)}
        if peak:
            entry["bf16_peak_fraction"] = round(rate * gflop * len(streams) / 1e3 / peak, 4)
        if len(streams) == 1 and args.diagnose:
            entry["diagnose"] = diagnose(extractor, probes, pin, cfg.read_workers, pool, max(reps, 1))
        if len(streams) == 1 and args.model_only_reps:
            mrate = model_only(extractor, streams[0], cfg.batch_size, args.model_only_reps)
            entry["model_only_clips_per_s"] = round(mrate, 1)
            log.info("%s %s model only: %.0f clips/s", path, entry["streams"], mrate)
            if peak:
                entry["model_only_bf16_peak_fraction"] = round(mrate * gflop / 1e3 / peak, 4)
        log.info("%s %s: %.0f clips/s per stream (%d clips, %.1f s)", path, entry["streams"], rate, clips, secs)
        results.append(entry)
    out["results"] = results
    return out, full


def agreement(plain: FeatureExtractor, fast: FeatureExtractor, inputs: list[tuple]) -> dict[str, float]:
    """Minimum per-clip cosine similarity of the fast path's features to the plain path's (same video)."""
    item = read_video(probe_video(*inputs[0]))
    ref, got = plain.extract(item), fast.extract(item)
    out = {}
    for s in ("rgb", "flow"):
        cos = torch.nn.functional.cosine_similarity(torch.from_numpy(ref[s]), torch.from_numpy(got[s]), dim=1)
        out[f"min_cosine_{s}"] = round(float(cos.min()), 6)
    return out


def reader_rate(inputs: list[tuple], workers: int, pool: Any = None, threads: int = 0,
                pin: bool = False) -> dict[str, Any]:
    """Frames/s the prefetching reader delivers alone (HDF5 read + decompression)."""
    probes = [probe_video(*item) for item in inputs]
    start = time.perf_counter()
    frames = 0
    with PrefetchReader(probes, prefetch=4, workers=workers, pool=pool if workers else None, threads=threads,
                        pin=pin) as reader:
        for item in reader:
            if not hasattr(item, "frames"):
                raise RuntimeError(f"{item.video}: {item.reason}")
            frames += item.probe.n_frames
    secs = time.perf_counter() - start
    return {"workers": workers, "threads": 0 if workers else decode_threads(threads), "pinned": pin,
            "frames_per_s": round(frames / secs, 1), "frames": frames}


def plain_read_rate(inputs: list[tuple]) -> dict[str, Any]:
    """Frames/s of the reader before the chunk pool: whole datasets through h5py, one after another."""
    import h5py

    start = time.perf_counter()
    frames = 0
    for _video, faces, flow in inputs:
        with h5py.File(faces, "r") as f:
            frames += f["frames"][()].shape[0]
        with h5py.File(flow, "r") as f:
            f["flow"][()]
    secs = time.perf_counter() - start
    return {"reader": "h5py whole datasets (before)", "frames_per_s": round(frames / secs, 1), "frames": frames}


def reader_only(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """The reader alone: the old h5py read, then PrefetchReader with each thread count (best of ``--repeats``)."""
    cuda = torch.cuda.is_available() and args.device != "cpu"
    with tempfile.TemporaryDirectory(prefix="bench_reader_") as tmp:
        t0 = time.perf_counter()
        inputs = write_inputs(Path(tmp), args.videos, args.frames, args.size, args.faces_compression,
                              args.flow_compression)
        report["inputs"]["write_s"] = round(time.perf_counter() - t0, 1)
        report["inputs"]["bytes_per_frame"] = {
            "faces": round(sum(os.path.getsize(i[1]) for i in inputs) / (args.videos * args.frames)),
            "flow": round(sum(os.path.getsize(i[2]) for i in inputs) / (args.videos * args.frames))}
        plain_read_rate(inputs)  # page cache and allocator warm-up
        runs = [max((plain_read_rate(inputs) for _ in range(args.repeats)), key=lambda r: r["frames_per_s"])]
        for threads in args.reader_threads:
            best = max((reader_rate(inputs, 0, threads=threads, pin=cuda) for _ in range(args.repeats)),
                       key=lambda r: r["frames_per_s"])
            runs.append(best)
            log.info("reader: %s", json.dumps(best))
        if args.read_workers:
            pool = reader_pool(args.read_workers)
            try:
                reader_rate(inputs * max(1, args.read_workers // len(inputs)), args.read_workers, pool)  # spawn
                runs.append(reader_rate(inputs * 2, args.read_workers, pool, pin=cuda))
            finally:
                pool.shutdown()
        report["reader"] = runs


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small inputs and short timings (< ~3 min incl. compile)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--videos", type=int, default=None, help="distinct videos written (default 4, quick 2)")
    p.add_argument("--frames", type=int, default=None, help="frames per video (default 1001, quick 401)")
    p.add_argument("--seconds", type=float, default=None, help="target seconds per timed pass (default 15, quick 5)")
    p.add_argument("--plain-batch", type=int, default=64)
    p.add_argument("--fast-batch", type=int, default=256)
    p.add_argument("--compile", action="store_true", help="torch.compile on the fast path")
    p.add_argument("--space-to-depth", action="store_true",
                   help="fast path: the space-to-depth stem (features.space_to_depth)")
    p.add_argument("--read-workers", type=int, default=0,
                   help="whole videos read in this many processes instead of the chunk threads (default 0: the "
                        "stage's default; 8 processes were slower than one thread on the H200 host)")
    p.add_argument("--faces-compression", default=CropParams().compression, choices=CODECS,
                   help="faces files' codec (default: the crop stage's)")
    p.add_argument("--flow-compression", default=FlowParams().compression or "none",
                   choices=["lzf", "gzip", "blosc-lz4", "none"], help="flow files' filter (default: the flow stage's)")
    p.add_argument("--reader-only", action="store_true", help="measure only the host-side reader (no model)")
    p.add_argument("--reader-threads", default=None,
                   help="comma-separated chunk-thread counts for --reader-only (default 1,2,... up to the cores)")
    p.add_argument("--repeats", type=int, default=3, help="--reader-only: best of this many passes")
    p.add_argument("--model-only-reps", type=int, default=None, help="batches for the model-only rate (0: skip)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, if not detected")
    p.add_argument("--paths", default="plain,fast")
    p.add_argument("--diagnose", action="store_true",
                   help="per single stream, also a pass from videos resident in host memory (no reader) and "
                        "passes with 1 and 3 batches in flight (see diagnose())")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args.videos = args.videos or (2 if args.quick else 4)
    args.frames = args.frames or (401 if args.quick else 1001)
    args.seconds = args.seconds if args.seconds is not None else (5.0 if args.quick else 15.0)
    args.model_only_reps = args.model_only_reps if args.model_only_reps is not None else (5 if args.quick else 20)
    cores = os.cpu_count() or 2
    if args.reader_threads is None:
        args.reader_threads = sorted({t for t in (1, 2, 4, 8, 16, min(cores, 16)) if t <= cores})
    else:
        args.reader_threads = [int(t) for t in str(args.reader_threads).split(",")]
    cuda = torch.cuda.is_available() and args.device != "cpu"
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    peak = args.peak_tflops or (card_peak(name) if cuda else None)
    report: dict[str, Any] = {
        "benchmark": "features", "quick": args.quick,
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "cuda": torch.version.cuda, "device": name,
                    "bf16_peak_tflops": peak},
        "inputs": {"videos": args.videos, "frames": args.frames, "size": args.size,
                   "faces_compression": args.faces_compression, "flow_compression": args.flow_compression,
                   "gflop_per_clip_224": GFLOP_PER_CLIP},
    }
    t0 = time.perf_counter()
    if args.reader_only:
        reader_only(args, report)
        report["total_s"] = round(time.perf_counter() - t0, 1)
        emit(report, args.out)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        inputs = write_inputs(Path(tmp), args.videos, args.frames, args.size, args.faces_compression,
                              args.flow_compression)
        report["inputs"]["write_s"] = round(time.perf_counter() - t0, 1)
        pool = reader_pool(args.read_workers) if args.read_workers else None
        try:
            report["reader"] = [reader_rate(inputs, 0, pin=cuda)]
            if args.read_workers:
                reader_rate(inputs * max(1, args.read_workers // len(inputs)), args.read_workers, pool)  # spawn
                report["reader"].append(reader_rate(inputs * 2, args.read_workers, pool, pin=cuda))
            log.info("reader: %s", json.dumps(report["reader"]))
            extractors = {}
            for path in args.paths.split(","):
                report[path], extractors[path] = bench_path(path, args, inputs, peak, pool)
                if args.out:  # partial results survive a time limit
                    args.out.write_text(json.dumps(report, indent=2) + "\n")
            if {"plain", "fast"} <= set(extractors):
                report["agreement_fast_vs_plain"] = agreement(extractors["plain"], extractors["fast"], inputs)
        finally:
            if pool is not None:
                pool.shutdown()
    report["total_s"] = round(time.perf_counter() - t0, 1)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
