"""Timing records of the train stage: one JSON object per trained model, in
``data/<ds>/train_timings.jsonl`` (:attr:`pipeline.core.paths.DataPaths.train_timings`: outside the
``runs`` output, whose DVC hash must not change with the time a run took).

Each record is ``{"model": "fold_<subject>" | "final", "windows": training windows,
"seconds": training time, "device": str, "final_loss": last epoch's mean loss, "pid": the
process that trained it}``. A model's record is appended as it ends, by whichever process
trained it (:func:`pipeline.io.jsonl.append_jsonl`: one ``os.write`` of one line under ``O_APPEND``,
so records of fold processes running at once never interleave). The stage starts the file afresh at the
start of every run (:func:`start_timings`): it holds the records of the models the latest
run trained, in the order they ended (models skipped as complete have none).
``benchmarks/`` reads them back with :func:`pipeline.io.jsonl.read_jsonl`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: the suffix benchmarks give the records they keep of each run (``<log name>_timings.jsonl``)
TIMINGS_FILE = "timings.jsonl"
#: the keys of every record
TIMING_KEYS = ("model", "windows", "seconds", "device", "final_loss", "pid")


def start_timings(path: Path) -> None:
    """Begin ``path`` afresh (empty), creating its folder: the start of a train run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def timing_record(model: str, windows: int, seconds: float, device: str, final_loss: float) -> dict[str, Any]:
    """One model's record, with this process's id."""
    return {"model": str(model), "windows": int(windows), "seconds": float(seconds), "device": str(device),
            "final_loss": float(final_loss), "pid": os.getpid()}

