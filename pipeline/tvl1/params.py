"""The ``flow`` section of ``params.yaml``: the TV-L1 algorithm (:class:`TVL1Params`) and the
stage's own knobs (:class:`FlowParams`).

Both read the same section, each passing the other as ``others`` so that the union of
their keys is what the section may hold (``flow.imp`` is refused: "did you mean impl?")::

    tvl1 = TVL1Params.from_params(section, others=(FlowParams,))
    cfg = FlowParams.from_params(section, others=(TVL1Params,))

:class:`TVL1Params` is shared by every backend (``opencv``: :mod:`pipeline.tvl1.opencv`;
``torch``: :mod:`pipeline.tvl1.solver` and its Triton kernels); its defaults are OpenCV's
(``cv2.optflow.DualTVL1OpticalFlow_create()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.memory import AUTO, budget_bytes
from pipeline.core.section import Section, knob
from pipeline.errors import ConfigError

#: ``flow.impl``: the implementations of the same algorithm (``auto``: torch with CUDA, opencv otherwise)
IMPLS = ("opencv", "torch", "auto")
#: ``flow.kernels``: the torch implementation's kernels
KERNELS = ("auto", "triton", "torch")
#: ``flow.triton_warps``: warps per Triton program
TRITON_WARPS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class TVL1Params(Section):
    """Every parameter of OpenCV's ``DualTVL1OpticalFlow`` (defaults = OpenCV's).

    Checked when built (directly or by :meth:`from_params`): a value OpenCV would refuse, or
    one the flow stage does not support, is a :class:`ConfigError`.
    """

    SECTION = "flow"

    tau: float = knob(0.25)
    lambda_: float = knob(0.15, key="lambda")
    theta: float = knob(0.3)
    nscales: int = knob(5)
    warps: int = knob(5)
    epsilon: float = knob(0.01)
    inner_iterations: int = knob(30)
    outer_iterations: int = knob(10)
    scale_step: float = knob(0.8)
    gamma: float = knob(0.0)
    median_filtering: int = knob(5)
    use_initial_flow: bool = knob(False)

    def __post_init__(self) -> None:
        self.check(f"params.yaml: {self.SECTION}")

    def check(self, where: str) -> None:
        """Refuse values OpenCV asserts on, and ``use_initial_flow`` (the stage starts every pair from zero)."""
        checks = [
            (self.tau > 0, "tau", "must be > 0 (OpenCV default 0.25)"),
            (self.lambda_ > 0, "lambda", "must be > 0 (OpenCV default 0.15)"),
            (self.theta > 0, "theta", "must be > 0 (OpenCV default 0.3)"),
            (self.nscales >= 1, "nscales", "must be >= 1 (OpenCV default 5)"),
            (self.warps >= 1, "warps", "must be >= 1 (OpenCV default 5)"),
            (self.epsilon >= 0, "epsilon", "must be >= 0 (OpenCV default 0.01)"),
            (self.inner_iterations >= 1, "inner_iterations", "must be >= 1 (OpenCV default 30)"),
            (self.outer_iterations >= 1, "outer_iterations", "must be >= 1 (OpenCV default 10)"),
            (0 < self.scale_step < 1, "scale_step", "must be in (0, 1) (OpenCV default 0.8)"),
            (self.gamma >= 0, "gamma", "must be >= 0 (OpenCV default 0)"),
            (self.median_filtering in (0, 1, 3, 5), "median_filtering", "must be 0/1 (off), 3 or 5 "
             "(cv::medianBlur on float images supports 3 and 5; OpenCV default 5)"),
            (not self.use_initial_flow, "use_initial_flow", "must be false: the flow stage computes every "
             "pair from zero flow, as the published recipe does"),
        ]
        for ok, key, message in checks:
            if not ok:
                raise ConfigError(f"{where}.{key} {message}.")

    def iteration_constants(self) -> tuple[float, float, float, float]:
        """``(l_t, theta, taut, gamma)`` rounded to float32, as OpenCV's iteration uses them.

        ``l_t = lambda * theta`` and ``taut = tau / theta`` are computed in double and cast.
        """
        return (float(np.float32(self.lambda_ * self.theta)), float(np.float32(self.theta)),
                float(np.float32(self.tau / self.theta)), float(np.float32(self.gamma)))

    def scaled_epsilon(self, pixels: int) -> float:
        """OpenCV's stopping threshold ``epsilon^2 * pixels`` for a level of ``pixels``, as float32."""
        return float(np.float32(self.epsilon ** 2 * pixels))

    def as_dict(self) -> dict[str, Any]:
        """The parameters under their params.yaml names, in declaration order (for HDF5 attrs and digests)."""
        return self.as_params()


#: params.yaml key -> TVL1Params field (``lambda`` is a Python keyword)
PARAM_KEYS: dict[str, str] = TVL1Params.keys()


@dataclass(frozen=True)
class FlowParams(Section):
    """The non-algorithmic knobs of the ``flow`` section (implementation, speed, storage; the flow
    values depend only on ``channel_order``, ``remap_subpixel`` and the resolved ``impl``)."""

    SECTION = "flow"

    impl: str = knob("auto", choices=IMPLS)
    channel_order: str = knob("rgb", choices=("rgb", "bgr"))
    device: str = knob("auto")
    batch_pairs: int | str = knob("auto", min=1)   # a number, or auto: sized to gpu_memory_gb (pipeline.core.memory)
    gpu_memory_gb: float | None = knob(20.0, min=0)
    kernels: str = knob("auto", choices=KERNELS)
    triton_block: int = knob(256)
    triton_warps: int = knob(4)
    compile: bool = knob(True)
    cuda_graphs: bool = knob(True)
    check_every: int = knob(10, min=1)
    remap_subpixel: str | int = knob("auto", choices=("auto", 0, 32))
    compression: str | None = knob(None, choices=(None, "lzf", "gzip"))
    debug_oom_above_batch: int = knob(0)

    def check(self, where: str) -> None:
        """``batch_pairs`` a number or auto; the Triton launch shape: a power-of-two block of at least 32 pixels
        and 1-16 warps."""
        bp = self.batch_pairs
        if bp != AUTO and (isinstance(bp, bool) or not isinstance(bp, int)):
            raise ConfigError(f"{where}.batch_pairs must be a number of pairs (>= 1) or auto, got {bp!r}.")
        try:
            budget_bytes(self.gpu_memory_gb)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None
        tb = int(self.triton_block)
        if tb < 32 or tb & (tb - 1) or int(self.triton_warps) not in TRITON_WARPS:
            raise ConfigError(f"{where}.triton_block must be a power of two >= 32 and {where}.triton_warps "
                              f"one of 1, 2, 4, 8, 16 (got {self.triton_block}, {self.triton_warps}).")
