"""One way to declare and validate a section of ``params.yaml``.

Every stage (and ``m2es spot``) declares its section as a frozen dataclass deriving from
:class:`Section`, one field per key, each made with :func:`knob`::

    @dataclass(frozen=True)
    class CropParams(Section):
        SECTION = "crop"
        size: int = knob(224, min=1)
        detector: str = knob("hog", choices=("hog", "cnn"))
        models_dir: str | None = knob(None)

    p = CropParams.from_params(ctx.section())

:meth:`Section.from_params` runs once, on the driver, before the stage reads any input:

* a key no field declares is refused with its key path, the closest known key ("did you
  mean ...?") and every allowed name;
* each value is converted to the field's type (``int`` refuses 2.5 and ``true``, ``bool``
  takes only true/false, ``str`` refuses true/false (YAML's ``yes``/``off``), ``X | None``
  takes null) and checked against the knob's ``choices`` (null always passes an optional
  field) and ``min``/``max``;
* :meth:`Section.check` then runs the checks that involve several keys.

A key whose YAML name is not a Python name (``lambda``) sets ``key=``. A section read by two
declarations (``flow``: the TV-L1 algorithm and the stage's own knobs) passes the other one
as ``others`` so that each accepts the other's keys.
"""

from __future__ import annotations

import collections.abc
import copy
import difflib
import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Iterable, Mapping, Sequence, TypeVar

from pipeline.errors import ConfigError

S = TypeVar("S", bound="Section")

_META = "m2es_knob"


def knob(default: Any, *, choices: Sequence[Any] | None = None, min: float | None = None,  # noqa: A002
         max: float | None = None, key: str | None = None) -> Any:  # noqa: A002
    """A field of a :class:`Section`: its default, allowed values (``choices``), bounds
    (``min``/``max``, inclusive) and, where it differs from the field name, its params key."""
    meta = {_META: {"choices": tuple(choices) if choices is not None else None, "min": min, "max": max,
                    "key": key}}
    if isinstance(default, (list, dict, set)):
        value = copy.deepcopy(default)
        return field(default_factory=lambda: copy.deepcopy(value), metadata=meta)  # nested values not shared
    return field(default=default, metadata=meta)


def close_match(key: str, known: Iterable[str]) -> str | None:
    """The known key closest to ``key`` (a likely typo), or None."""
    found = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return found[0] if found else None


def reject_unknown(section: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Refuse keys that no code reads (a typo would otherwise be ignored), naming the closest known key."""
    known = sorted(set(known))
    unknown = sorted(set(map(str, section)) - set(known))  # YAML allows non-string keys (1: x, true: y)
    if not unknown:
        return
    hints = []
    for key in unknown:
        near = close_match(str(key), known)
        hints.append(f"{where}.{key}" + (f" (did you mean {near}?)" if near else ""))
    raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints)}. "
                      f"Known keys of {where}: {', '.join(known)}.")


def _is_optional(tp: Any) -> tuple[bool, Any]:
    """(whether ``tp`` admits None, the type without None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return len(args) < len(typing.get_args(tp)), (args[0] if len(args) == 1 else typing.Union[tuple(args)])
    return False, tp


def convert(value: Any, tp: Any, path: str) -> Any:
    """``value`` as type ``tp`` (see the module docstring), or a ConfigError naming ``path``."""
    optional, base = _is_optional(tp)
    if value is None or (optional and value in ("", "null")):
        if optional or base is Any:
            return None
        raise ConfigError(f"{path} must be set (got null).")
    origin = typing.get_origin(base) or base
    try:
        if base is Any or origin in (typing.Union, types.UnionType):
            return value
        if base is bool:
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if base is int:
            return _to_int(value)
        if base is float:
            if isinstance(value, (bool, Mapping, list, tuple)):
                raise ValueError("expected a number")
            return float(value)
        if base is str:
            if isinstance(value, (bool, Mapping, list, tuple)):  # `yes`/`off` in YAML are booleans, not text
                raise ValueError("expected a string")
            return str(value)
        if origin in (list, tuple, collections.abc.Sequence):
            if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
                raise ValueError("expected a list")
            return origin(value) if origin in (list, tuple) else list(value)
        if origin in (dict, collections.abc.Mapping):
            if not isinstance(value, Mapping):
                raise ValueError("expected a mapping")
            return dict(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{path} = {value!r} is invalid ({exc}).") from None
    return value


def _to_int(value: Any) -> int:
    """``value`` as an int: an int, a whole float (3.0) or a numeric string; never a bool, 2.5, inf or nan."""
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, int):
        return value  # exact, also beyond 2**53
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    number = float(value)
    if not math.isfinite(number) or not number.is_integer():
        raise ValueError("expected an integer")
    return int(number)


def _in_choices(value: Any, choices: Sequence[Any]) -> bool:
    """Whether ``value`` is one of ``choices``; true/false never stand for 1/0."""
    return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in choices)


@dataclass(frozen=True)
class Section:
    """Base of every params section declaration (see the module docstring)."""

    SECTION: ClassVar[str] = ""

    @classmethod
    def keys(cls) -> dict[str, str]:
        """params key -> field name, for every field."""
        return {(f.metadata.get(_META) or {}).get("key") or f.name: f.name for f in fields(cls)}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """params key -> default value."""
        out = {}
        for f in fields(cls):
            key = (f.metadata.get(_META) or {}).get("key") or f.name
            out[key] = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        return out

    @classmethod
    def from_params(cls: type[S], section: Mapping[str, Any] | None, where: str | None = None,
                    others: Iterable[type["Section"]] = ()) -> S:
        """Validate ``section`` and build the declaration (missing keys take their defaults)."""
        where = where or f"params.yaml: {cls.SECTION}"
        if section is not None and not isinstance(section, Mapping):
            raise ConfigError(f"{where} must be a mapping of keys to values, got {type(section).__name__}.")
        section = dict(section or {})
        keys = cls.keys()
        reject_unknown(section, set(keys).union(*(o.keys() for o in others)), where)
        hints = typing.get_type_hints(cls)
        by_name = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, name in keys.items():
            if key not in section:
                continue
            path = f"{where}.{key}"
            value = convert(section[key], hints[name], path)
            meta = by_name[name].metadata.get(_META) or {}
            if meta.get("choices") is not None and value is not None and not _in_choices(value, meta["choices"]):
                raise ConfigError(f"{path} = {value!r} is not one of {', '.join(map(str, meta['choices']))}.")
            if value is not None and not isinstance(value, (str, bool)) and isinstance(value, (int, float)):
                if meta.get("min") is not None and value < meta["min"]:
                    raise ConfigError(f"{path} must be at least {meta['min']}, got {value}.")
                if meta.get("max") is not None and value > meta["max"]:
                    raise ConfigError(f"{path} must be at most {meta['max']}, got {value}.")
            values[name] = value
        out = cls(**values)
        out.check(where)
        return out

    def check(self, where: str) -> None:
        """Checks that involve several keys (override; raise ConfigError naming ``where.<key>``)."""

    def as_params(self) -> dict[str, Any]:
        """The values under their params keys."""
        return {key: getattr(self, name) for key, name in self.keys().items()}
