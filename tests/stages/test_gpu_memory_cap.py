"""Every stage fits a 24-GB card with the default params: the test process is capped at 20 GiB of GPU memory
(``torch.cuda.set_per_process_memory_fraction``) and runs synth, then crop to evaluate in-process (so the cap
holds for every stage) on a small synthetic CAS(ME)^2-layout dataset at the default sizes (224-px crops, the
full TV-L1 and I3D recipe): no stage may fail, run out of memory, or need the flow's halve-and-retry.

Needs CUDA (skipped without it), the dlib landmark model (face-recognition-models) and dvclive (train).
Prints one ``M2ES_GPU_MEMORY {json}`` line with each stage's allocator peaks (``benchmarks/gpu_next.sh``).
"""

from __future__ import annotations

import importlib
import json
import logging

import pytest
import torch

from pipeline.core.sandbox import make_project

from helpers.project import tiny_preset

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

GIB = 1 << 30
CAP = 20 * GIB
DS = "synth_memcap"
STAGES = ("synth", "ingest", "resample", "crop", "flow", "features", "train", "baseline", "evaluate")
#: default params but the size of the data and training: 2 videos x 80 s at 30 fps = 4,798 flow pairs at 224 px,
#: more than one auto-sized batch within the budget (~4,550), so the flow stage sizes, fills and reuses it
PER_DATASET = {
    "synth": {"n_subjects": 2, "videos_per_subject": 1, "duration_s": 80.0, "count_model": "rounded",
              "expressions": {"macro": {"rate_per_min": 20.0}, "micro": {"rate_per_min": 10.0}}},
    "features": {"allow_random_init": True},
    "train": {"epochs": 2, "warmup_epochs": 1},
}


@pytest.fixture
def capped():
    """The process capped at 20 GiB on device 0 for the test, uncapped after."""
    total = torch.cuda.mem_get_info(0)[1]
    torch.cuda.set_per_process_memory_fraction(min(1.0, CAP / total), 0)
    try:
        yield total
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()


class _Records(logging.Handler):
    """Keeps the records of the ``pipeline`` loggers (each stage's main resets the root logger's handlers)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_crop_to_evaluate_within_20_gib(tmp_path, monkeypatch, capped):
    pytest.importorskip("face_recognition_models")
    pytest.importorskip("dvclive")
    root = make_project(tmp_path / "project", DS, tiny_preset(DS), {"parallel": {"n_jobs": 4}}, PER_DATASET)
    monkeypatch.chdir(root)
    records = _Records()
    logging.getLogger("pipeline").addHandler(records)
    peaks = {}
    try:
        for stage in STAGES:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(0)
            rc = importlib.import_module(f"pipeline.{stage}").main(["--dataset", DS])
            assert rc == 0, f"{stage}@{DS} failed:\n" + "\n".join(records.messages[-20:])
            peaks[stage] = {"reserved_gib": round(torch.cuda.max_memory_reserved(0) / GIB, 2),
                            "allocated_gib": round(torch.cuda.max_memory_allocated(0) / GIB, 2)}
    finally:
        logging.getLogger("pipeline").removeHandler(records)
    print("M2ES_GPU_MEMORY " + json.dumps({"cap_gib": CAP / GIB, "card_gib": round(capped / GIB, 1),
                                           "stages": peaks}))
    retried = [m for m in records.messages if "out of GPU memory" in m or "out of device memory" in m]
    assert not retried, retried
    assert all(p["reserved_gib"] <= CAP / GIB for p in peaks.values()), peaks
    assert peaks["flow"]["allocated_gib"] > 5, peaks    # the flow batch was sized to the budget, not left small
    assert (root / "metrics" / f"{DS}.json").is_file()
