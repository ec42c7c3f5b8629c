"""Which TV-L1 implementation runs on this machine, and what identifies the flow it computes.

:class:`FlowPlan` is the flow stage's settings for one run: the ``flow`` section validated
(:mod:`pipeline.tvl1.params`), ``flow.impl`` resolved (:func:`resolve_impl`), and the
identity every flow file carries in its attrs and (less the OpenCV version) its digest
(:func:`algorithm_identity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import cv2

from pipeline.errors import ConfigError
from pipeline.tvl1.opencv import opencv_remap_subpixel
from pipeline.tvl1.params import IMPLS, FlowParams, TVL1Params


def resolve_impl(impl: str, device: str = "auto") -> str:
    """``opencv`` or ``torch`` for the configured ``impl`` (``auto``: torch only with CUDA)."""
    if impl not in IMPLS:
        raise ConfigError(f"params.yaml: flow.impl '{impl}' must be one of {', '.join(IMPLS)}.")
    if impl != "auto":
        return impl
    import torch
    if device not in ("auto",) and not str(device).startswith("cuda"):
        return "opencv"
    return "torch" if torch.cuda.is_available() else "opencv"


def resolve_kernels(kernels: str, tvl1: TVL1Params, device: Any) -> str:
    """``triton`` or ``torch`` for the torch implementation (``auto``: Triton where it can run).

    The Triton kernel (:mod:`pipeline.tvl1.triton_solver`) runs each pair's own early-stop
    schedule on the GPU; the torch kernels (:mod:`pipeline.tvl1.kernels`) cover every
    parameter (``gamma != 0``, any median size) and the CPU. Both compute the same flow.
    """
    from pipeline.tvl1.triton_solver import supports

    if kernels == "torch":
        return "torch"
    why = supports(tvl1, device)
    if kernels == "triton" and why:
        raise ConfigError(f"params.yaml: flow.kernels is triton, but {why}. Set flow.kernels: auto or torch.")
    return "torch" if why else "triton"


def algorithm_identity(tvl1: TVL1Params, cfg: FlowParams, impl: str) -> dict[str, Any]:
    """What determines a flow file's values (the stage part of its digest and its attrs)."""
    ident: dict[str, Any] = {"impl": impl, "channel_order": cfg.channel_order, **tvl1.as_dict()}
    if impl == "torch":
        ident["remap_subpixel"] = (opencv_remap_subpixel() if cfg.remap_subpixel == "auto"
                                   else int(cfg.remap_subpixel))
    return ident


@dataclass(frozen=True)
class FlowPlan:
    """The flow stage's settings for one run, resolved from its params section."""

    section: dict[str, Any]
    cfg: FlowParams
    tvl1: TVL1Params
    impl: str
    ident: dict[str, Any]  # written to every file's attrs; the digest leaves out opencv_version

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "FlowPlan":
        """Validate the ``flow`` section (unknown keys refused) and resolve ``impl`` on this machine."""
        cfg = FlowParams.from_params(section, others=(TVL1Params,))
        tvl1 = TVL1Params.from_params(section, others=(FlowParams,))
        impl = resolve_impl(cfg.impl, cfg.device)
        ident = algorithm_identity(tvl1, cfg, impl)
        ident["opencv_version"] = cv2.__version__ if impl == "opencv" else None
        return cls(dict(section), cfg, tvl1, impl, ident)

    @property
    def digest_identity(self) -> dict[str, Any]:
        """The stage part of every flow file's digest: :attr:`ident` without ``opencv_version``."""
        return {k: v for k, v in self.ident.items() if k != "opencv_version"}
