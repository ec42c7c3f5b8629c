"""Benchmark: wall time of a full IAENet LOSO run on CAS(ME)^2-sized random features.

Default: 22 subjects, 95 videos, about 124k feature steps 2048 wide, 300 macro + 57
micro random intervals (CAS(ME)^2's lengths), 30 epochs, out-of-fold predictions from
the end of warm-up, plus the final all-subject model; the target is <= 3 minutes on one
H100/H200. ``--quick`` runs a small version (CPU-friendly). Prints one JSON object and
writes it to ``--out`` when given. Needs torch, numpy, pandas, h5py (not dvclive).

    python benchmarks/bench_train.py --precision bf16 --out benchmarks/train_bf16.json
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.jsonout import emit  # noqa: E402
from models.iaenet import build_model, count_parameters  # noqa: E402
from pipeline.core.device import resolve_device  # noqa: E402
from pipeline.learning.data import Prepared, prepare  # noqa: E402
from pipeline.learning.loop import train_model  # noqa: E402
from pipeline.learning.postprocess import predictions_from_outputs  # noqa: E402
from pipeline.learning.presets import load_model_preset, resolve_preset  # noqa: E402
from pipeline.learning.recipe import TrainRecipe, fold_seed  # noqa: E402
from pipeline.learning.step import StepTensors, TrainStep  # noqa: E402

log = logging.getLogger("bench_train")


def synthetic_dataset(subjects: int, videos: int, steps: int, width: int, macro: int, micro: int,
                      seed: int = 0) -> tuple[dict[str, np.ndarray], pd.DataFrame, dict[str, str]]:
    """Random features [N, width] per video (lengths summing to about ``steps``) and random intervals."""
    rng = np.random.default_rng(seed)
    lengths = rng.uniform(0.3, 1.7, videos)
    lengths = np.maximum((lengths / lengths.sum() * steps).astype(int), 40)
    names = [f"v{i:03d}" for i in range(videos)]
    subj = {v: f"s{i % subjects:02d}" for i, v in enumerate(names)}
    feats = {v: rng.standard_normal((n, width), dtype=np.float32) for v, n in zip(names, lengths)}
    rows = []
    for kind, count, lo, hi in (("macro", macro, 16, 117), ("micro", micro, 8, 16)):
        for _ in range(count):
            i = int(rng.integers(videos))
            frames = 2 * int(lengths[i])
            length = int(rng.integers(lo, hi + 1))
            if frames <= length + 2:
                continue
            on = int(rng.integers(0, frames - length - 1))
            rows.append((names[i], subj[names[i]], on, on + length // 2, on + length - 1, kind))
    ann = pd.DataFrame(rows, columns=["video", "subject", "onset", "apex", "offset", "type"])
    return feats, ann, subj


# operators that launch no kernel: views, metadata and host-side scalar reads
_NO_KERNEL = ("view", "unsqueeze", "squeeze", "transpose", "as_strided", "aten.t", "expand", "slice", "select",
              "detach", "alias", "permute", "empty", "_local_scalar_dense", "lift_fresh", "profiler.")


class _OpCounter(TorchDispatchMode):
    """Counts the operators the host dispatches (each is one or more kernel launches on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not any(s in str(func.overloadpacket) for s in _NO_KERNEL):
            self.count += 1
        return func(*args, **(kwargs or {}))


def step_time(prep: Prepared, preset: dict, cfg: TrainRecipe, graph: bool, reps: int = 20) -> tuple[float, int]:
    """(mean seconds, operators dispatched) of one training step (gather, forward, loss, backward,
    AdamW) of a fresh model on the first batch of training windows: eager, or replayed as a CUDA
    graph (``graph``: the host dispatches only the batch's copies into the graph's buffers)."""
    device = prep.bank.data.device
    model = build_model(preset, prep.bank.width).to(device)
    model.train()
    idx = torch.arange(min(cfg.batch_size, len(prep.train)), device=device)
    step = TrainStep(model, prep.bank, StepTensors(prep.train_rows, prep.train_cls, prep.train_reg, prep.train_mask),
                     cfg.loss_spec(), cfg.lr, cfg.weight_decay, cfg.batch_size, static=graph,
                     warm_idx=idx if graph else None)
    for _ in range(3):
        step.step(idx, cfg.lr)
    with _OpCounter() as counter:
        step.step(idx, cfg.lr)
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        step.step(idx, cfg.lr)
    _sync(device)
    return (time.perf_counter() - t) / reps, counter.count


def run_loso(prep: Prepared, preset: dict, cfg: TrainRecipe, folds: list[str], final: bool) -> dict:
    """Train ``folds`` (and the final model) as the train stage does; wall seconds and predictions."""
    device = prep.bank.data.device
    per_fold, n_preds = {}, 0
    t_all = time.perf_counter()
    for fold in folds + (["final"] if final else []):
        t = time.perf_counter()
        train_idx, test_idx = prep.fold_windows(fold)
        _, preds, hist = train_model(prep, train_idx, preset, cfg, fold_seed(0, fold), test_idx, desc=fold)
        _sync(device)
        per_fold[fold] = round(time.perf_counter() - t, 3)
        n_preds += len(preds)
        log.info("%s%s: %.1f s, loss %.3f -> %.3f", fold, " (CUDA graphs)" if cfg.cuda_graphs else "",
                 per_fold[fold], hist[0]["loss"], hist[-1]["loss"])
    return {"loso_s": round(time.perf_counter() - t_all, 3), "predictions": n_preds,
            "loso_s_per_fold_mean": round(float(np.mean([per_fold[f] for f in folds])), 3), "per_fold_s": per_fold}


def postprocess_time(prep: Prepared, preset: dict, fold: str, reps: int = 30) -> float:
    """Mean seconds to turn one predicted epoch of a held-out subject into predictions (decode, NMS,
    the table): random outputs for that subject's test windows, on the host as the stage does."""
    wins = prep.test.subset(prep.fold_windows(fold)[1])
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(len(wins), len(prep.grid), 2, generator=g) - 2
    dists = torch.rand(len(wins), len(prep.grid), 2, generator=g) * 4
    t = time.perf_counter()
    for _ in range(reps):
        predictions_from_outputs(logits, dists, wins, prep.spec, prep.grid, preset["inference"])
    return (time.perf_counter() - t) / reps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return (and print) the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="iaenet_casme2")
    ap.add_argument("--subjects", type=int, default=22)
    ap.add_argument("--videos", type=int, default=95)
    ap.add_argument("--steps", type=int, default=124_000, help="total feature steps")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--macro", type=int, default=300)
    ap.add_argument("--micro", type=int, default=57)
    ap.add_argument("--epochs", type=int, default=None, help="default: the preset's (30)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the preset's (128)")
    ap.add_argument("--warmup-epochs", type=int, default=None, help="default: the preset's (5)")
    ap.add_argument("--schedule", default=None, choices=["epoch", "step"])
    ap.add_argument("--folds", type=int, default=None, help="run only the first N folds (default all)")
    ap.add_argument("--no-final", action="store_true", help="skip the final all-subject model")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cuda-graphs", default="off", choices=["off", "on", "both"],
                    help="train.cuda_graphs: eager steps, steps replayed as CUDA graphs, or both in turn (CUDA)")
    ap.add_argument("--quick", action="store_true", help="4 subjects, 12 videos, 12k steps, 3 epochs, 2 folds")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.subjects, args.videos, args.steps, args.macro, args.micro = 4, 12, 12_000, 36, 8
        args.epochs = args.epochs or 3
        args.folds = args.folds or 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    device = resolve_device(args.device)
    params = {"epochs": args.epochs, "precision": args.precision, "batch_size": args.batch_size,
              "warmup_epochs": args.warmup_epochs, "schedule": args.schedule}
    if args.warmup_epochs is None and args.epochs is not None and args.epochs <= 5:
        params["warmup_epochs"] = max(0, args.epochs - 2)
    preset = resolve_preset(load_model_preset(args.preset), params)
    cfg = TrainRecipe.from_preset(preset, params)

    t0 = time.perf_counter()
    feats, ann, subj = synthetic_dataset(args.subjects, args.videos, args.steps, args.width, args.macro, args.micro)
    t_data = time.perf_counter() - t0
    t0 = time.perf_counter()
    prep = prepare(feats, ann, subj, preset, device)
    del feats
    _sync(device)
    t_prep = time.perf_counter() - t0

    folds = sorted(set(subj.values()))[: args.folds or None]
    graph_modes = {"off": [False], "on": [True], "both": [False, True]}[args.cuda_graphs]
    if device.type != "cuda" and any(graph_modes):
        log.warning("--cuda-graphs %s: no CUDA device, eager steps only", args.cuda_graphs)
        graph_modes = [False]
    modes = {}
    for graph in graph_modes:
        mode_cfg = replace(cfg, cuda_graphs=graph)
        seconds, ops = step_time(prep, preset, mode_cfg, graph)
        modes["cuda_graphs" if graph else "eager"] = {**run_loso(prep, preset, mode_cfg, folds, not args.no_final),
                                                      "train_step_ms": round(seconds * 1000, 2),
                                                      "train_step_host_ops": ops}
    first = next(iter(modes.values()))
    result = {
        "benchmark": "train_loso",
        "machine": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
        "device": str(device),
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "preset": args.preset, "parameters": count_parameters(build_model(preset, args.width)),
        "precision": args.precision, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
        "subjects": args.subjects, "videos": args.videos, "feature_steps": int(prep.bank.pad_row),
        "width": args.width, "intervals": len(ann), "train_windows": len(prep.train), "test_windows": len(prep.test),
        "folds_run": len(folds), "final_model": not args.no_final,
        "data_s": round(t_data, 3), "prepare_s": round(t_prep, 3),
        "postprocess_ms_per_epoch": round(postprocess_time(prep, preset, folds[0]) * 1000, 2),
        "postprocess_windows": int((prep.test_subject == folds[0]).sum()),
        **first,            # the first mode's figures at the top level, as before modes existed
        "modes": modes,
        "target_s": 180, "quick": bool(args.quick),
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
