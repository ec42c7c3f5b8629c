"""User-facing errors: every bad input ends in one of these, never in a deep traceback."""

from __future__ import annotations


class M2esError(Exception):
    """An error caused by input or configuration that the user can fix.

    The message must name the file (or video) at fault and say what to do.
    Stage entry points catch it, log the message as one line and exit with code 2.
    """


class InputError(M2esError):
    """A dataset file, table or frame is missing, malformed or inconsistent."""


class ConfigError(M2esError):
    """A parameter or preset is missing or has an invalid value."""


class NoFaceFound(InputError):
    """The face detector found no face in the frames it searched (crop stage)."""


class StageFailed(M2esError):
    """Some videos of a stage failed; ``failures`` maps video name to reason.

    ``kinds`` maps a failed video to the class name of its error (``"NoFaceFound"``,
    ``"InputError"``, ...), so callers can tell failures apart without parsing messages,
    also when the error was raised in a worker process.
    """

    def __init__(self, stage: str, failures: dict[str, str], kinds: dict[str, str] | None = None):
        self.stage = stage
        self.failures = dict(failures)
        self.kinds = dict(kinds or {})
        lines = [f"{stage}: {len(self.failures)} video(s) failed:"]
        lines += [f"  {video}: {reason}" for video, reason in sorted(self.failures.items())]
        lines.append("  Completed videos were kept; fix the inputs above and rerun to resume.")
        super().__init__("\n".join(lines))
