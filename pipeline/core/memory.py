"""Sizing GPU batches from the device's free memory instead of fixed counts.

A stage whose batch knob is ``auto`` asks :func:`resolve_batch` for the number of items
(pairs, clips) of a given size that fit: the rule (:func:`batch_for_memory`, a pure function
of byte counts) takes the device's free memory, bounded by the stage's budget
(``<stage>.gpu_memory_gb``: the most the stage's process may hold on the device, the CUDA
context included), keeps :data:`MARGIN` of it for the allocator's rounding and fragmentation,
subtracts what the process already holds and any fixed cost, and divides by the bytes of one
item (modelled or measured by the caller). Too little memory for even one item is a
:class:`~pipeline.errors.ConfigError` naming the knob, not an out-of-memory error deep in a
kernel. The stages keep their halve-and-retry on a real out-of-memory error.

:func:`limit_process` caps PyTorch's caching allocator at the budget
(``torch.cuda.set_per_process_memory_fraction``, only ever lowered): past the cap the
allocator frees its unused cached blocks and retries before it reports out-of-memory, so
fragmentation cannot grow the process beyond the budget either.

On the CPU there is no device memory to size from: ``auto`` is the caller's CPU batch
(``cpu_batch``), a fixed number, so CPU runs are reproducible and their outputs identical.
Batch sizes never change what the stages compute (each promises batch-invariant results).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

GIB = 1 << 30
MIB = 1 << 20
#: share of the usable memory kept free for the allocator's rounding, fragmentation and kernel workspaces
MARGIN = 0.15
#: device memory the budget leaves to the CUDA context, kernel modules and libraries (outside the allocator)
CONTEXT_BYTES = 1 * GIB
#: the value of a batch knob that asks for sizing from free memory
AUTO = "auto"


@dataclass(frozen=True)
class DeviceMemory:
    """What one device has: ``free`` and ``total`` bytes (``free`` counts this process's unused cache),
    ``used`` bytes this process's allocator holds in live tensors, and ``cap`` the allocator's limit."""

    free: int
    total: int
    used: int = 0
    cap: int | None = None


def budget_bytes(budget_gb: float | None) -> int | None:
    """``<stage>.gpu_memory_gb`` in bytes (GiB), None for no budget; a budget not above the CUDA
    context's share is a ConfigError."""
    if budget_gb is None:
        return None
    budget = int(float(budget_gb) * GIB)
    if budget <= CONTEXT_BYTES:
        raise ConfigError(f"gpu_memory_gb = {budget_gb} leaves nothing for the stage: the CUDA context alone "
                          f"takes about {CONTEXT_BYTES / GIB:.0f} GiB. Set it higher, or null for all free memory.")
    return budget


def batch_for_memory(free: int, total: int, per_item: int, *, budget: int | None = None, used: int = 0,
                     fixed: int = 0, margin: float = MARGIN, limit: int | None = None, param: str = "batch",
                     item: str = "item") -> int:
    """The most items of ``per_item`` bytes that fit the device, by the module's rule.

    ``usable = min(free, budget - CONTEXT_BYTES - used, total) * (1 - margin) - fixed``, then
    ``usable // per_item`` items, at most ``limit``. ``free`` and ``total`` are the device's
    bytes (:func:`device_memory`), ``budget`` the most the process may hold (None: no bound but
    the device), ``used`` what it holds already, ``fixed`` bytes the batch needs whatever its size.
    Raises ConfigError naming ``param`` when not even one item fits.
    """
    if per_item <= 0:
        raise ValueError(f"per_item must be a positive number of bytes, got {per_item}")
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    room = min(free, total)
    if budget is not None:
        room = min(room, budget - CONTEXT_BYTES - used)
    usable = int(max(room, 0) * (1.0 - margin)) - int(fixed)
    n = usable // int(per_item) if usable > 0 else 0
    if n < 1:
        bound = f" of the {budget / GIB:.1f} GiB budget" if budget is not None else ""
        raise ConfigError(
            f"{param}: auto: one {item} needs {per_item / MIB:.1f} MiB (+ {fixed / MIB:.0f} MiB fixed) but only "
            f"{max(usable + int(fixed), 0) / MIB:.0f} MiB{bound} are usable (device: {free / MIB:.0f} MiB free of "
            f"{total / MIB:.0f}; this process holds {used / MIB:.0f}). Free the GPU (other processes), raise "
            "gpu_memory_gb, or set a number for it.")
    return int(min(n, limit)) if limit else int(n)


def device_memory(device: Any) -> DeviceMemory | None:
    """Free/total bytes of a CUDA ``device`` (``torch.cuda.mem_get_info``) and this process's use; None on the CPU.

    Cached blocks the allocator holds but no tensor uses count as free (the allocator reuses them),
    and a cap set by ``set_per_process_memory_fraction`` bounds the free bytes.
    """
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    reserved, allocated = torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)
    free += reserved - allocated
    cap = None
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if get_fraction is not None:
        fraction = float(get_fraction(device))
        if fraction < 1.0:
            cap = int(fraction * total)
            free = min(free, cap - allocated)
    return DeviceMemory(free=int(free), total=int(total), used=int(allocated), cap=cap)


def limit_process(device: Any, budget: int | None) -> None:
    """Cap the caching allocator of ``device`` at ``budget`` bytes less :data:`CONTEXT_BYTES` (CUDA only;
    never raises a cap already lower, e.g. one a test set)."""
    import torch

    device = torch.device(device)
    if budget is None or device.type != "cuda":
        return
    total = torch.cuda.mem_get_info(device)[1]
    fraction = min(1.0, (budget - CONTEXT_BYTES) / total)
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if get_fraction is not None and float(get_fraction(device)) <= fraction:
        return
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    log.info("GPU memory of this process capped at %.1f GiB of %.1f (gpu_memory_gb less the CUDA context)",
             fraction * total / GIB, total / GIB)


def resolve_batch(value: int | str, device: Any, per_item: int, *, budget_gb: float | None, cpu_batch: int,
                  param: str, item: str = "item", fixed: int = 0, limit: int | None = None,
                  memory: DeviceMemory | None = None) -> int:
    """The batch for a knob ``value``: a number as it is; ``auto`` sized by :func:`batch_for_memory` from the
    device's memory (``memory``, default :func:`device_memory`), or ``cpu_batch`` on the CPU."""
    if value != AUTO:
        return int(value)
    if memory is None:
        memory = device_memory(device)
    if memory is None:
        return int(cpu_batch)
    budget = budget_bytes(budget_gb)
    if memory.cap is not None:
        budget = memory.cap + CONTEXT_BYTES if budget is None else min(budget, memory.cap + CONTEXT_BYTES)
    n = batch_for_memory(memory.free, memory.total, per_item, budget=budget, used=memory.used, fixed=fixed,
                         limit=limit, param=param, item=item)
    log.info("%s: auto -> %d (%.1f MiB per %s; %.1f GiB free of %.1f%s)", param, n, per_item / MIB, item,
             memory.free / GIB, memory.total / GIB, f", budget {budget / GIB:.1f} GiB" if budget else "")
    return n
