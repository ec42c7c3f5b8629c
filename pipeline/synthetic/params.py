"""The ``synth`` section of ``params.yaml``: :class:`SynthParams`.

Top-level keys are typed knobs. The nested ``face``, ``expressions`` and ``distractors``
mappings stay mappings (read by :mod:`pipeline.synthetic.faces`, ``schedule`` and
``render``, which check their values); :meth:`SynthParams.check` refuses their unknown
keys (a typo would otherwise silently fall back to a default).

The digest of a generated video is taken over the section *as written* (not over these
values with defaults filled in), so adding a knob here never invalidates a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from pipeline.core.section import Section, knob, reject_unknown
from pipeline.errors import ConfigError
from pipeline.synthetic.schedule import COUNT_MODELS, DISTRACTORS, EXPRESSION_TYPES

FORMATS = ("frames", "mp4")

#: Keys of the nested mappings, as the generator reads them.
FACE_KEYS = ("width_frac", "aspect", "rotation_deg", "offset_frac", "mirror_p", "geometry_jitter", "tone", "warmth",
             "light_gradient")
EXPRESSION_KEYS = ("sigma_frac", "apex_frac", "min_gap_s", "margin_s", *EXPRESSION_TYPES)
EXPRESSION_TYPE_KEYS = ("rate_per_min", "length_quantiles_s", "max_s", "amplitude_px224", "n_regions")
DISTRACTOR_KEYS = ("avoid_expressions", "noise_sigma", "blink_sigma_frac", *DISTRACTORS, "drift")
DISTRACTOR_KIND_KEYS = {
    "blink": ("rate_per_min", "duration_s", "strength"),
    "turn": ("rate_per_min", "duration_s", "amplitude_px224"),
    "jerk": ("rate_per_min", "duration_s", "amplitude_px224", "rotation_deg"),
    "lighting": ("rate_per_min", "duration_s", "change"),
    "drift": ("amplitude_px224", "rotation_deg", "scale", "period_s"),
}


@dataclass(frozen=True)
class SynthParams(Section):
    """The ``synth`` section of params.yaml (knobs explained in configs/params.reference.yaml)."""

    SECTION = "synth"

    seed: int = knob(0)
    format: str = knob("frames", choices=FORMATS)
    fps: float | None = knob(None, min=0.0)                  # None: the preset's source_fps
    size: list[int] = knob([320, 240])                       # frame width, height
    n_subjects: int = knob(3, min=1)
    videos_per_subject: float | list[float] = knob(2)        # a number or [lo, hi]
    duration_s: float | list[float] = knob(20.0)             # a number or [lo, hi]
    jpeg_quality: int = knob(90, min=0, max=100)
    detector_upsample: int = knob(0, min=0)
    count_model: str = knob("poisson", choices=COUNT_MODELS)
    color: bool | None = knob(None)                          # None: the preset's color
    face: dict[str, Any] | None = knob({})
    expressions: dict[str, Any] | None = knob({})
    distractors: dict[str, Any] | None = knob({})

    def check(self, where: str) -> None:
        """Frame size as [width, height]; no unknown key in the nested mappings."""
        if len(self.size) != 2 or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x < 1
                                      for x in self.size):
            raise ConfigError(f"{where}.size = {self.size!r}; use [width, height] in pixels.")
        _nested(self.face, FACE_KEYS, f"{where}.face")
        _nested(self.expressions, EXPRESSION_KEYS, f"{where}.expressions")
        for kind in EXPRESSION_TYPES:
            _nested((self.expressions or {}).get(kind), EXPRESSION_TYPE_KEYS, f"{where}.expressions.{kind}")
        _nested(self.distractors, DISTRACTOR_KEYS, f"{where}.distractors")
        for kind, keys in DISTRACTOR_KIND_KEYS.items():
            _nested((self.distractors or {}).get(kind), keys, f"{where}.distractors.{kind}")

    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the frames."""
        return int(self.size[0]), int(self.size[1])


def _nested(value: Any, keys: tuple[str, ...], where: str) -> None:
    """Refuse unknown keys of one nested mapping (None/absent is fine: the code's defaults apply)."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {value!r}.")
    reject_unknown(value, keys, where)
