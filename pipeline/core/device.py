"""Choosing the torch device: ``auto`` picks CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """Map ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` to a torch device, refusing absent CUDA."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device '{name}' was asked for but CUDA is not available on this machine: "
            "set device: auto (or cpu), or run on a machine with an NVIDIA GPU."
        )
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device '{name}' is not a valid torch device: use auto, cpu or cuda.") from exc
