"""Where a finished run loses its intervals: in the features, or in learning (docs/datasets.md).

Run in a project whose ``dvc repro`` (or train and evaluate stages) has finished for a dataset
with ``roi_flow`` features and ``synth``'s ground truth. Two measurements per GT interval of a
type (default micro), split by whether the cross-fold evaluation found it
(``evaluate/errors.csv``):

* ``snr``: the peak, over the clips that touch the interval, of the ``<region>.mag`` columns of
  the regions the generator moved (``data/raw/<ds>/ground_truth.csv``), in units of that column's
  robust noise (1.4826 x MAD over the video's steps at least 6 steps away from any interval), for
  both ``roi_flow`` datasets (``rgb``: accumulated displacement, ``flow``: the clip's own flow);
* ``scores``: every fold model (``runs/fold_<subject>/model.pt``, its last epoch) on every video,
  with no suppression (each point's proposal kept): the interval's best proposal of its own type
  with IoU >= 0.5, on the videos the model trained on and on its held-out subject's.

Usage: ``python benchmarks/heldout_scores.py --dataset synth_samm [--type micro] [--root .]``.
Prints the summaries and one JSON object. Not part of pytest.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.iaenet import load_checkpoint  # noqa: E402
from pipeline.io.artifacts import read_features  # noqa: E402
from pipeline.io.tables import read_annotations  # noqa: E402
from pipeline.learning.postprocess import predict_video  # noqa: E402
from pipeline.scoring.metrics import interval_iou  # noqa: E402

#: the generator's region names -> roi_flow's rows (pipeline/extract/roi_flow.py REGIONS)
GENERATOR_REGIONS = {
    "brows": ("brow_r_outer", "brow_r_inner", "glabella", "brow_l_inner", "brow_l_outer"),
    "cheeks": ("cheek_r", "cheek_l"), "nose": ("nose",),
    "mouth": ("mouth_r", "mouth_l", "upper_lip", "lower_lip"), "eyes": ("eye_r", "eye_l"),
}
AWAY_STEPS = 6        # noise steps: at least this many feature steps away from any interval
GOOD_SCORE = 0.45     # the share of intervals with a proposal at least this good is reported


def missed_keys(base: Path) -> set[tuple[str, int]]:
    """(video, onset) of the GT intervals the cross-fold evaluation missed (``errors.csv`` FN rows)."""
    errors = pd.read_csv(base / "evaluate" / "errors.csv")
    return {(str(r.video), int(r.onset)) for r in errors.itertuples() if r.error == "FN"}


def interval_snr(base: Path, raw_truth: Path, ann: pd.DataFrame, kind: str,
                 features: dict[str, tuple[np.ndarray, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per interval of type ``kind``: its regions' peak magnitude in robust noise units, per roi_flow dataset.
    ``features``: video -> :func:`read_features` (rgb then flow columns, and the file's attrs)."""
    truth = pd.read_csv(raw_truth)
    regions_of = {(str(r.video), int(r.onset)): str(r.regions) for r in truth.itertuples()}
    missed = missed_keys(base)
    out = []
    for video, rows in ann.groupby("video"):
        feats, attrs = features[video]
        names, stats, dim = attrs["roi_regions"], attrs["roi_stats"], int(attrs["dim"])
        stride, clip = int(attrs["stride"]), int(attrs["clip"])   # clip i covers fields [stride*i, stride*i + clip)
        data = {"rgb": feats[:, :dim], "flow": feats[:, dim:]}
        steps = len(feats)
        quiet = np.ones(steps, bool)
        for r in rows.itertuples():
            quiet[max(0, int(r.onset) // stride - AWAY_STEPS): int(r.offset) // stride + AWAY_STEPS] = False
        for r in rows[rows["type"] == kind].itertuples():
            clips = [i for i in range(steps) if stride * i <= r.offset and stride * i + clip > r.onset]
            key = (str(video), int(r.source_onset)) if "source_onset" in rows else (str(video), int(r.onset))
            cols = [names.index(n) * len(stats) + stats.index("mag")
                    for g in regions_of.get(key, "").split("+") for n in GENERATOR_REGIONS.get(g, ())]
            rec: dict[str, Any] = {"video": video, "onset": int(r.onset), "length": int(r.offset - r.onset + 1),
                                   "found": (str(video), int(r.onset)) not in missed}
            for s, arr in data.items():
                best = 0.0
                for c in cols:
                    bg = arr[quiet, c]
                    med = float(np.median(bg))
                    scale = 1.4826 * float(np.median(np.abs(bg - med))) + 1e-9
                    best = max(best, (float(arr[clips, c].max()) - med) / scale)
                rec[f"snr_{s}"] = best
            out.append(rec)
    return out


def best_proposal(pred: pd.DataFrame, onset: int, offset: int, kind: str) -> float:
    """The best score of a ``kind`` proposal with IoU >= 0.5 on [onset, offset] (0 when none)."""
    p = pred[pred["type"] == kind]
    ok = interval_iou(p["onset"].to_numpy(), p["offset"].to_numpy(), [onset], [offset])[:, 0] >= 0.5
    return float(p["score"].to_numpy()[ok].max()) if ok.any() else 0.0


def fold_scores(base: Path, ann: pd.DataFrame, feats: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per fold model and GT interval: its best unsuppressed proposal, on training or held-out videos."""
    subject = dict(zip(ann["video"], ann["subject"].astype(str)))
    out = []
    for fold_dir in sorted((base / "runs").glob("fold_*")):
        fold = fold_dir.name.split("_", 1)[1]
        model, meta = load_checkpoint(fold_dir / "model.pt")
        preset = copy.deepcopy(meta["preset"])
        preset["inference"].update(method="nms", iou=1.01, top_k=10**6, min_length=0)  # nothing suppressed
        for video, x in feats.items():
            pred = predict_video(model, x, preset, video)
            for r in ann[ann["video"] == video].itertuples():
                out.append({"fold": fold, "held_out": subject.get(video) == fold, "type": r.type,
                            "score": best_proposal(pred, int(r.onset), int(r.offset), r.type)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--type", default="micro", choices=("macro", "micro"))
    ap.add_argument("--root", default=".", help="the project folder (its data/ holds the finished run)")
    args = ap.parse_args()
    root = Path(args.root)
    base = root / "data" / args.dataset
    ann = read_annotations(base / "resample" / "annotations.csv")
    features = {p.stem: read_features(p) for p in sorted((base / "features").glob("*.h5"))}
    snr = interval_snr(base, root / "data" / "raw" / args.dataset / "ground_truth.csv", ann, args.type, features)
    scores = pd.DataFrame(fold_scores(base, ann, {v: x for v, (x, _) in features.items()}))
    result: dict[str, Any] = {"dataset": args.dataset, "type": args.type, "snr": {}, "scores": {}}
    for found in (True, False):
        sub = [r for r in snr if r["found"] is found]
        key = "found" if found else "missed"
        result["snr"][key] = {"n": len(sub), **{f"median_{s}": float(np.median([r[f"snr_{s}"] for r in sub]))
                                               if sub else None for s in ("rgb", "flow")}}
        print(f"{args.type} {key}: {result['snr'][key]}")
    for kind in ("macro", "micro"):
        for held in (False, True):
            s = scores[(scores["type"] == kind) & (scores["held_out"] == held)]["score"]
            where = "held_out" if held else "training"
            result["scores"][f"{kind}_{where}"] = {"n": int(len(s)), "median": float(s.median()),
                                                   f"share_ge_{GOOD_SCORE}": float((s >= GOOD_SCORE).mean())}
            print(f"{kind} {where}: {result['scores'][f'{kind}_{where}']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
