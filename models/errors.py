"""Errors of the networks: a bad model preset, weights file or checkpoint.

``models/`` imports nothing from ``pipeline``, so these do not derive from
``pipeline.errors.M2esError``; the pipeline treats them as user errors all the same
(every message names the file or preset at fault and says what to do). Both derive from
``ValueError`` too, so plain callers of the networks can catch them without this module.
"""

from __future__ import annotations


class ModelError(Exception):
    """A problem with a model's configuration or files that the user can fix."""


class ModelConfigError(ModelError, ValueError):
    """A model preset, block argument, backbone or weights file is missing or invalid."""


class ModelInputError(ModelError, ValueError):
    """A checkpoint is missing, unreadable or does not fit the model its preset builds."""
