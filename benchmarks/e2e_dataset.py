"""The sample the end-to-end benchmark runs on: a synthetic dataset preset of a chosen layout, scale and
recipe, and the params.yaml overrides of the project copy (``benchmarks/e2e.py``)."""

from __future__ import annotations

import argparse
import copy
from typing import Any

import yaml

LAYOUTS: dict[str, dict[str, Any]] = {   # the synthetic presets' layouts (configs/datasets/synth_*.yaml)
    "casme2": {"layout": "casme2", "frames_dir": "rawpic", "annotation_file": "CAS(ME)^2code_final.xlsx",
               "source_fps": 30, "target_fps": 30, "color": True, "model_preset": "iaenet_casme2",
               "size": [640, 480]},
    "samm": {"layout": "samm", "frames_dir": "SAMM_longvideos", "annotation_file": "SAMM_LongVideos_V3_Release.xlsx",
             "source_fps": 200, "target_fps": 30, "color": False, "model_preset": "iaenet_samm",
             "size": [2040, 1088]},
}

RECIPES: dict[str, dict[str, Any]] = {
    # the published recipe (params.yaml defaults); I3D weights random (their values do not change speed)
    "full": {"features": {"allow_random_init": True}},
    # the synthetic presets' CPU recipe (configs/datasets/synth_casme2.yaml)
    "reduced": {"crop": {"size": 112},
                "flow": {"nscales": 3, "warps": 2, "outer_iterations": 1, "inner_iterations": 20},
                "features": {"allow_random_init": True, "input_size": 64, "fuse": True, "batch_size": 32},
                "train": {"epochs": 8, "warmup_epochs": 2, "batch_size": 8, "schedule": "step"}},
    # the pipeline tests' tiny recipe (tests/helpers/project.py): proves the benchmark works, says nothing of real speed
    "tiny": {"crop": {"size": 48, "threads": 1},
             "flow": {"nscales": 2, "warps": 1, "outer_iterations": 1, "inner_iterations": 5, "median_filtering": 1},
             "features": {"allow_random_init": True, "input_size": 32, "fuse": True, "batch_size": 16},
             "train": {"epochs": 2, "warmup_epochs": 1, "batch_size": 4, "schedule": "step"}},
}


def project_params(param_sets: list[str], n_jobs: int) -> dict[str, Any]:
    """params.yaml overrides from ``--param SECTION.KEY=VALUE`` options and the job count."""
    params: dict[str, Any] = {"parallel": {"n_jobs": n_jobs}}
    for item in param_sets:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not name or not _:
            raise SystemExit(f"--param {item!r}: expected SECTION.KEY=VALUE, e.g. train.fold_workers=2")
        params.setdefault(section, {})[name] = yaml.safe_load(value)
    return params


def build_preset(args: argparse.Namespace, dataset: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The synthetic dataset preset of the requested layout, and its params.yaml ``per_dataset`` entry
    (the requested scale and recipe)."""
    lay = copy.deepcopy(LAYOUTS[args.layout])
    size = args.size or lay.pop("size")
    lay.pop("size", None)
    overrides = copy.deepcopy(RECIPES[args.recipe])
    overrides["synth"] = {"size": list(size), "n_subjects": args.subjects,
                          "videos_per_subject": args.videos_per_subject, "duration_s": args.duration_s,
                          "count_model": "rounded",
                          # enough intervals in short videos for every fold to have training windows
                          "expressions": {"macro": {"rate_per_min": 20.0}, "micro": {"rate_per_min": 10.0}}}
    return {**lay, "root": f"data/raw/{dataset}", "synthetic": True}, overrides
