"""Where the I3D fast path spends its GPU time: model-only clips/s per rewrite and the top kernels.

Builds the fast inference model of ``features`` (random-init Inception I3D, bf16
autocast, channels_last_3d) in steps -- BatchNorm folded and 1x1 branches merged only;
plus separable max pooling; plus the space-to-depth stem (``features.space_to_depth``) --
and measures clips/s on a resident batch for each (RGB and flow), then profiles a few
batches of the default rewrite and of the one with the space-to-depth stem with
``torch.profiler`` and lists the operators that take the most CUDA time. JSON to stdout and ``--out``. GPU only; no figure here is asserted
by a test.

    python benchmarks/profile_i3d.py --out "$OUT/profile_i3d.json"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.jsonout import emit  # noqa: E402
from models.i3d import MaxPool3dSamePadding, build_i3d, init_random  # noqa: E402


def fast_model(channels: int, separable: bool = True, space_to_depth: bool = False) -> torch.nn.Module:
    """The features stage's fast path model for one stream, on the GPU (pooling and stem selectable)."""
    model = init_random(build_i3d(channels), seed=0).cuda().eval()
    model = model.fused_for_inference(space_to_depth=space_to_depth)
    for m in model.modules():
        if isinstance(m, MaxPool3dSamePadding):
            m.separable = separable
    return model.to(memory_format=torch.channels_last_3d)


def rate(model: torch.nn.Module, x: torch.Tensor, reps: int) -> float:
    """Clips/s of ``model.features`` on the resident batch ``x``."""
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        model.features(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            model.features(x)
        torch.cuda.synchronize()
    return x.shape[0] * reps / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    """Measure, profile, print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--batches", default="128,256,512")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "cudnn": torch.backends.cudnn.version(), "model_only_clips_per_s": {}}
    variants = {"fold+merge": dict(separable=False), "+separable_pool": dict(separable=True),
                "+space_to_depth_stem": dict(separable=True, space_to_depth=True)}
    for name, kw in variants.items():
        for channels, stream in ((3, "rgb"), (2, "flow")):
            m = fast_model(channels, **kw)
            x = torch.randn(256, channels, 8, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last_3d)
            report["model_only_clips_per_s"][f"{name} {stream} b256"] = round(rate(m, x, 8), 1)
            print(name, stream, report["model_only_clips_per_s"][f"{name} {stream} b256"], flush=True)
            del m, x
    model = fast_model(3)
    for b in (int(v) for v in args.batches.split(",")):
        x = torch.randn(b, 3, 8, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last_3d)
        report["model_only_clips_per_s"][f"full rgb b{b}"] = round(rate(model, x, max(2, 2048 // b)), 1)
        del x
    x = torch.randn(256, 3, 8, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last_3d)
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    for key, m in (("top_ops", model), ("top_ops_space_to_depth", fast_model(3, space_to_depth=True))):
        with torch.profiler.profile(activities=acts) as prof:
            rate(m, x, 3)
        rows = []
        for ev in prof.key_averages():
            cuda_us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            if cuda_us:
                rows.append({"name": ev.key[:120], "cuda_ms": round(cuda_us / 1e3, 2), "calls": ev.count})
        rows.sort(key=lambda r: -r["cuda_ms"])
        report[key] = rows[:args.top]
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
