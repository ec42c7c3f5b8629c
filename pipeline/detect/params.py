"""The ``baseline`` section of ``params.yaml``: :class:`BaselineParams` and the method's ``VERSION``.

The baseline also reads ``features.roi`` (:class:`pipeline.extract.params.RoiParams`): its
regions, head-motion model and sliding reference are roi_flow's, so the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.section import Section, knob
from pipeline.errors import ConfigError

VERSION = 1  # bump when the baseline's predictions for the same params and inputs change
METHOD = "roi-motion peaks"  # the name reported beside IAENet
EYE_MODES: tuple[str, ...] = ("subtract", "ignore", "keep")


@dataclass(frozen=True)
class BaselineParams(Section):
    """The ``baseline`` section of params.yaml (knobs explained in configs/params.reference.yaml).

    ``spans``: reference spans, in multiples of ``features.roi.reference_pairs`` (distinct,
    increasing); ``eyes``: what the eye regions do (blinks): ``subtract`` (left out, and their
    motion taken out of every other region's), ``ignore`` (left out), ``keep`` (like any region);
    ``top_k``: regions averaged per frame (the k strongest); ``smooth_s``: Gaussian sigma of
    the smoothing, seconds (0: none); ``noise_floor``: the smallest noise level (MAD, percent of
    the inter-ocular distance) a region's signal is divided by (a motionless region);
    ``min_height``: smallest peak, in robust noise units;
    ``interval_fraction``: an interval is where the signal stays above this fraction of its
    peak; ``micro_max_s``: the longest micro-expression (MEGC: 0.5 s); ``score_half``: the
    peak height scored 0.5 (score = h / (h + score_half)).
    """

    SECTION = "baseline"

    spans: list[int] = knob([1, 2, 4, 8])
    eyes: str = knob("subtract", choices=EYE_MODES)
    noise_floor: float = knob(0.1, min=1e-6)
    top_k: int = knob(2, min=1, max=15)
    smooth_s: float = knob(0.05, min=0.0, max=2.0)
    min_height: float = knob(3.0, min=0.0)
    interval_fraction: float = knob(0.15, min=0.0, max=1.0)
    micro_max_s: float = knob(0.5, min=0.0)
    score_half: float = knob(10.0, min=1e-6)

    def check(self, where: str) -> None:
        """Spans: a non-empty increasing list of positive integers; a fraction strictly inside (0, 1)."""
        try:
            spans = [int(s) for s in self.spans]
        except (TypeError, ValueError):
            spans = []
        if (not spans or any(s < 1 or s != v or isinstance(v, bool) for s, v in zip(spans, self.spans))
                or spans != sorted(set(spans))):
            raise ConfigError(f"{where}.spans = {self.spans}; list increasing positive integers (multiples of "
                              "features.roi.reference_pairs), e.g. [1, 2, 4, 8].")
        if not 0.0 < self.interval_fraction < 1.0:
            raise ConfigError(f"{where}.interval_fraction = {self.interval_fraction}; use a value in (0, 1).")

    def reference_spans(self, reference_pairs: int) -> list[int]:
        """The reference spans in frames."""
        return [int(s) * int(reference_pairs) for s in self.spans]
