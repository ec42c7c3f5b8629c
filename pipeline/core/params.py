"""Loading ``params.yaml`` and dataset presets, and merging per-dataset params.

``params.yaml`` holds one section per stage, and ``per_dataset: {<dataset>: {<stage>:
{key: value}}}``: values that replace stage params for that dataset only (the synthetic
presets' small crops and short TV-L1). Precedence, lowest first: the stage section, then
``per_dataset.<dataset>.<stage>`` (:func:`stage_params`); for ``train`` the model preset's
recipe comes first (its keys null in params). Both live in params.yaml, so ``dvc exp run -S``
sets either and DVC reruns the stage (dvc.yaml tracks both). :func:`stage_sources` says which
value came from where and which params.yaml value a per-dataset one shadows.

A dataset preset (``configs/datasets/<name>.yaml``) describes only where a dataset lives and
how it is laid out; one that still carries ``overrides:`` is refused (:func:`load_dataset`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipeline.core.section import reject_unknown
from pipeline.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
PRESET_DIR = Path("configs") / "datasets"
PER_DATASET = "per_dataset"
#: params.yaml's values as the repository ships them, with a comment on every knob
SHIPPED_PARAMS = Path("configs") / "params.reference.yaml"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error naming the file when it is missing or bad."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found. Run from the repository root or pass its path.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}). Fix the syntax.") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}.")
    return data


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Load the whole ``params.yaml``."""
    return read_yaml(path)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively with ``override`` (neither is modified)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def preset_path(name: str, preset_dir: str | Path = PRESET_DIR) -> Path:
    """Path of the dataset preset called ``name``."""
    return Path(preset_dir) / f"{name}.yaml"


def load_dataset(name: str, preset_dir: str | Path = PRESET_DIR) -> dict[str, Any]:
    """Load the dataset preset ``name``; ``name`` is also stored under the key ``name``."""
    path = preset_path(name, preset_dir)
    if not path.is_file():
        known = sorted(p.stem for p in Path(preset_dir).glob("*.yaml"))
        raise ConfigError(
            f"{path}: no preset for dataset '{name}'. Known presets: {', '.join(known) or 'none'}. "
            f"Create {path} or fix params.yaml: datasets."
        )
    preset = read_yaml(path)
    if "overrides" in preset:
        stages = ", ".join(map(str, preset["overrides"] or {})) or "none"
        raise ConfigError(
            f"{path}: 'overrides:' ({stages}) is no longer read from dataset presets. Move each "
            f"`overrides: <stage>: ...` to params.yaml `{PER_DATASET}: {name}: <stage>: ...` (same keys; "
            f"DVC tracks it there and `dvc exp run -S {PER_DATASET}.{name}.<stage>.<key>=...` sets it) "
            f"and delete 'overrides:' from {path}.")
    preset["name"] = name
    for key in ("layout", "root"):
        if key not in preset:
            raise ConfigError(f"{path}: missing key '{key}'. See configs/datasets/casme2.yaml for an example.")
    return preset


def dataset_layer(params: Mapping[str, Any], stage: str, name: str) -> dict[str, Any]:
    """``per_dataset.<name>.<stage>`` of ``params`` (empty when absent), checked to be a mapping
    whose stage names are sections of params.yaml."""
    per = params.get(PER_DATASET) or {}
    if not isinstance(per, Mapping):
        raise ConfigError(f"params.yaml: {PER_DATASET} must map dataset -> {{stage: {{key: value}}}}, "
                          f"got {type(per).__name__}.")
    entry = per.get(name) or {}
    where = f"params.yaml: {PER_DATASET}.{name}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must map stage -> {{key: value}}, got {type(entry).__name__}.")
    reject_unknown(entry, [k for k, v in params.items() if k != PER_DATASET and isinstance(v, Mapping)], where)
    layer = entry.get(stage)
    if layer is not None and not isinstance(layer, Mapping):
        raise ConfigError(f"{where}.{stage} must be a mapping of keys to values ({{}} for none), "
                          f"got {type(layer).__name__}.")
    return dict(layer or {})


def require_dataset_entry(params: Mapping[str, Any], stage: str, name: str) -> None:
    """Refuse a dataset listed in ``datasets`` (``synth_datasets`` for ``synth``) whose
    ``per_dataset.<name>.<stage>`` key is missing: dvc.yaml tracks it, so it must exist (``{}``: none).
    A command with no params section of its own (``overlap``, which runs crop and flow) needs none."""
    if stage not in params:
        return
    listed = params.get("synth_datasets" if stage == "synth" else "datasets") or []
    entry = (params.get(PER_DATASET) or {}).get(name) if isinstance(params.get(PER_DATASET), Mapping) else None
    if name in listed and not (isinstance(entry, Mapping) and stage in entry):
        raise ConfigError(
            f"params.yaml: {PER_DATASET}.{name}.{stage} is missing ('{name}' is listed in "
            f"{'synth_datasets' if stage == 'synth' else 'datasets'} and dvc.yaml tracks this key). Add "
            f"`{PER_DATASET}: {name}: {stage}: {{}}` to params.yaml ({{}}: the `{stage}` section as it is), "
            f"one such entry per stage, as for the other datasets there.")


def stage_params(params: Mapping[str, Any], stage: str, dataset: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The params of ``stage``: params.yaml's section with ``per_dataset.<dataset>.<stage>`` merged in."""
    if stage not in params:
        raise ConfigError(f"params.yaml: missing section '{stage}'. Restore it from the repository's params.yaml.")
    section = params[stage] or {}
    if dataset is not None:
        section = deep_merge(section, dataset_layer(params, stage, dataset["name"]))
    return dict(section)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` for every leaf of a nested mapping (an empty mapping is a leaf)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def _show(value: Any) -> str:
    """A value as written in YAML flow style (null, true, [1, 2]); a list of more than 4 shortened."""
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return f"[{_show(value[0])}, {_show(value[1])}, ..., {_show(value[-1])}] ({len(value)} values)"
    return json.dumps(value, default=str).replace('"', "")


def stage_sources(params: Mapping[str, Any], stage: str, dataset: Mapping[str, Any],
                  shipped: Mapping[str, Any] | None = None) -> tuple[str, str | None]:
    """(one INFO line saying where ``stage``'s effective params for ``dataset`` come from; one WARNING
    line naming every params.yaml value that a different ``per_dataset`` value shadows, or None).

    ``shipped``: the params as the repository ships them (``configs/params.reference.yaml``). A
    shadowed section value equal to the shipped one is the preset's intended choice, not a user's
    edit: the INFO line states it and nothing is warned. Without ``shipped`` every shadow is warned.
    """
    name = dataset["name"]
    base = flatten(params.get(stage) or {})
    layer = flatten(dataset_layer(params, stage, name))
    key = f"{PER_DATASET}.{name}.{stage}"
    own = len([k for k in base if k not in layer])
    info = f"{stage}@{name} params: {own} from params.yaml `{stage}`"
    info += (f"; from {key}: " + ", ".join(f"{k}={_show(v)}" for k, v in layer.items())) if layer \
        else f" (nothing in {key})"
    default = flatten((shipped or {}).get(stage) or {})
    shadowed = {k: v for k, v in layer.items() if k in base and base[k] != v
                and (shipped is None or k not in default or default[k] != base[k])}
    if not shadowed:
        return info, None
    if len(shadowed) == 1:
        (k, v), = shadowed.items()
        return info, (f"{stage}.{k}={_show(base[k])} in params.yaml `{stage}` is shadowed for {name} by {key}.{k}="
                      f"{_show(v)} (set it there instead, or delete it there to use `{stage}`'s)")
    return info, (f"params.yaml `{stage}` is shadowed for {name} by {key}: "
                  + ", ".join(f"{stage}.{k}={_show(base[k])} -> {_show(v)}" for k, v in shadowed.items())
                  + " (set them there instead, or delete them there to use `{stage}`'s)".replace("{stage}", stage))


def digest(obj: Any) -> str:
    """A stable SHA-256 hex digest of a JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
