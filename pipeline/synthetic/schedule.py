"""What happens when in a synthetic video: labelled expressions and unlabelled distractors.

Everything here is drawn from params and a seeded generator only (no face needed),
so the ground truth of a dataset is known before any frame is rendered.

Interval lengths (``offset - onset``, the reference tables' ``length``) are drawn by
inverse-CDF sampling of a quantile table in seconds (``length_quantiles_s``: the 0,
10, ..., 100th percentiles, copied from the real annotation tables into
``params.yaml``) and capped by ``max_s``; frames = round(seconds * fps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from pipeline.errors import ConfigError
from pipeline.synthetic.motion import ACTION_UNITS, REGIONS

log = logging.getLogger(__name__)

EXPRESSION_TYPES = ("macro", "micro")
DISTRACTORS = ("blink", "turn", "jerk", "lighting")
COUNT_MODELS = ("poisson", "rounded")  # events per video: Poisson, or the expected count stochastically rounded

_EMOTION_RULES = (  # first match wins
    ("lip_corner_pull", "happiness"),
    ("nose_wrinkle", "disgust"),
    ("brow_raise", "surprise"),
    ("lip_corner_depress", "sadness"),
    ("brow_lower", "anger"),
)


@dataclass
class Instance:
    """One labelled expression: 0-based frames of its video, inclusive, and what moves."""

    type: str
    onset: int
    apex: int
    offset: int
    aus: list[str]
    amplitude_px224: float

    @property
    def regions(self) -> list[str]:
        """Face regions the instance moves."""
        return sorted({ACTION_UNITS[a][1] for a in self.aus}, key=REGIONS.index)

    @property
    def au_codes(self) -> str:
        """FACS codes joined with '+', e.g. ``6+12``."""
        codes: list[str] = []
        for a in self.aus:
            codes += ACTION_UNITS[a][0].split("+")
        return "+".join(sorted(set(codes), key=int))

    @property
    def emotion(self) -> str:
        """Emotion label implied by the AUs (for the spreadsheets)."""
        for au, emo in _EMOTION_RULES:
            if au in self.aus:
                return emo
        return "others"


@dataclass
class Event:
    """One unlabelled distractor over frames [start, end] (0-based, inclusive)."""

    kind: str
    start: int
    end: int
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class Schedule:
    """Everything that happens in one video."""

    n_frames: int
    fps: float
    instances: list[Instance]
    events: list[Event]
    drift: dict[str, float]


def _pair(spec: Any, name: str) -> tuple[float, float]:
    """``[lo, hi]`` (or a scalar as ``[x, x]``) from params key ``name``."""
    if isinstance(spec, (int, float)):
        return float(spec), float(spec)
    if isinstance(spec, (list, tuple)) and len(spec) == 2 and float(spec[0]) <= float(spec[1]):
        return float(spec[0]), float(spec[1])
    raise ConfigError(f"params.yaml: synth.{name} must be a number or [lo, hi] with lo <= hi, got {spec!r}.")


def sample_lengths(quantiles_s: list[float], n: int, rng: np.random.Generator, max_s: float | None = None
                   ) -> np.ndarray:
    """``n`` lengths in seconds by inverse-CDF sampling of a quantile table (evenly spaced levels)."""
    q = np.asarray(quantiles_s, np.float64)
    if q.ndim != 1 or len(q) < 2 or np.any(np.diff(q) < 0):
        raise ConfigError(f"params.yaml: synth length_quantiles_s must be a non-decreasing list, got {quantiles_s!r}.")
    levels = np.linspace(0.0, 1.0, len(q))
    out = np.interp(rng.uniform(0, 1, n), levels, q)
    if max_s is not None:
        out = np.minimum(out, float(max_s))
    return out


def _count(rate_per_min: float, minutes: float, model: str, rng: np.random.Generator) -> int:
    """Number of events: Poisson, or the expected count with stochastic rounding."""
    mean = max(0.0, float(rate_per_min)) * minutes
    if model == "poisson":
        return int(rng.poisson(mean))
    if model == "rounded":
        return int(np.floor(mean) + (rng.uniform() < mean - np.floor(mean)))
    raise ConfigError(f"params.yaml: synth.count_model must be one of {', '.join(COUNT_MODELS)}, got {model!r}.")


def _place(length: int, n_frames: int, taken: list[tuple[int, int]], gap: int, margin: int,
           rng: np.random.Generator, tries: int = 200) -> int | None:
    """A start frame for an interval of ``length`` that keeps ``gap`` frames from ``taken``."""
    lo, hi = margin, n_frames - 1 - margin - length
    if hi < lo:
        return None
    for _ in range(tries):
        s = int(rng.integers(lo, hi + 1))
        e = s + length
        if all(e + gap < a or s - gap > b for a, b in taken):
            return s
    return None


def _draw_aus(n_regions: int, rng: np.random.Generator) -> list[str]:
    """One AU from each of ``n_regions`` distinct random regions."""
    regions = list(rng.choice(REGIONS, size=min(n_regions, len(REGIONS)), replace=False))
    aus = []
    for region in sorted(regions, key=REGIONS.index):
        options = [a for a, (_, r) in ACTION_UNITS.items() if r == region]
        aus.append(str(options[int(rng.integers(len(options)))]))
    return aus


def sample_schedule(n_frames: int, fps: float, p: Mapping[str, Any], rng: np.random.Generator) -> Schedule:
    """Draw expressions and distractors for a video of ``n_frames`` at ``fps`` from ``synth`` params ``p``."""
    exp = p.get("expressions") or {}
    dis = p.get("distractors") or {}
    minutes = n_frames / fps / 60.0
    count_model = str(p.get("count_model", "poisson"))
    gap = int(round(float(exp.get("min_gap_s", 0.5)) * fps))
    margin = int(round(float(exp.get("margin_s", 0.5)) * fps))
    apex_lo, apex_hi = _pair(exp.get("apex_frac", [0.3, 0.6]), "expressions.apex_frac")
    taken: list[tuple[int, int]] = []
    instances: list[Instance] = []
    drafts: list[tuple[str, int]] = []
    for kind in EXPRESSION_TYPES:
        spec = exp.get(kind)
        if not isinstance(spec, Mapping):
            raise ConfigError(f"params.yaml: synth.expressions.{kind} is missing; restore it from params.yaml.")
        n = _count(float(spec.get("rate_per_min", 0.0)), minutes, count_model, rng)
        secs = sample_lengths(spec["length_quantiles_s"], n, rng, spec.get("max_s"))
        min_len = 3 if kind == "micro" else 4
        drafts += [(kind, max(min_len, int(round(s * fps)))) for s in secs]
    drafts.sort(key=lambda d: -d[1])  # place long intervals first
    for kind, length in drafts:
        spec = exp[kind]
        start = _place(length, n_frames, taken, gap, margin, rng)
        if start is None:
            log.debug("no room for a %s of %d frames in %d frames; dropped", kind, length, n_frames)
            continue
        taken.append((start, start + length))
        apex = start + int(round(rng.uniform(apex_lo, apex_hi) * length))
        apex = min(max(apex, start + 1), start + length - 1)
        lo, hi = _pair(spec.get("n_regions", [1, 2]), f"expressions.{kind}.n_regions")
        n_regions = int(rng.integers(int(lo), int(hi) + 1))
        a_lo, a_hi = _pair(spec.get("amplitude_px224", [1, 2]), f"expressions.{kind}.amplitude_px224")
        instances.append(Instance(kind, start, apex, start + length, _draw_aus(n_regions, rng),
                                  float(rng.uniform(a_lo, a_hi))))
    instances.sort(key=lambda i: i.onset)

    avoid = bool(dis.get("avoid_expressions", True))
    blocked = list(taken) if avoid else []
    events: list[Event] = []
    for kind in DISTRACTORS:
        spec = dis.get(kind) or {}
        n = _count(float(spec.get("rate_per_min", 0.0)), minutes, count_model, rng)
        d_lo, d_hi = _pair(spec.get("duration_s", [0.2, 0.4]), f"distractors.{kind}.duration_s")
        for _ in range(n):
            length = max(2, int(round(rng.uniform(d_lo, d_hi) * fps)))
            start = _place(length, n_frames, blocked, max(1, gap // 2), 0, rng)
            if start is None:
                continue
            blocked.append((start, start + length))
            values = {}
            if kind == "blink":
                values["strength"] = float(rng.uniform(*_pair(spec.get("strength", [0.8, 1.0]), "blink.strength")))
            elif kind == "turn":
                values["px224"] = float(rng.choice([-1, 1]) * rng.uniform(*_pair(spec.get("amplitude_px224", [3, 8]),
                                                                                 "turn.amplitude_px224")))
            elif kind == "jerk":
                a = rng.uniform(*_pair(spec.get("amplitude_px224", [3, 8]), "jerk.amplitude_px224"))
                ang = rng.uniform(0, 2 * np.pi)
                values.update(dx224=float(a * np.cos(ang)), dy224=float(a * np.sin(ang)),
                              rot_deg=float(rng.uniform(-1, 1) * float(spec.get("rotation_deg", 1.5))))
            elif kind == "lighting":
                values["gain"] = float(1 + rng.choice([-1, 1]) * rng.uniform(*_pair(spec.get("change", [0.08, 0.2]),
                                                                                    "lighting.change")))
            events.append(Event(kind, start, start + length, values))
    events.sort(key=lambda e: (e.start, e.kind))

    dr = dis.get("drift") or {}
    p_lo, p_hi = _pair(dr.get("period_s", [6.0, 20.0]), "distractors.drift.period_s")
    drift = {
        "px224": float(dr.get("amplitude_px224", 0.0)),
        "rot_deg": float(dr.get("rotation_deg", 0.0)),
        "scale": float(dr.get("scale", 0.0)),
        "period_x": float(rng.uniform(p_lo, p_hi)), "period_y": float(rng.uniform(p_lo, p_hi)),
        "period_r": float(rng.uniform(p_lo, p_hi)), "period_s": float(rng.uniform(p_lo, p_hi)),
        "phase_x": float(rng.uniform(0, 2 * np.pi)), "phase_y": float(rng.uniform(0, 2 * np.pi)),
        "phase_r": float(rng.uniform(0, 2 * np.pi)), "phase_s": float(rng.uniform(0, 2 * np.pi)),
    }
    return Schedule(n_frames, float(fps), instances, events, drift)
