"""The ``evaluate`` section of ``params.yaml``: :class:`EvaluateParams` and its derived values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.section import Section, knob
from pipeline.errors import ConfigError
from pipeline.scoring.metrics import COUNTING_RULES
from pipeline.scoring.protocols import PAPER_SEARCH_DEFAULT, PROTOCOLS, TIE_BREAKS, PaperSearch, threshold_grid


@dataclass(frozen=True)
class EvaluateParams(Section):
    """The ``evaluate`` section of params.yaml (knobs explained in configs/params.reference.yaml).

    ``countings`` and ``protocols`` list distinct values, the first being the default
    (headline numbers, MEGC export, timelines); ``threshold_grid`` is ``{min, max, num}``
    (:attr:`grid` is the grid itself); ``fixed`` is checked against the predicted epochs
    when the ``fixed`` protocol runs (:func:`pipeline.scoring.protocols.select_fixed`);
    ``paper_search`` is how the ``paper`` protocol searches (:attr:`search`, a
    :class:`pipeline.scoring.protocols.PaperSearch`; m2es's own search unless a dataset preset
    sets the published one).
    """

    SECTION = "evaluate"

    iou_threshold: float = knob(0.5, max=1.0)            # in (0, 1]
    countings: list[str] = knob(list(COUNTING_RULES))
    protocols: list[str] = knob(list(PROTOCOLS))
    threshold_grid: dict[str, Any] = knob({"min": 0.0, "max": 1.0, "num": 101})
    fixed: dict[str, Any] = knob({"thresholds": {"macro": 0.5, "micro": 0.5}, "epoch": "last"})
    timelines: int = knob(4, min=0)
    cross_fold_ties: str = knob("middle", choices=TIE_BREAKS)
    paper_search: dict[str, Any] = knob(PAPER_SEARCH_DEFAULT)

    def check(self, where: str) -> None:
        """IoU in (0, 1]; countings and protocols distinct and known; a valid threshold grid."""
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ConfigError(f"{where}.iou_threshold = {self.iou_threshold}; use a value in (0, 1].")
        for key, allowed in (("countings", COUNTING_RULES), ("protocols", PROTOCOLS)):
            values = getattr(self, key)
            bad = [x for x in values if x not in allowed]
            if not values or bad or len(set(values)) != len(values):
                raise ConfigError(f"{where}.{key} = {values}; list distinct values among "
                                  f"{', '.join(allowed)} (the first is the default).")
        threshold_grid(self.threshold_grid)
        PaperSearch.from_section(self.paper_search, self.grid, f"{where}.paper_search")

    @property
    def grid(self) -> np.ndarray:
        """The score thresholds searched, per type (:func:`pipeline.scoring.protocols.threshold_grid`)."""
        return threshold_grid(self.threshold_grid)

    @property
    def search(self) -> PaperSearch:
        """How the ``paper`` protocol searches (``paper_search`` over the shared grid)."""
        return PaperSearch.from_section(self.paper_search, self.grid)

    @property
    def default_counting(self) -> str:
        """The counting rule of the headline numbers."""
        return self.countings[0]

    @property
    def default_protocol(self) -> str:
        """The protocol of the headline numbers, the MEGC export and the timelines."""
        return self.protocols[0]
