"""The train stage's cost model, for the benchmarks: how much work each model of a run is.

A model's training time follows its *window passes* (:func:`window_passes`), not the frames:
training windows are the windows that hold an annotated interval, so their number grows with
the intervals. ``benchmarks/e2e*.py`` extrapolates the train stage by them, and reads the
seconds each model took from the stage's timing records (:func:`model_seconds`,
:func:`pipeline.io.jsonl.read_jsonl`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from pipeline.learning.recipe import TrainRecipe
from pipeline.io.jsonl import read_jsonl
from pipeline.learning.windows import WindowSpec, make_test_windows, make_train_windows


def window_passes(n_train: int, n_test: int, cfg: TrainRecipe) -> int:
    """The windows one model goes through: every training window in every epoch (forward and
    backward) plus every held-out window in every predicted epoch (forward and post-processing).

    The two kinds count alike: on an H200 (``bench_train.py``, CAS(ME)^2 size) a training
    window cost 0.19 ms per epoch and a held-out window about 0.17 ms per predicted epoch.
    """
    predicted = max(0, cfg.epochs - cfg.first_predicted_epoch + 1)
    return int(n_train) * cfg.epochs + int(n_test) * predicted


def loso_window_passes(lengths: Mapping[str, int], annotations: pd.DataFrame, subjects: Mapping[str, str],
                       preset: Mapping[str, Any], cfg: TrainRecipe, final: bool = True) -> dict[str, int]:
    """{model: :func:`window_passes`} of a LOSO run (every fold, then ``final`` if asked) over
    videos of ``lengths`` feature steps, with the windows the train stage builds."""
    spec = WindowSpec.from_preset(preset)
    train = make_train_windows(lengths, annotations, spec)
    test = make_test_windows(lengths, spec)
    train_subject = np.array([subjects[v] for v in train.video], dtype=object)
    test_subject = np.array([subjects[v] for v in test.video], dtype=object)
    out = {f"fold_{s}": window_passes(int((train_subject != s).sum()), int((test_subject == s).sum()), cfg)
           for s in sorted(set(subjects.values()))}
    if final:
        out["final"] = window_passes(len(train), 0, cfg)
    return out


def model_seconds(records: Iterable[Mapping[str, Any]] | str | Path) -> dict[str, float]:
    """{model (``fold_<subject>`` or ``final``): seconds it spent training} from the train stage's
    timing records (a list of them, or the path of a ``timings.jsonl``), in the order they ended."""
    if isinstance(records, (str, Path)):
        records = read_jsonl(records)
    return {str(r["model"]): float(r["seconds"]) for r in records}
