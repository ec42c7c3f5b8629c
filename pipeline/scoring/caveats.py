"""What every result rests on, said in every result file: the features' backbone and the identity
of its weights, the published-protocol switches that were on (the ``reproduction`` block), and
plain-language warnings.

* :func:`read_run_record`: the backbone, weights, model preset and features recipe that the train
  stage recorded in its checkpoints (``data/<ds>/runs/*/model.pt``);
* :class:`FeatureSource` (:func:`feature_source`): the backbone and its weights in words;
* :func:`reproduction`: each switch of docs/reproduce.md's quirk table, its value and whether it
  is the published one; :func:`reproduction_code`: the same in at most 24 characters (the metrics file);
* :func:`caveat_lines`: THE caveat text; summary.md, details.json, thresholds.json and every
  picture title take their lines from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.errors import InputError

log = logging.getLogger(__name__)

#: the weights identities the features stage records (``weights_<stream>`` attrs): models.weights.RANDOM_INIT
#: and pipeline.extract.params.NO_WEIGHTS (not imported: they would pull torch and the extract package in)
RANDOM_INIT = "random-init"
NO_WEIGHTS = "none"
ROI_FLOW = "roi_flow"
STREAMS = ("rgb", "flow")
SHA_PREFIX = 12  # hex digits of a weights file's SHA-256 shown


@dataclass(frozen=True)
class RunRecord:
    """What the train stage recorded in a checkpoint: the features' provenance (backbone, weights per
    stream, seeds), the resolved model preset and the features params the run's features were made with."""

    path: Path
    provenance: dict[str, Any]
    preset: dict[str, Any]
    features: dict[str, Any]


def read_run_record(runs: Path) -> RunRecord | None:
    """The record of the first checkpoint under ``runs`` (``<runs>/<fold>/model.pt``; every fold of a run
    shares it: the train stage refuses features of mixed backbones or weights); None when there is none."""
    found = sorted(runs.glob("*/model.pt"))
    if not found:
        return None
    import torch

    path = found[0]
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"{path}: not a readable m2es checkpoint ({exc}). Rerun the train stage "
                         "(dvc repro train@<dataset>).") from None
    if not isinstance(blob, dict):
        raise InputError(f"{path}: not an m2es checkpoint. Rerun the train stage (dvc repro train@<dataset>).")
    pipeline_recipe = (blob.get("params") or {}).get("pipeline") or {}
    return RunRecord(path, dict(blob.get("provenance") or {}), dict(blob.get("preset") or {}),
                     dict(pipeline_recipe.get("features") or {}))


@dataclass(frozen=True)
class FeatureSource:
    """The features' backbone and the identity of each stream's weights (``none``: weight-free;
    ``random-init:<seed>``; else a SHA-256 prefix); ``backbone`` None when no checkpoint records it."""

    backbone: str | None
    weights: dict[str, str]

    @property
    def random_init(self) -> bool:
        """True when a stream's weights were randomly initialised (features without pretrained knowledge)."""
        return any(w.startswith(RANDOM_INIT) for w in self.weights.values())

    def text(self) -> str:
        """The backbone and its weights in one line of words."""
        if self.backbone is None:
            return "features: backbone and weights unknown (no checkpoint under data/<ds>/runs records them)"
        if self.backbone == ROI_FLOW:
            return "features: roi_flow (weight-free landmark-region flow statistics; no pretrained weights)"
        if self.random_init:
            seeds = ", ".join(f"{s} {w.split(':', 1)[1]}" if ":" in w else s for s, w in self.weights.items()
                              if w.startswith(RANDOM_INIT))
            return (f"features: {self.backbone}, random-init weights (seed {seeds}): the features carry no "
                    "pretrained knowledge")
        shas = ", ".join(f"{s} {w}" for s, w in self.weights.items())
        return f"features: {self.backbone}, weights SHA-256 {shas}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: backbone, weights per stream, and the one-line description."""
        return {"backbone": self.backbone, "weights": dict(self.weights), "text": self.text()}


def feature_source(provenance: Mapping[str, Any] | None) -> FeatureSource:
    """The :class:`FeatureSource` of a checkpoint's provenance (None or empty: unknown)."""
    if not provenance or not provenance.get("backbone"):
        return FeatureSource(None, {})
    weights = {}
    for stream in STREAMS:
        ident = str(provenance.get(f"weights_{stream}", "unrecorded"))
        if ident == RANDOM_INIT:
            seed = provenance.get(f"seed_{stream}")
            ident = f"{RANDOM_INIT}:{seed}" if seed is not None else RANDOM_INIT
        elif ident not in (NO_WEIGHTS, "unrecorded"):
            ident = ident[:SHA_PREFIX]
        weights[stream] = ident
    return FeatureSource(str(provenance["backbone"]), weights)


#: docs/reproduce.md's quirk table: switch -> (short code, the published value); the published
#: ``inference.wbf_from_epoch`` depends on the dataset's layout (16 on SAMM-LV, NMS only on CAS(ME)^2)
PUBLISHED: dict[str, tuple[str, Any]] = {
    "resample.interval_map": ("map", "published"),
    "resample.duration_rule": ("len", "published"),
    "features.flow_quantize": ("jpg", "jpeg"),
    "evaluate.paper_search": ("srch", None),   # published when every knob is (see _published_search)
    "inference.nms_ties": ("nms", "later"),
    "inference.wbf_from_epoch": ("wbf", None),
    "inference.wbf_top_k": ("topk", False),
    "inference.wbf_unmerged_score": ("raw", "raw"),
}
PUBLISHED_WBF_FROM_EPOCH = {"samm": 16, "casme2": None}


def _published_search(search: Mapping[str, Any]) -> bool:
    """True when every knob of ``evaluate.paper_search`` (as :meth:`PaperSearch.as_dict` writes it) is the
    published F1 script's: epochs [6, 30], macro 0.300-0.499 and micro 0.100-0.499 by 0.001, ``>``,
    scores read as '%.4f' less the last character, ties to the first."""
    return (search.get("epochs") == [6, 30] and search.get("macro_grid") == [0.3, 0.499, 200]
            and search.get("micro_grid") == [0.1, 0.499, 400] and search.get("comparison") == ">"
            and search.get("score_text") == {"format": "%.4f", "drop_last": 1} and search.get("ties") == "first")


def reproduction(resample: Mapping[str, Any], search: Mapping[str, Any], record: RunRecord | None,
                 layout: str | None) -> dict[str, Any]:
    """Each published-protocol switch: ``{switch: {"value": ..., "published": bool | None}}`` (None: not
    known, e.g. no checkpoint records the model's inference switches, or no published value for this
    layout), plus ``code`` (:func:`reproduction_code`).

    ``resample``: the resample params the run used; ``search``: the paper search as run
    (:meth:`PaperSearch.as_dict`); ``record``: the train stage's record (inference switches and
    ``features.flow_quantize`` as trained); ``layout``: the dataset's layout (casme2 | samm | ...)."""
    inference = (record.preset.get("inference") or {}) if record else {}
    # a run recorded before features.flow_quantize existed read float flow: ``none``
    features = {"flow_quantize": "none", **record.features} if record else {}
    values: dict[str, Any] = {
        "resample.interval_map": resample.get("interval_map"),
        "resample.duration_rule": resample.get("duration_rule"),
        "features.flow_quantize": features.get("flow_quantize"),
        "evaluate.paper_search": dict(search),
        **{f"inference.{k}": inference.get(k) for k in ("nms_ties", "wbf_from_epoch", "wbf_top_k",
                                                         "wbf_unmerged_score")},
    }
    sources = {"resample": resample, "features": features, "inference": inference}
    out: dict[str, Any] = {}
    for switch, value in values.items():
        section, key = switch.split(".", 1)
        if section != "evaluate" and key not in sources[section]:
            published = None
        elif switch == "evaluate.paper_search":
            published = _published_search(value)
        elif switch == "inference.wbf_from_epoch":
            published = (value == PUBLISHED_WBF_FROM_EPOCH[layout]) if layout in PUBLISHED_WBF_FROM_EPOCH else None
        else:
            published = value == PUBLISHED[switch][1]
        out[switch] = {"value": value, "published": published}
    return {"code": reproduction_code(out), **out}


def reproduction_code(switches: Mapping[str, Mapping[str, Any]]) -> str:
    """The reproduction block in at most 24 characters, for ``metrics/<ds>.json``: ``published`` (every
    known switch at its published value), ``m2es`` (none), else the shorter of ``pub:`` + the short codes
    of those at their published value and ``pub-`` + those of the others (every switch published but
    these), joined by ``+``: ``map`` interval_map, ``len`` duration_rule, ``jpg`` flow_quantize, ``srch``
    the paper search, ``nms`` nms_ties, ``wbf`` wbf_from_epoch, ``topk`` wbf_top_k, ``raw``
    wbf_unmerged_score. A ``?`` ends it when a switch is not known (no checkpoint, no resample params)."""
    states = [(PUBLISHED[s][0], v["published"]) for s, v in switches.items() if s in PUBLISHED]
    on = [c for c, p in states if p is True]
    off = [c for c, p in states if p is False]
    unknown = "?" if any(p is None and c != "wbf" for c, p in states) else ""
    if not off and on:
        return "published" + unknown
    if not on:
        return "m2es" + unknown
    return ("pub:" + "+".join(on) if len(on) <= len(off) else "pub-" + "+".join(off)) + unknown


@dataclass(frozen=True)
class Silent:
    """A type that is never reported: ``where`` (``thresholds.json``, a protocol name) and its threshold
    (None: several, as cross-fold's per-subject ones)."""

    type: str
    where: str
    threshold: float | None = None


def silent_types(thresholds: Mapping[str, float], max_scores: Mapping[str, float], where: str) -> list[Silent]:
    """The types whose threshold keeps no prediction: at or above 1.0, or above every score of that type
    (``max_scores``: the highest score per type among the predictions the thresholds apply to; a type
    without predictions is not listed)."""
    out = []
    for t, thr in thresholds.items():
        top = max_scores.get(t)
        if top is not None and (float(thr) >= 1.0 or float(thr) > float(top)):
            out.append(Silent(t, where, float(thr)))
    return out


def caveat_lines(source: FeatureSource, silent: Sequence[Silent] = (), upper_bound: bool = False) -> list[str]:
    """The caveats of a result, one plain-language line each: the backbone and its weights; a warning for
    random-init weights; one per :class:`Silent` type; with ``upper_bound``, that paper-optimistic is an
    upper bound. Every result file and picture title takes its caveats from here."""
    lines = [source.text()]
    if source.random_init:
        lines.append(f"WARNING: random-init {source.backbone} weights: these F1s say nothing about pretrained "
                     "features or the published recipe")
    if source.backbone is None:
        lines.append("WARNING: the features' backbone is not recorded: do not compare these F1s across backbones")
    wheres: dict[tuple[str, float | None], list[str]] = {}   # one line per type and threshold, in order
    for s in silent:
        wheres.setdefault((s.type, s.threshold), []).append(s.where)
    for (kind, threshold), where in wheres.items():
        if threshold is not None:
            lines.append(f"WARNING: {kind} threshold {threshold:.2f} ({'; '.join(where)}): no {kind}-expression "
                         "is ever reported")
        else:
            lines.append(f"WARNING: {' and '.join(where)} report{'s' if len(where) == 1 else ''} no "
                         f"{kind}-expression at all: {kind} F1 0 by construction")
    if upper_bound:
        lines.append("paper-optimistic picks thresholds and epoch on the very predictions it scores: an upper "
                     "bound, not a result")
    return lines
