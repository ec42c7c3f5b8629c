"""Throughput and accuracy of Dual TV-L1: OpenCV (1 process, all cores) vs the PyTorch batch solver.

Prints one JSON document (and writes it to ``--out FILE``) with the machine, the card
and, for default OpenCV parameters:

* pairs/s at 224x224: opencv 1 process, opencv all cores (one process per core, one
  thread each), torch on CPU (small sample), on the GPU the batch-schedule torch
  kernels (eager; ``--kernels torch`` for compiled + CUDA graphs) and the Triton kernel
  of one program per pair (``--kernels triton``, the default; ``--sweep`` tries several
  block / warp shapes first), and the GPU / opencv-all-cores ratio from the same run;
* pairs/s of the GPU path at 112 and 400 px; peak GPU memory per pair;
* accuracy on face pairs warped by known smooth sub-pixel fields
  (:mod:`pipeline.synthetic.flow_truth`): EPE vs truth of both implementations and the
  distribution of the per-pair torch-vs-opencv mean EPE;
* how much batch work the early stop's freezing wasted (``efficiency``).

The downstream check (same spotting result from either implementation, within the noise
of the training seed) is ``benchmarks/flow_downstream.py``: it runs flow, features, train
and evaluate with each implementation on a synthetic preset.

Usage (from the repository root)::

    python -m benchmarks.bench_flow --quick --out benchmarks/flow_quick.json

``--quick`` finishes in a few minutes on a 16-core GPU machine, compilation included.
No figure here is asserted by any test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import platform
import sys
import time
from typing import Any

import cv2
import numpy as np
import torch

from pipeline.synthetic.flow_truth import endpoint_error, warped_pair
from pipeline.tvl1.opencv import create_opencv_tvl1, opencv_remap_subpixel
from pipeline.tvl1.params import TVL1Params
from pipeline.tvl1.solver import SolveStats, TorchTVL1

log = logging.getLogger("bench_flow")


def make_pairs(size: int, n: int, unique: int, seed0: int = 0, source: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` face pairs (``unique`` distinct ones, tiled) with amplitudes 0.3-2.5 px, and their truth."""
    base = []
    for k in range(min(n, unique)):
        amp = 0.3 + 2.2 * ((k * 0.618) % 1.0)
        base.append(warped_pair(size, amp, seed0 + k, source))
    idx = [k % len(base) for k in range(n)]
    return (np.stack([base[k][0] for k in idx]), np.stack([base[k][1] for k in idx]),
            np.stack([base[k][2] for k in idx]))


def _ocv_worker(args: tuple[np.ndarray, np.ndarray, dict[str, Any]]) -> np.ndarray:
    cv2.setNumThreads(1)
    i0, i1, kw = args
    algo = create_opencv_tvl1(TVL1Params(**kw))
    return np.stack([algo.calc(a, b, None) for a, b in zip(i0, i1)])


def bench_opencv(i0: np.ndarray, i1: np.ndarray, params: TVL1Params, procs: int) -> tuple[float, np.ndarray]:
    """(pairs/s, flows) with ``procs`` single-threaded processes (1: in this process)."""
    kw = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    if procs == 1:
        t = time.perf_counter()
        flows = _ocv_worker((i0, i1, kw))
        return len(i0) / (time.perf_counter() - t), flows
    chunks = [(i0[k::procs], i1[k::procs], kw) for k in range(procs)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(procs) as pool:
        pool.map(_ocv_worker, [(c[0][:1], c[1][:1], kw) for c in chunks])       # start-up outside the timing
        t = time.perf_counter()
        parts = pool.map(_ocv_worker, chunks)
        rate = len(i0) / (time.perf_counter() - t)
    flows = np.empty((len(i0), *i0.shape[1:], 2), np.float32)
    for k, part in enumerate(parts):
        flows[k::procs] = part
    return rate, flows


def bench_torch(i0: np.ndarray, i1: np.ndarray, params: TVL1Params, device: str, batch: int, *,
                compile: bool, graphs: bool, subpixel: int, warm: bool = True, kernels: str = "torch",
                block: int = 256, warps: int = 8) -> dict[str, Any]:
    """pairs/s of :class:`TorchTVL1` (after one warm-up batch when ``warm``), peak memory, flows."""
    solver = TorchTVL1(params, device, compile=compile, cuda_graphs=graphs, max_batch=batch,
                       remap_subpixel=subpixel, kernels=kernels, triton_block=block, triton_warps=warps)
    res: dict[str, Any] = {"device": device, "kernels": kernels, "compile": solver.compiled,
                           "cuda_graphs": solver.cuda_graphs, "batch": batch, "pairs": len(i0)}
    if kernels == "triton":
        res["triton_block"], res["triton_warps"] = block, warps
    cuda = device.startswith("cuda")
    if warm:
        t = time.perf_counter()
        solver.flow_batched(i0[:batch], i1[:batch])
        if cuda:
            torch.cuda.synchronize()
        res["warmup_s"] = round(time.perf_counter() - t, 2)
    solver.stats = SolveStats()                           # count the timed run only
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    flows = solver.flow_batched(i0, i1).float().cpu().numpy()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    res["pairs_per_s"] = round(len(i0) / dt, 2)
    res["seconds"] = round(dt, 3)
    res["efficiency"] = round(solver.stats.efficiency, 3)
    its_sum = float(np.sum(solver.stats.per_pair_iterations))
    # memory traffic of the iterations alone at the 88 B/px of the two-phase kernel (flow_notes.md)
    res["iteration_gb_per_s_at_88B"] = round(its_sum * i0.shape[1] * i0.shape[2] * 88 / dt / 1e9, 1)
    its = np.asarray(solver.stats.per_pair_iterations)
    res["iterations_per_pair"] = {"mean": round(float(its.mean()), 1), "p50": round(float(np.median(its)), 1),
                                  "max": round(float(its.max()), 1)}
    if cuda:
        res["peak_mem_per_pair_mb"] = round(torch.cuda.max_memory_allocated() / min(batch, len(i0)) / 2**20, 2)
    res["_flows"] = flows
    return res


def accuracy(flows: np.ndarray, truth: np.ndarray) -> float:
    return round(float(np.mean([endpoint_error(f, g, 4) for f, g in zip(flows, truth)])), 4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small samples (a few minutes on a GPU machine)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--batch", type=int, default=1024, help="GPU batch at 224 px")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="processes for opencv all cores")
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU measurements")
    ap.add_argument("--image", help="RGB face image to warp (default: scikit-image's astronaut; the face "
                    "must fill its 105:345 x 10:250 box, see pipeline/synthetic/flow_truth.py)")
    ap.add_argument("--cpu-threads", type=int, default=1, help="torch threads for the torch-CPU figure")
    ap.add_argument("--no-compile", action="store_true",
                    help="torch kernels: eager only (torch.compile of every pyramid size takes minutes)")
    ap.add_argument("--kernels", choices=("triton", "torch"), default="triton",
                    help="GPU kernels of the main figures (triton: one program per pair; torch: batch schedule)")
    ap.add_argument("--block", type=int, default=256, help="triton: pixels per program step")
    ap.add_argument("--warps", type=int, default=8, help="triton: warps per program")
    ap.add_argument("--sweep", action="store_true", help="triton: try several (block, warps) and use the best")
    ap.add_argument("--skip-eager", action="store_true", help="skip the torch-eager batch-128 GPU figure")
    args = ap.parse_args(argv)
    fast = not args.no_compile and args.kernels == "torch"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    q = args.quick
    params = TVL1Params()                                  # OpenCV's defaults
    subpixel = opencv_remap_subpixel()
    cuda = torch.cuda.is_available() and not args.no_gpu
    out: dict[str, Any] = Results(args.out, {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "opencv": cv2.__version__,
                    "gpu": torch.cuda.get_device_name(0) if cuda else None},
        "params": params.as_dict(), "opencv_remap_subpixel": subpixel, "quick": q, "compiled": fast,
    })
    source = None
    if args.image:
        bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
        if bgr is None or min(bgr.shape[:2]) < 350:
            ap.error(f"--image {args.image}: not readable or smaller than 350 px")
        source = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    log.info("making pairs")
    n_ocv1 = 4 if q else 16
    n_ocvn = args.procs * (4 if q else 8)
    i0, i1, gt = make_pairs(224, max(n_ocvn, n_ocv1), unique=max(n_ocvn, n_ocv1), source=source)
    log.info("opencv, 1 process")
    r1, f1 = bench_opencv(i0[:n_ocv1], i1[:n_ocv1], params, 1)
    log.info("opencv, %d processes", args.procs)
    rn, fn = bench_opencv(i0[:n_ocvn], i1[:n_ocvn], params, args.procs)
    out["opencv_1proc_224"] = {"pairs_per_s": round(r1, 3), "pairs": n_ocv1}
    out["opencv_all_cores_224"] = {"pairs_per_s": round(rn, 2), "pairs": n_ocvn, "procs": args.procs}
    out["epe_vs_truth_224"] = {"opencv": accuracy(fn, gt[:n_ocvn])}

    log.info("torch, CPU (%d thread(s))", args.cpu_threads)
    torch.set_num_threads(args.cpu_threads)
    n_cpu = 2 if q else 4
    rc = bench_torch(i0[:n_cpu], i1[:n_cpu], params, "cpu", n_cpu, compile=False, graphs=False,
                     subpixel=subpixel, warm=False)
    flows_cpu = rc.pop("_flows")
    rc["threads"] = args.cpu_threads
    out["torch_cpu_224"] = rc
    agree = [endpoint_error(a, b) for a, b in zip(flows_cpu, fn[:n_cpu])]
    out["torch_cpu_vs_opencv_epe"] = [round(float(a), 5) for a in agree]

    if cuda:
        dev = "cuda"
        kern = dict(kernels=args.kernels, block=args.block, warps=args.warps)
        if not args.skip_eager:
            n_eager = 128 if q else 512
            log.info("torch, GPU eager")
            re_ = bench_torch(i0[:min(n_eager, len(i0))], i1[:min(n_eager, len(i0))], params, dev,
                              min(n_eager, len(i0)), compile=False, graphs=False, subpixel=subpixel)
            re_.pop("_flows")
            out["torch_gpu_eager_224"] = re_
        n_gpu = 4096 if q else 8192
        g0, g1, ggt = make_pairs(224, n_gpu, unique=128 if q else 512, seed0=1000, source=source)
        if args.sweep and args.kernels == "triton":
            sweep = {}
            for block, warps in ((128, 4), (256, 4), (256, 8), (512, 8), (1024, 8), (512, 4)):
                r = bench_torch(g0[:1024], g1[:1024], params, dev, 1024, compile=False, graphs=False,
                                subpixel=subpixel, kernels="triton", block=block, warps=warps)
                r.pop("_flows")
                sweep[f"{block}x{warps}"] = r["pairs_per_s"]
                out["triton_sweep_224_batch1024"] = sweep
            best = max(sweep, key=sweep.get)
            kern["block"], kern["warps"] = (int(v) for v in best.split("x"))
        log.info("torch, GPU %s kernels (%d pairs)", args.kernels, n_gpu)
        rg = bench_torch(g0, g1, params, dev, args.batch, compile=fast, graphs=fast, subpixel=subpixel, **kern)
        rg_flows = rg.pop("_flows")
        out["torch_gpu_224"] = rg
        out["gpu_over_opencv_all_cores"] = round(rg["pairs_per_s"] / rn, 2)
        out["epe_vs_truth_224"]["torch_gpu"] = accuracy(rg_flows[:256], ggt[:256])
        # agreement: the GPU solver on exactly the pairs OpenCV solved
        ra = bench_torch(i0[:n_ocvn], i1[:n_ocvn], params, dev, args.batch, compile=fast, graphs=fast,
                         subpixel=subpixel, warm=False, **kern)
        fa = ra.pop("_flows")
        out["epe_vs_truth_224"]["torch_gpu_same_pairs"] = accuracy(fa, gt[:n_ocvn])
        d = np.array([endpoint_error(a, b) for a, b in zip(fa, fn)])
        out["agreement_torch_vs_opencv_224"] = {
            "pairs": len(d), "mean": round(float(d.mean()), 5),
            "percentiles": {str(p): round(float(np.percentile(d, p)), 5) for p in (0, 10, 50, 90, 99, 100)}}
        if not q:
            log.info("torch, GPU compiled without CUDA graphs")
            rng_ = bench_torch(g0[:4096], g1[:4096], params, dev, args.batch, compile=fast, graphs=False,
                               subpixel=subpixel, **kern)
            rng_.pop("_flows")
            out["torch_gpu_nographs_224"] = rng_
        for size, batch, n in ((112, 4 * args.batch, 4096 if q else 16384), (400, max(1, args.batch // 4),
                                                                            512 if q else 2048)):
            log.info("torch, GPU at %d px", size)
            s0, s1, _ = make_pairs(size, n, unique=64, seed0=2000, source=source)
            rs = bench_torch(s0, s1, params, dev, batch, compile=fast, graphs=fast, subpixel=subpixel, **kern)
            rs.pop("_flows")
            out[f"torch_gpu_{size}"] = rs
    print(json.dumps(out, indent=2))
    return 0


class Results(dict):
    """The benchmark's JSON: each figure is logged and the file rewritten as soon as it is measured,
    so a run stopped at its time limit still leaves everything measured so far."""

    def __init__(self, path: str | None, initial: dict[str, Any]):
        super().__init__(initial)
        self.path = path
        self._save()

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        log.info("%s = %s", key, json.dumps(value))
        self._save()

    def _save(self) -> None:
        if self.path:
            with open(self.path, "w") as fh:
                fh.write(json.dumps(self, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
