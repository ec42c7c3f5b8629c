"""The ``m2es spot`` command line: arguments, the run over every input, the final status line."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from pipeline.core.params import load_params
from pipeline.core.stage import setup_logging
from pipeline.spot.errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_OK, ModelMismatch, SpotError, exit_code_of
from pipeline.spot.ground_truth import f1_summary
from pipeline.spot.inputs import SpotInput, ensure_writable, new_folders, probe_input, remove_empty
from pipeline.spot.native import quiet_decoders
from pipeline.spot.params import SpotParams, check_ingest, image_extensions
from pipeline.spot.recipe import load_model, resolve_checkpoint
from pipeline.spot.spotting import SpotResult, spot_one
from pipeline.spot.stages import HEAVY_STEPS

log = logging.getLogger(__name__)

DEFAULT_PARAMS = "params.yaml"
INTERRUPTED = ("m2es spot: interrupted; no file is half-written (each is written under a temporary name, then "
               "renamed). Rerun the same command to resume: finished crop/flow/features are reused.")


def build_parser() -> argparse.ArgumentParser:
    """The ``m2es spot`` arguments."""
    p = argparse.ArgumentParser(
        prog="m2es spot",
        description="Spot macro- and micro-expressions in videos or frame folders with a trained IAENet.",
        epilog="Exit codes: 0 ok; 1 internal error; 2 bad input or usage; 3 no face found; 4 model problem "
               "(unreadable, or its feature backbone/weights do not match); 130 interrupted (Ctrl-C).")
    p.add_argument("inputs", nargs="+", metavar="VIDEO_OR_FRAME_FOLDER", help="video files and/or frame folders")
    p.add_argument("--model", required=True,
                   help="training run folder (data/<ds>/runs -> final/model.pt) or a checkpoint file")
    p.add_argument("--out", default=None, help="outputs go to OUT/<input name>/ (default: params spot.out_dir)")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate of the input (required for frame folders; overrides a file's own)")
    p.add_argument("--threshold-macro", type=float, default=None, help="score threshold for macro-expressions")
    p.add_argument("--threshold-micro", type=float, default=None, help="score threshold for micro-expressions")
    p.add_argument("--thresholds", default=None,
                   help="thresholds.json to use (default: the run's ../evaluate/thresholds.json)")
    p.add_argument("--dataset", default=None,
                   help="take crop/flow/features params from params.yaml + this dataset preset (for checkpoints "
                        "that record none and have no dataset folder next to them)")
    p.add_argument("--weights-rgb", default=None, help="I3D rgb weights (features.weights.rgb) the model needs")
    p.add_argument("--weights-flow", default=None, help="I3D flow weights (features.weights.flow) the model needs")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="device for flow, features and IAENet (default: params spot.device)")
    p.add_argument("--cache-dir", default=None, help="per-input cache root (default: params spot.cache_dir)")
    p.add_argument("--annotate", action="store_true", help="also write annotated.mp4 with the intervals drawn")
    p.add_argument("--ground-truth", default=None,
                   help="CSV of known intervals (type, onset, offset[, video]) to draw and score against")
    p.add_argument("--params", default=None, help="params file (default: params.yaml when present)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _load_params(arg: str | None) -> tuple[dict[str, Any], str]:
    """(params, its file's name for messages): an explicit path must exist; the default may be absent
    outside the repository."""
    if arg is not None:
        return load_params(arg), str(arg)
    if Path(DEFAULT_PARAMS).is_file():
        return load_params(DEFAULT_PARAMS), DEFAULT_PARAMS
    log.info("no params.yaml in %s: using spot's built-in defaults", Path.cwd())
    return {}, DEFAULT_PARAMS


def _settings(params: dict[str, Any], source: str, args: argparse.Namespace) -> SpotParams:
    """The ``spot`` section (and the ``ingest`` section spot runs with), checked, with the command line's
    ``--cache-dir``; unknown keys are refused naming the closest known one."""
    settings = SpotParams.from_params(params.get(SpotParams.SECTION), where=f"{source}: {SpotParams.SECTION}")
    check_ingest(params, where=f"{source}: ingest")
    if args.cache_dir:
        settings = replace(settings, cache_dir=str(args.cache_dir))
    return settings


def _failed(name: str, code: int, exc: BaseException) -> str:
    """The status line of an input that failed."""
    return f"{name}: FAILED (exit {code}: {str(exc).splitlines()[0][:160]})"


def run(args: argparse.Namespace) -> tuple[int, list[SpotResult], list[str]]:
    """Spot every input of ``args``; returns (exit code, results, one status line per input).

    Options, the output and cache folders and the model are checked first (any problem
    there stops the run); then each input is probed and spotted on its own, and a failed
    input does not stop the others. The exit code is that of the first failed input.
    Folders this run created and left empty (a failed input's output folder) are removed,
    also when the run stops on an error or Ctrl-C.
    """
    params, source = _load_params(args.params)
    settings = _settings(params, source, args)
    out_root = Path(args.out) if args.out else settings.out_root
    checkpoint = resolve_checkpoint(args.model)
    created = new_folders(out_root) + new_folders(settings.cache_root)
    try:
        return _run(args, params, settings, out_root, checkpoint, created)
    finally:
        remove_empty(created)


def _run(args: argparse.Namespace, params: dict[str, Any], settings: SpotParams, out_root: Path, checkpoint: Path,
         created: list[Path]) -> tuple[int, list[SpotResult], list[str]]:
    """:func:`run` once the options are read; appends the folders it creates to ``created``."""
    device = args.device or settings.device
    ensure_writable(out_root, "output", "--out")
    ensure_writable(settings.cache_root, "cache", "--cache-dir")

    outcomes: list[SpotInput | SpotError] = []
    for arg in args.inputs:
        try:
            outcomes.append(probe_input(arg, args.fps, image_extensions(params)))
        except SpotError as exc:
            log.error("%s", exc)
            outcomes.append(exc)
    status: list[str] = []
    results: list[SpotResult] = []
    code = EXIT_OK
    if not any(isinstance(o, SpotInput) for o in outcomes):  # nothing to spot: do not load the model
        for arg, o in zip(args.inputs, outcomes):
            status.append(_failed(Path(arg).name, o.exit_code, o))
        return next(o.exit_code for o in outcomes if isinstance(o, SpotError)), results, status
    model = load_model(checkpoint, device, args.dataset, params,
                       {"rgb": args.weights_rgb, "flow": args.weights_flow}, settings, args.thresholds,
                       args.threshold_macro, args.threshold_micro)
    names: dict[str, int] = {}
    for arg, outcome in zip(args.inputs, outcomes):
        try:
            if isinstance(outcome, SpotError):
                raise outcome
            inp = outcome
            k = names.get(inp.name, 0)
            names[inp.name] = k + 1
            out_dir = out_root / (inp.name if k == 0 else f"{inp.name}_{k + 1}")
            created[:0] = new_folders(out_dir)   # deepest first
            ensure_writable(out_dir, "output", "--out")
            res = spot_one(inp, model, settings, params, out_dir, args.annotate, args.ground_truth, args.verbose)
        except ModelMismatch:
            raise
        except Exception as exc:  # noqa: BLE001 - one input's failure must not stop the others
            c = exit_code_of(exc)
            if c == EXIT_BUG:
                log.error("%s: internal error:\n%s", arg, traceback.format_exc())
            elif not isinstance(outcome, SpotError):
                log.error("%s", exc)
            status.append(_failed(Path(arg).name, c, exc))
            code = code or c
            continue
        results.append(res)
        counts = res.doc["counts"]
        heavy = "/".join(res.steps[s] for s in HEAVY_STEPS)
        lost = f", face lost in {len(res.lost_spans)} span(s)" if len(res.lost_spans) else ""
        scored = f", vs ground truth {f1_summary([res.doc['ground_truth']])}" if "ground_truth" in res.doc else ""
        status.append(f"{inp.name}: {counts['macro']} macro, {counts['micro']} micro{lost}{scored} "
                      f"[crop/flow/features {heavy}] -> {res.out_dir}")
    scores = [r.doc["ground_truth"] for r in results if "ground_truth" in r.doc]
    if len(scores) > 1:
        status.append(f"all {len(scores)} inputs vs ground truth: {f1_summary(scores)}")
    return code, results, status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``m2es spot`` (see :mod:`pipeline.spot` for the exit codes)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    setup_logging(args.verbose)
    try:
        with quiet_decoders(args.verbose):
            code, results, status = run(args)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every failure ends in one message and a documented code
        code = exit_code_of(exc)
        if code == EXIT_BUG:
            log.error("spot: internal error:\n%s", traceback.format_exc())
        else:
            log.error("spot: %s", exc)
        print(f"m2es spot: failed (exit {code}): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
              file=sys.stderr)
        return code
    thr = f"thresholds macro {results[0].doc['thresholds']['macro']:.2f} / micro " \
          f"{results[0].doc['thresholds']['micro']:.2f}" if results else ""
    print(f"m2es spot: {len(results)} of {len(status)} input(s) spotted{', ' + thr if thr else ''}: "
          + "; ".join(status))
    return code
