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
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.jsonout import emit  # noqa: E402
from models.iaenet import build_model, count_parameters, load_model_preset, resolve_preset  # noqa: E402
from models.losses import iaenet_loss  # noqa: E402
from pipeline.device import resolve_device  # noqa: E402
from pipeline.train import TrainConfig, fold_seed, prepare, train_model  # noqa: E402

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


def step_time(preset: dict, width: int, batch: int, precision: str, device: torch.device, reps: int = 10) -> float:
    """Mean seconds of one training step (forward, loss, backward, AdamW) on random data."""
    from pipeline.postprocess import autocast

    model = build_model(preset, width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    x = torch.randn(batch, model.window_steps, width, device=device)
    labels = torch.randint(0, 3, (batch, model.num_points), device=device)
    tgt = torch.rand(batch, model.num_points, 2, device=device) * 3

    def one() -> None:
        with autocast(device, precision):
            lg, ds = model(x)
        loss = iaenet_loss(lg.float(), ds.float(), labels, tgt)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        one()
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        one()
    _sync(device)
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
    cfg = TrainConfig.from_preset(preset, params)

    t0 = time.perf_counter()
    feats, ann, subj = synthetic_dataset(args.subjects, args.videos, args.steps, args.width, args.macro, args.micro)
    t_data = time.perf_counter() - t0
    t0 = time.perf_counter()
    prep = prepare(feats, ann, subj, preset, device)
    del feats
    _sync(device)
    t_prep = time.perf_counter() - t0

    folds = sorted(set(subj.values()))[: args.folds or None]
    per_fold, n_preds = {}, 0
    t_all = time.perf_counter()
    for fold in folds + ([] if args.no_final else ["final"]):
        t = time.perf_counter()
        train_idx = np.flatnonzero(prep.train_subject != fold)
        test_idx = None if fold == "final" else np.flatnonzero(prep.test_subject == fold)
        _, preds, hist = train_model(prep, train_idx, preset, cfg, fold_seed(0, fold), test_idx, desc=fold)
        _sync(device)
        per_fold[fold] = round(time.perf_counter() - t, 3)
        n_preds += len(preds)
        log.info("%s: %.1f s, loss %.3f -> %.3f", fold, per_fold[fold], hist[0]["loss"], hist[-1]["loss"])
    total = time.perf_counter() - t_all
    st = step_time(preset, args.width, cfg.batch_size, args.precision, device)
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
        "folds_run": len(folds), "final_model": not args.no_final, "predictions": n_preds,
        "data_s": round(t_data, 3), "prepare_s": round(t_prep, 3), "loso_s": round(total, 3),
        "loso_s_per_fold_mean": round(float(np.mean([per_fold[f] for f in folds])), 3),
        "per_fold_s": per_fold, "train_step_ms": round(st * 1000, 2),
        "target_s": 180, "quick": bool(args.quick),
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
