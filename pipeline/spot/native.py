"""Native decoder noise kept off the terminal.

Decoders written in C (FFmpeg inside decord, decord's own ``LOG`` lines with its source paths) write to
file descriptor 2 directly, before spot's own message about the same problem. :func:`quiet_native_stderr`
catches what they write around one call (opening an input to probe it) and logs it at debug level;
:func:`quiet_decoders` lowers FFmpeg's log level while spot decodes. Failures still reach the user as
spot's own messages (the decoders raise).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

import decord

log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Catch what native code writes to file descriptor 2 during the block; log it at debug level.

    Python's own writes to ``sys.stderr`` in the block are caught too: keep the block to one native call.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if line.strip():
                    log.debug("decoder: %s", line)


@contextlib.contextmanager
def quiet_decoders(verbose: bool) -> Iterator[None]:
    """FFmpeg's messages inside decord (``[mpeg4 @ 0x...] header damaged``) silenced during the block,
    unless ``verbose``; decode failures still raise and are reported by spot. decord's level is
    process-wide and cannot be read back: it is set back to decord's default (errors) after."""
    if verbose:
        yield
        return
    decord.logging.set_level(decord.logging.QUIET)
    try:
        yield
    finally:
        decord.logging.set_level(decord.logging.ERROR)
