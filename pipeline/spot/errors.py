"""Exit codes of ``m2es spot`` and the errors that carry them.

* ``0`` (:data:`EXIT_OK`): every input spotted, outputs written;
* ``1`` (:data:`EXIT_BUG`): unexpected internal error (a bug; the traceback is logged);
* ``2`` (:data:`EXIT_INPUT`): bad input or usage (:class:`SpotError`, and any other
  :class:`~pipeline.errors.M2esError` such as a bad params file, or
  :class:`~models.errors.ModelError` such as a bad weights file);
* ``3`` (:data:`EXIT_NO_FACE`): no face found in the input (:class:`NoFaceError`);
* ``4`` (:data:`EXIT_MODEL`): model problem (:class:`ModelMismatch`);
* ``130`` (:data:`EXIT_INTERRUPTED`): interrupted (Ctrl-C), as shells report a process ended by SIGINT.
"""

from __future__ import annotations

from models.errors import ModelError
from pipeline.errors import M2esError

EXIT_OK = 0
EXIT_BUG = 1
EXIT_INPUT = 2
EXIT_NO_FACE = 3
EXIT_MODEL = 4
EXIT_INTERRUPTED = 130


class SpotError(M2esError):
    """A user-fixable problem with one input or the options; ``exit_code`` is the CLI's."""

    exit_code = EXIT_INPUT


class NoFaceError(SpotError):
    """The face detector found no face in the input."""

    exit_code = EXIT_NO_FACE


class ModelMismatch(SpotError):
    """The model cannot be used on the features spot would compute (or is not a model)."""

    exit_code = EXIT_MODEL


def exit_code_of(exc: BaseException) -> int:
    """The documented exit code of an exception (1 for anything unexpected)."""
    if isinstance(exc, SpotError):
        return exc.exit_code
    if isinstance(exc, (M2esError, ModelError)):  # user errors of the pipeline and of the networks
        return EXIT_INPUT
    return EXIT_BUG
