"""Whole-run summary: every stage's last duration per dataset, and each dataset's F1s (stage `report`, `m2es summary`).

Each stage run appends its duration to ``data/<ds>/stage_timings.jsonl``
(:func:`pipeline.core.stage.record_stage_run`); this prints, for every dataset of
``params.yaml``, the last record of each stage with the time it finished (a stage DVC
skipped shows its earlier run), the sum of those durations, and each dataset's F1s from
``data/<ds>/evaluate/details.json`` (cross-fold macro, micro, overall under the default counting;
paper-optimistic overall; the baseline's cross-fold overall; the reproduction code).
``dvc repro`` prints it at the end through the last stage, ``report``
(``python -m pipeline.summary --write data/report.txt``), which depends on every dataset's
``metrics/<ds>.json`` and writes the F1 lines to ``data/report.txt``: it runs whenever an evaluation
changed a headline or that file is missing (a fresh clone, whose committed metrics and dvc.lock
already match), and a ``dvc repro`` that skipped everything prints DVC's "up to date" instead (a
stage made to run always, ``always_changed``, would keep ``dvc status`` from ever saying the pipeline
is up to date). The file holds no times, so a rerun writes the same bytes and leaves dvc.lock as it is.
``m2es summary [--params params.yaml] [--data-root data]`` prints the summary at any time.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.cli import STAGES
from pipeline.core.params import load_params
from pipeline.core.paths import DataPaths
from pipeline.errors import M2esError
from pipeline.io.atomic import write_text
from pipeline.io.jsonl import read_jsonl


def last_runs(path: Path) -> dict[str, dict[str, Any]]:
    """The last record of each stage in a ``stage_timings.jsonl`` ({} when the file is missing)."""
    if not path.is_file():
        return {}
    try:
        return {r["stage"]: r for r in read_jsonl(path)}
    except (ValueError, KeyError, TypeError) as exc:
        raise M2esError(f"{path}: not a stage timing record file ({exc}). Delete it; the next stage runs "
                        "write it anew.") from exc


def cell(record: Mapping[str, Any] | None) -> str:
    """One table cell: seconds and when it finished (UTC), FAILED/ERROR first unless ok; '-' for none."""
    if record is None:
        return "-"
    when = datetime.fromisoformat(record["finished"]).strftime("%m-%d %H:%M")
    mark = "" if record["status"] == "ok" else f"{record['status'].upper()} "
    return f"{mark}{record['seconds']:.1f} s ({when})"


def figures(details: Mapping[str, Any]) -> str:
    """One line of a dataset's F1s from its ``details.json`` (:mod:`pipeline.evaluate`): cross-fold macro,
    micro and overall under the default counting, the paper-optimistic overall (under the published counting
    when it ran, as the paper's Table 1), the baseline's cross-fold overall and the reproduction code.
    A figure whose protocol did not run is left out."""
    counting = details["default"]["counting"]
    parts = []
    cross = details[counting].get("cross-fold")
    if cross:
        parts.append(", ".join(f"{t} {cross[t]['f1']:.4f}" for t in ("macro", "micro", "overall")))
    paper = details.get("published" if "published" in details["countings"] else counting, {}).get("paper-optimistic")
    if paper:
        parts.append(f"paper-optimistic {paper['overall']['f1']:.4f}")
    base = (details.get("baseline") or {}).get("cross-fold")
    if base:
        parts.append(f"baseline {base['overall']['f1']:.4f}")
    code = (details.get("reproduction") or {}).get("code")
    return "; ".join(parts) + (f" (reproduction {code})" if code else "")


def dataset_paths(params: Mapping[str, Any], data_root: Path) -> dict[str, DataPaths]:
    """Every dataset of ``params`` (``synth_datasets``, then ``datasets``, once each) and its paths."""
    datasets = dict.fromkeys([*(params.get("synth_datasets") or []), *(params.get("datasets") or [])])
    return {ds: DataPaths(ds, data_root) for ds in datasets}


def timing_lines(paths: Mapping[str, DataPaths]) -> list[str]:
    """The table of each stage's last run per dataset (and the totals)."""
    runs = {ds: last_runs(p.stage_timings) for ds, p in paths.items()}
    rows = [["stage", *paths]]
    rows += [[stage, *(cell(runs[ds].get(stage)) for ds in paths)] for stage in STAGES
             if any(stage in runs[ds] for ds in paths)]
    rows.append(["total", *(f"{sum(r['seconds'] for r in runs[ds].values()):.1f} s" for ds in paths)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["Last run of each stage (seconds, finished MM-DD HH:MM UTC; from data/<ds>/stage_timings.jsonl):"]
    return lines + ["  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]


def f1_lines(paths: Mapping[str, DataPaths]) -> list[str]:
    """Each dataset's F1s (:func:`figures`): nothing machine- or time-dependent, so the ``report`` stage's
    output (these lines) is the same bytes on every rerun of the same results."""
    lines = ["F1 (data/<ds>/evaluate/details.json; macro, micro, overall: cross-fold; paper-optimistic: an "
             "upper bound; baseline: the non-learned spotter, cross-fold):"]
    for ds, p in paths.items():
        path = p.evaluate / "details.json"
        if path.is_file():
            try:
                lines.append(f"  {ds}: {figures(json.loads(path.read_text()))}")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise M2esError(f"{path}: no F1 figures ({exc!r}). Rerun `dvc repro -s -f evaluate@{ds}`.") from exc
        else:
            lines.append(f"  {ds}: no {path} yet (`dvc repro evaluate@{ds}`)")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Print the summary; exit 2 with a message on an unreadable params, records or metrics file."""
    ap = argparse.ArgumentParser(prog="m2es summary", description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--data-root", default="data", help="where stage outputs are (default: data)")
    ap.add_argument("--write", metavar="FILE", help="also write the F1 lines to FILE (the report stage's output)")
    args = ap.parse_args(argv)
    try:
        paths = dataset_paths(load_params(args.params), Path(args.data_root))
        f1 = f1_lines(paths)   # read once: printed, and the report stage's file
        print("\n".join(timing_lines(paths) + f1) if paths else "m2es summary: params.yaml lists no datasets.")
        if args.write:
            write_text(args.write, "\n".join(f1) + "\n")
    except M2esError as exc:
        print(f"m2es summary: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
