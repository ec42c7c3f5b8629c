"""pipeline.core.section: one declaration per params section, checked before any input is read."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass
from typing import Any, Mapping, Sequence

import pytest

from pipeline.core.section import Section, close_match, convert, knob, reject_unknown
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Demo(Section):
    """A section with one knob of every kind."""

    SECTION = "demo"

    size: int = knob(224, min=1, max=4096)
    rate: float = knob(0.5, min=0.0, max=1.0)
    enabled: bool = knob(False)
    mode: str = knob("fast", choices=("fast", "slow"))
    codec: str | None = knob(None, choices=("lzf", "gzip"))
    level: int | None = knob(None, min=0, max=9)
    lambda_: float = knob(0.15, key="lambda")
    sizes: list[int] = knob([1, 2])
    nested: dict = knob({"a": {"b": 1}})
    seq: Sequence[int] = knob((1,))
    mapping: Mapping[str, Any] | None = knob(None)
    either: float | list[float] = knob(2)

    def check(self, where: str) -> None:
        if self.level is not None and self.codec is None:
            raise ConfigError(f"{where}.level needs a codec.")


@dataclass(frozen=True)
class Other(Section):
    """A second declaration of the same section (as flow's algorithm and stage knobs)."""

    SECTION = "demo"

    extra: int = knob(0)


def test_defaults_and_overrides() -> None:
    d = Demo.from_params(None)
    assert (d.size, d.rate, d.enabled, d.mode, d.codec, d.lambda_) == (224, 0.5, False, "fast", None, 0.15)
    d = Demo.from_params({"size": 96, "lambda": 0.3, "enabled": True})
    assert (d.size, d.lambda_, d.enabled) == (96, 0.3, True)
    assert Demo.keys()["lambda"] == "lambda_" and "lambda_" not in Demo.keys()
    assert Demo.defaults()["lambda"] == 0.15
    assert d.as_params()["lambda"] == 0.3 and "lambda_" not in d.as_params()
    with pytest.raises(FrozenInstanceError):
        d.size = 1  # type: ignore[misc]


def test_unknown_key_names_the_closest_match_and_every_known_key() -> None:
    with pytest.raises(ConfigError, match=r"params\.yaml: demo\.sise \(did you mean size\?\)") as exc:
        Demo.from_params({"sise": 3})
    assert "Known keys of params.yaml: demo:" in str(exc.value) and "lambda" in str(exc.value)
    with pytest.raises(ConfigError, match=r"unknown key x\.zzzz\. Known"):  # nothing close: no guess
        Demo.from_params({"zzzz": 1}, where="x")
    with pytest.raises(ConfigError, match=r"unknown keys .*lamda \(did you mean lambda\?\).*moed"):
        Demo.from_params({"lamda": 1, "moed": "fast"})
    with pytest.raises(ConfigError, match=r"did you mean lambda\?"):  # the field name is not a key
        Demo.from_params({"lambda_": 1})
    with pytest.raises(ConfigError, match=r"demo\.1"):  # YAML keys need not be strings
        Demo.from_params({1: 2})


def test_others_accept_each_others_keys() -> None:
    with pytest.raises(ConfigError, match="extra"):
        Demo.from_params({"extra": 1})
    assert Demo.from_params({"extra": 1, "size": 3}, others=[Other]).size == 3
    assert Other.from_params({"extra": 1, "size": 3}, others=[Demo]).extra == 1


@pytest.mark.parametrize("value", [2.5, True, False, "two", [1], float("inf"), float("nan"), None])
def test_int_refuses_fractions_booleans_and_null(value) -> None:
    with pytest.raises(ConfigError, match=r"demo\.size"):
        Demo.from_params({"size": value})


def test_int_takes_whole_numbers_exactly() -> None:
    assert Demo.from_params({"size": 3.0}).size == 3
    assert Demo.from_params({"size": "12"}).size == 12
    big = 2**60 + 1
    assert convert(big, int, "k") == big  # not through a float


@pytest.mark.parametrize("value", [1, 0, "true", "yes", None])
def test_bool_is_strict(value) -> None:
    with pytest.raises(ConfigError, match=r"demo\.enabled"):
        Demo.from_params({"enabled": value})


def test_float_and_str() -> None:
    assert Demo.from_params({"rate": 1}).rate == 1.0 and isinstance(Demo.from_params({"rate": 1}).rate, float)
    assert Demo.from_params({"rate": "1e-3"}).rate == 0.001  # YAML reads 1e-3 as a string
    with pytest.raises(ConfigError, match=r"demo\.rate"):
        Demo.from_params({"rate": True})
    with pytest.raises(ConfigError, match=r"demo\.mode = False is invalid"):  # YAML `mode: off`
        Demo.from_params({"mode": False})


def test_optional_accepts_null() -> None:
    assert Demo.from_params({"codec": None, "level": None, "mapping": None}).codec is None
    assert Demo.from_params({"level": "null", "codec": "lzf"}).level is None
    assert Demo.from_params({"level": 3, "codec": "gzip"}).level == 3
    with pytest.raises(ConfigError, match=r"demo\.mode must be set \(got null\)"):
        Demo.from_params({"mode": None})


def test_choices() -> None:
    assert Demo.from_params({"mode": "slow"}).mode == "slow"
    with pytest.raises(ConfigError, match=r"demo\.mode = 'medium' is not one of fast, slow"):
        Demo.from_params({"mode": "medium"})
    with pytest.raises(ConfigError, match=r"demo\.codec = 'zstd' is not one of lzf, gzip"):
        Demo.from_params({"codec": "zstd"})


def test_choices_never_take_a_boolean_for_a_number() -> None:
    @dataclass(frozen=True)
    class Sub(Section):
        SECTION = "s"
        remap: str | int = knob("auto", choices=("auto", 0, 32))

    assert Sub.from_params({"remap": 0}).remap == 0
    with pytest.raises(ConfigError, match="is not one of"):
        Sub.from_params({"remap": False})


def test_min_and_max_are_inclusive() -> None:
    assert Demo.from_params({"size": 1}).size == 1 and Demo.from_params({"size": 4096}).size == 4096
    assert Demo.from_params({"rate": 0}).rate == 0.0 and Demo.from_params({"rate": 1.0}).rate == 1.0
    with pytest.raises(ConfigError, match=r"demo\.size must be at least 1, got 0"):
        Demo.from_params({"size": 0})
    with pytest.raises(ConfigError, match=r"demo\.rate must be at most 1\.0, got 1\.5"):
        Demo.from_params({"rate": 1.5})
    with pytest.raises(ConfigError, match=r"demo\.level must be at most 9"):
        Demo.from_params({"level": 10, "codec": "lzf"})


def test_lists_and_mappings() -> None:
    d = Demo.from_params({"sizes": (3, 4), "seq": [5], "mapping": {"k": 1}, "nested": {"x": 1}})
    assert d.sizes == [3, 4] and d.seq == [5] and d.mapping == {"k": 1} and d.nested == {"x": 1}
    with pytest.raises(ConfigError, match=r"demo\.sizes = 'ab' is invalid \(expected a list\)"):
        Demo.from_params({"sizes": "ab"})
    with pytest.raises(ConfigError, match=r"demo\.seq .*expected a list"):  # typing.Sequence is checked too
        Demo.from_params({"seq": 3})
    with pytest.raises(ConfigError, match=r"demo\.mapping .*expected a mapping"):  # and typing.Mapping
        Demo.from_params({"mapping": [1]})
    with pytest.raises(ConfigError, match=r"demo\.nested .*expected a mapping"):
        Demo.from_params({"nested": 3})
    assert Demo.from_params({"either": [1, 2]}).either == [1, 2]  # a union is left to check()


def test_mutable_defaults_are_not_shared() -> None:
    a, b = Demo.from_params({}), Demo.from_params({})
    a.nested["a"]["b"] = 99
    a.sizes.append(3)
    assert b.nested == {"a": {"b": 1}} and b.sizes == [1, 2]
    assert Demo.from_params({}).nested == {"a": {"b": 1}}


def test_check_runs_after_conversion_and_section_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"params\.yaml: demo\.level needs a codec"):
        Demo.from_params({"level": 2})
    with pytest.raises(ConfigError, match=r"params\.yaml: demo must be a mapping"):
        Demo.from_params([1, 2])  # type: ignore[arg-type]


def test_helpers() -> None:
    assert close_match("iou_treshold", ["iou_threshold", "timelines"]) == "iou_threshold"
    assert close_match("zzz", ["iou_threshold"]) is None
    reject_unknown({"a": 1}, ["a", "b"], "w")
    with pytest.raises(ConfigError, match=r"w\.c \(did you mean b\?\)|w\.c"):
        reject_unknown({"c": 1}, ["a", "b"], "w")
