"""The pipeline's messages about an input in the user's terms.

The stages run on the input's cache (:mod:`pipeline.spot.inputs`), where the input is a link named
``video`` and frames are counted by position; their messages therefore say ``video video, frame 99:
<cache>/raw/video/img_100.jpg``. :class:`UserTerms` turns such text back into the user's terms (the
input's own path, the input's frame number), for errors and, through :meth:`UserTerms.logging`, for the
pipeline's log records while spot runs (whose progress lines about the cache are hidden unless ``-v``).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from pipeline.spot.inputs import VIDEO_NAME, SpotInput

#: decord's ``LOG``/``CHECK`` prefix inside its error texts: ``[17:47:05] /github/.../threaded_decoder.cc:292: ``
_NATIVE_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+\.(?:cc|cpp|c|h):\d+: ")
_VIDEO_FRAME = re.compile(rf"\bvideo {VIDEO_NAME}, frame (\d+)")
_OWN_LOGGERS = ("pipeline.spot",)
#: the runner's line for a failed video (:class:`pipeline.core.runner.Outcomes`): spot reports the failure itself
_RUNNER_FAILED = ("pipeline.core.runner", "%s: %s failed: %s")


class UserTerms:
    """Rewrites text about an input's cache into the user's terms.

    ``link``: the cache's link to the input (``<cache>/raw/video`` or ``.../raw/video.mp4``);
    ``numbers``: the input's frame number of each position the stages count (the resampled frames'
    ``source_frame``), set once known; without it a position is named as such.
    """

    def __init__(self, inp: SpotInput, link: Path | None = None, numbers: Sequence[int] | None = None):
        self.inp = inp
        self.link = link
        self.numbers = numbers

    def frame(self, position: int) -> str:
        """``frame N`` (the input's number) of a stage's 0-based frame position."""
        if self.numbers is not None and 0 <= position < len(self.numbers):
            return f"frame {int(self.numbers[position])}"
        return f"frame at position {position}"

    def __call__(self, text: str) -> str:
        """``text`` with the cache link replaced by the input's path, ``video video, frame P`` by the input's
        frame number, the ``video video:`` prefix dropped and decord's source locations removed."""
        if self.link is not None:
            text = text.replace(str(self.link), str(self.inp.path))
        text = _VIDEO_FRAME.sub(lambda m: self.frame(int(m.group(1))), text)
        text = text.replace(f"video {VIDEO_NAME}: ", "").replace(f"video {VIDEO_NAME}", self.inp.name)
        text = _NATIVE_PREFIX.sub("", text)
        label = str(self.inp.path)
        for lead in (f"{label}: ", f"{label} "):   # callers name the input first
            if text.startswith(lead) and len(text) > len(lead):
                return text[len(lead):]
        return text

    @contextlib.contextmanager
    def logging(self, verbose: bool) -> Iterator[None]:
        """While the stages run: their log records in the user's terms, their progress lines (INFO and
        below, about the cache) hidden unless ``verbose``, the runner's per-video failure line dropped
        (spot reports the failure as its own error)."""
        filt = _Rewrite(self, verbose)
        handlers = list(logging.getLogger().handlers)
        for h in handlers:
            h.addFilter(filt)
        try:
            yield
        finally:
            for h in handlers:
                h.removeFilter(filt)


class _Rewrite(logging.Filter):
    """The log filter of :meth:`UserTerms.logging`."""

    def __init__(self, terms: UserTerms, verbose: bool):
        super().__init__()
        self.terms = terms
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(_OWN_LOGGERS) or not record.name.startswith("pipeline"):
            return True
        if (record.name, record.msg) == _RUNNER_FAILED and not self.verbose:
            return False
        if record.levelno < logging.WARNING and not self.verbose:
            return False
        record.msg, record.args = self.terms(record.getMessage()), None
        return True
