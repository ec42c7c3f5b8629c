"""The crop section: defaults, conversion, choices, bounds, and unknown keys refused with the closest match."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from pipeline.cropping.params import NOT_IN_DIGEST, VERSION, CropParams
from pipeline.errors import ConfigError

# the defaults before CropParams became a Section; they enter every faces file's digest
DEFAULTS = {
    "size": 224, "detector": "hog", "upsample": 0, "min_score": 0.3, "detect_max_side": 640, "search_frames": 30,
    "margin_top": 0.3, "margin_bottom": 0.05, "margin_side": 0.1, "mode": "fixed", "track_every": 30,
    "track_threshold": 0.1, "pad": "constant", "reduced_decode": True, "region_decode": True,
    "interpolation": "auto", "on_bad_frame": "fail", "max_repeat_fraction": 0.05, "min_frames": 9, "threads": 2,
    "batch": 64, "compression": "blosc-lz4", "compression_level": None, "chunk_frames": 8, "models_dir": None,
}


def test_defaults_and_digest_constants_are_unchanged() -> None:
    values = asdict(CropParams.from_params({}))
    assert list(values) == list(DEFAULTS)
    assert all(type(values[k]) is type(v) and values[k] == v for k, v in DEFAULTS.items())
    assert asdict(CropParams()) == values and CropParams().as_params() == values
    assert VERSION == 1 and NOT_IN_DIGEST == ("region_decode",)


def test_values_are_converted_to_the_field_types() -> None:
    p = CropParams.from_params({"threads": "3", "margin_top": 1, "models_dir": "m", "compression_level": "null",
                                "reduced_decode": False})
    assert p.threads == 3 and p.margin_top == 1.0 and type(p.margin_top) is float
    assert p.models_dir == "m" and p.compression_level is None and p.reduced_decode is False
    for key, value in (("size", 2.5), ("size", True), ("reduced_decode", "yes")):
        with pytest.raises(ConfigError, match=f"crop.{key} = .* is invalid"):
            CropParams.from_params({key: value})


def test_params_are_validated() -> None:
    assert CropParams.from_params({"size": 112}).size == 112
    with pytest.raises(ConfigError, match="unknown key.*sise"):
        CropParams.from_params({"sise": 1})
    with pytest.raises(ConfigError, match="crop.mode = 'wobble'"):
        CropParams.from_params({"mode": "wobble"})
    with pytest.raises(ConfigError, match="crop.size"):
        CropParams.from_params({"size": 0})
    with pytest.raises(ConfigError, match="crop.size = 'big'"):
        CropParams.from_params({"size": "big"})
    with pytest.raises(ConfigError, match="crop.margin_top must be at least 0, got -0.1"):
        CropParams.from_params({"margin_top": -0.1})
    with pytest.raises(ConfigError, match="crop.detector = 'mtcnn' is not one of hog, cnn"):
        CropParams.from_params({"detector": "mtcnn"})


def test_unknown_key_names_the_closest_known_key() -> None:
    with pytest.raises(ConfigError, match=r"params.yaml: crop.sise \(did you mean size\?\)") as info:
        CropParams.from_params({"sise": 96})
    assert "Known keys of params.yaml: crop:" in str(info.value) and "chunk_frames" in str(info.value)


def test_compression_params_are_checked() -> None:
    assert CropParams.from_params({"compression_level": None}).compression_level is None
    assert CropParams.from_params({"compression": "blosc-zstd", "compression_level": 4}).compression_level == 4
    with pytest.raises(ConfigError, match="compression = 'zip' is not one of blosc-lz4, blosc-zstd, lzf, gzip"):
        CropParams.from_params({"compression": "zip"})
    with pytest.raises(ConfigError, match="compression_level must be at most 9, got 12"):
        CropParams.from_params({"compression_level": 12})
    with pytest.raises(ConfigError, match="compression_level must be at least 0, got -1"):
        CropParams.from_params({"compression_level": -1})


