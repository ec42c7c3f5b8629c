"""A tiny synthetic dataset preset and its per_dataset params, for tests that run the whole pipeline
(dvc repro, cluster runs)."""

from __future__ import annotations

from typing import Any


def tiny_preset(name: str) -> dict[str, Any]:
    """A CAS(ME)^2-layout synthetic preset (its params: :func:`tiny_per_dataset`)."""
    return {
        "layout": "casme2", "root": f"data/raw/{name}", "frames_dir": "rawpic",
        "annotation_file": "CAS(ME)^2code_final.xlsx", "source_fps": 30, "target_fps": 30, "color": True,
        "model_preset": "iaenet_casme2", "synthetic": True,
    }


def tiny_per_dataset() -> dict[str, Any]:
    """The params.yaml ``per_dataset`` entry of :func:`tiny_preset`, small enough for every stage to run in
    seconds on a CPU: 2 subjects x 1 video of 7 s, 48-px crops, short TV-L1, 2 training epochs."""
    return {
        "synth": {"size": [160, 120], "n_subjects": 2, "videos_per_subject": 1, "duration_s": 7.0,
                  "count_model": "rounded",
                  "expressions": {"macro": {"rate_per_min": 20.0}, "micro": {"rate_per_min": 10.0}}},
        "crop": {"size": 48, "threads": 1},
        "flow": {"nscales": 2, "warps": 1, "outer_iterations": 1, "inner_iterations": 5, "median_filtering": 1},
        "features": {"allow_random_init": True, "input_size": 32, "fuse": True, "batch_size": 16},
        "train": {"epochs": 2, "warmup_epochs": 1, "batch_size": 4, "schedule": "step"},
    }
