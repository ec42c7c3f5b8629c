"""The numerical building blocks of Dual TV-L1 in PyTorch, written to match OpenCV.

Every function works on a batch of images ``[B, H, W]`` (or ``[B, C, H, W]`` where
noted) in float32 and reproduces one routine of OpenCV's ``optflow/tvl1flow.cpp``
(Zach, Pock, Bischof 2007 with the Wedel et al. 2009 improvements, after Javier
Sanchez Perez's implementation):

* :func:`resize_linear` -- ``cv::resize(..., INTER_LINEAR)`` on float images: the
  source coordinate ``(d + 0.5) * scale - 0.5`` with clamping at the edges, horizontal
  pass then vertical pass (used for the image pyramid and to upsample the flow);
* :func:`centered_gradient` -- ``centeredGradient`` (half one-sided differences on the
  border, as OpenCV does);
* :func:`remap_cubic` -- ``cv::remap(..., INTER_CUBIC, BORDER_CONSTANT 0)``: Keys' cubic
  with ``A = -0.75``, taps outside the image read 0; positions either exact (OpenCV 5.x)
  or quantised to 1/32 pixel (OpenCV 4.x's ``INTER_TAB_SIZE`` fixed-point maps);
* :func:`median5` -- ``cv::medianBlur(ksize=5)`` on float (replicated border), as an
  exact selection network (min/max only, so it fuses under ``torch.compile``);
* :func:`forward_gradient`, :func:`divergence` -- OpenCV's discretisations;
* :func:`tvl1_iteration` -- one inner iteration (thresholding step ``estimateV``,
  divergence, ``estimateU`` with its squared-update error, forward gradient, dual update
  ``estimateDualVariables``), batched, with per-pair freezing for the early stop.

These functions hold no state and are safe to ``torch.compile`` (no data-dependent
Python control flow, no host synchronisation).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

FLT_EPSILON = float(np.finfo(np.float32).eps)
CUBIC_A = -0.75


# --------------------------------------------------------------------------- resize
def _linear_taps(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (left, right) and right weight of OpenCV's INTER_LINEAR along one axis.

    ``scale`` is OpenCV's ``scale_x = 1 / inv_scale_x`` (source step per output pixel).
    The coordinate is computed in double and rounded to float, as ``resize.cpp`` does.
    """
    d = np.arange(n_out, dtype=np.float64)
    f = ((d + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    frac = (f - s.astype(np.float32)).astype(np.float32)
    low = s < 0
    frac[low] = 0.0
    s[low] = 0
    high = s >= n_in - 1
    frac[high] = 0.0
    s[high] = n_in - 1
    s1 = np.minimum(s + 1, n_in - 1)
    return s, s1, frac


def opencv_resized_size(h: int, w: int, factor: float) -> tuple[int, int]:
    """Output size of ``cv::resize(src, Size(), factor, factor)``: ``cvRound(side * factor)``."""
    return int(np.rint(h * factor)), int(np.rint(w * factor))


def resize_linear(x: torch.Tensor, out_hw: tuple[int, int],
                  scale_yx: tuple[float, float] | None = None) -> torch.Tensor:
    """``cv::resize(x, out_hw, INTER_LINEAR)`` for float images ``[..., H, W]``.

    ``scale_yx`` is OpenCV's source step per output pixel; by default ``in / out`` (the
    case of an explicit destination size). For a pyramid built with ``fx = fy = step``
    pass ``(1 / step, 1 / step)``, as OpenCV keeps the requested factor there.
    """
    h, w = x.shape[-2:]
    oh, ow = out_hw
    sy, sx = scale_yx if scale_yx is not None else (h / oh, w / ow)
    x0, x1, fx = _linear_taps(w, ow, sx)
    y0, y1, fy = _linear_taps(h, oh, sy)
    dev = x.device
    x0, x1, y0, y1 = (torch.from_numpy(a).to(dev) for a in (x0, x1, y0, y1))
    fx = torch.from_numpy(fx).to(dev, x.dtype)
    fy = torch.from_numpy(fy).to(dev, x.dtype)
    # horizontal pass: D[dx] = S[sx] * (1 - fx) + S[sx + 1] * fx
    hx = x.index_select(-1, x0) * (1 - fx) + x.index_select(-1, x1) * fx
    # vertical pass: dst = row0 * (1 - fy) + row1 * fy
    fy = fy[:, None]
    return hx.index_select(-2, y0) * (1 - fy) + hx.index_select(-2, y1) * fy


# ------------------------------------------------------------------- derivatives
def centered_gradient(src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's ``centeredGradient``: central differences, ``0.5 * one-sided`` at the borders."""
    dx = torch.empty_like(src)
    dy = torch.empty_like(src)
    dx[..., :, 1:-1] = 0.5 * (src[..., :, 2:] - src[..., :, :-2])
    dx[..., :, 0] = 0.5 * (src[..., :, 1] - src[..., :, 0])
    dx[..., :, -1] = 0.5 * (src[..., :, -1] - src[..., :, -2])
    dy[..., 1:-1, :] = 0.5 * (src[..., 2:, :] - src[..., :-2, :])
    dy[..., 0, :] = 0.5 * (src[..., 1, :] - src[..., 0, :])
    dy[..., -1, :] = 0.5 * (src[..., -1, :] - src[..., -2, :])
    return dx, dy


def forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's ``forwardGradient``: ``u[x+1] - u[x]``, 0 on the last column / row."""
    dx = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1, 0, 0))
    dy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return dx, dy


def divergence(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``divergence``: backward differences with ``v[-1] = 0`` (first row/column)."""
    v1x = v1 - F.pad(v1[..., :, :-1], (1, 0, 0, 0))
    v2y = v2 - F.pad(v2[..., :-1, :], (0, 0, 1, 0))
    return v1x + v2y


# ------------------------------------------------------------------------ remap
def cubic_weights(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``interpolateCubic`` (Keys, ``A = -0.75``) for fractions ``x`` in [0, 1): ``[..., 4]``."""
    a = CUBIC_A
    x1 = x + 1
    c0 = ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a
    c1 = ((a + 2) * x - (a + 3)) * x * x + 1
    ox = 1 - x
    c2 = ((a + 2) * ox - (a + 3)) * ox * ox + 1
    return torch.stack((c0, c1, c2, 1 - c0 - c1 - c2), -1)


def remap_cubic(img: torch.Tensor, map_x: torch.Tensor, map_y: torch.Tensor, subpixel: int = 0) -> torch.Tensor:
    """``cv::remap(img, map_x, map_y, INTER_CUBIC, BORDER_CONSTANT, 0)`` for float images.

    ``img`` is ``[B, C, H, W]`` (C images warped by the same map), maps ``[B, H, W]``
    absolute source coordinates. ``subpixel = 32`` rounds positions to 1/32 pixel like
    OpenCV 4.x's fixed-point map conversion (``INTER_TAB_SIZE``); ``0`` uses the exact
    float position (what OpenCV 5.x does; see :func:`pipeline.tvl1.opencv.opencv_remap_subpixel`).
    Taps outside the image contribute 0.
    """
    b, c, h, w = img.shape
    if subpixel:
        qx = torch.round(map_x * subpixel)
        qy = torch.round(map_y * subpixel)
        fx0 = torch.floor(qx / subpixel)
        fy0 = torch.floor(qy / subpixel)
        fx = (qx - fx0 * subpixel) * (1.0 / subpixel)
        fy = (qy - fy0 * subpixel) * (1.0 / subpixel)
    else:
        fx0 = torch.floor(map_x)
        fy0 = torch.floor(map_y)
        fx = map_x - fx0
        fy = map_y - fy0
    # clamp far-away positions before the int conversion; every such tap reads the zero border
    ix = fx0.clamp(-4, w + 4).to(torch.int64)
    iy = fy0.clamp(-4, h + 4).to(torch.int64)
    wx = cubic_weights(fx)                                  # [B, H, W, 4]
    wy = cubic_weights(fy)
    padded = F.pad(img, (1, 1, 1, 1)).reshape(b, c, (h + 2) * (w + 2))
    # tap k of a row/column sits at i - 1 + k; index into the zero-padded image, clamped so
    # that every tap outside the image reads one of the zero border pixels
    out = torch.zeros_like(img)
    for ky in range(4):
        py = (iy + (ky - 1)).clamp(-1, h) + 1
        row = torch.zeros_like(img)
        for kx in range(4):
            px = (ix + (kx - 1)).clamp(-1, w) + 1
            idx = (py * (w + 2) + px).reshape(b, 1, h * w).expand(b, c, h * w)
            vals = torch.gather(padded, 2, idx).reshape(b, c, h, w)
            row = row + vals * wx[..., kx].unsqueeze(1)
        out = out + row * wy[..., ky].unsqueeze(1)
    return out


# ----------------------------------------------------------------------- median
def _oddeven_merge(lo: int, hi: int, r: int):
    step = r * 2
    if step < hi - lo:
        yield from _oddeven_merge(lo, hi, step)
        yield from _oddeven_merge(lo + r, hi, step)
        yield from ((i, i + r) for i in range(lo + r, hi - r, step))
    else:
        yield (lo, lo + r)


def _oddeven_merge_sort(lo: int, hi: int):
    if hi - lo >= 1:
        mid = lo + (hi - lo) // 2
        yield from _oddeven_merge_sort(lo, mid)
        yield from _oddeven_merge_sort(mid + 1, hi)
        yield from _oddeven_merge(lo, hi, 1)


def median_network(n: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """A compare-exchange network that leaves the median of ``n`` (odd) values at ``n // 2``.

    Batcher's odd-even merge sort on the next power of two (the missing inputs are
    +inf, so comparators touching them are no-ops), pruned to the comparators the
    median depends on. Each entry is ``(i, j, keep_min, keep_max)``.
    """
    if n % 2 == 0:
        raise ValueError("median_network needs an odd number of inputs")
    size = 1 << (n - 1).bit_length()
    comps = [(i, j) for i, j in _oddeven_merge_sort(0, size - 1) if j < n]
    needed = {n // 2}
    kept: list[tuple[int, int, bool, bool]] = []
    for i, j in reversed(comps):
        if i in needed or j in needed:
            kept.append((i, j, i in needed, j in needed))
            needed |= {i, j}
    return tuple(reversed(kept))


#: the networks of the 3x3 and 5x5 medians, built once (constants)
MEDIAN_NETWORKS = {n: median_network(n) for n in (9, 25)}


def median_select(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Element-wise median of an odd number of same-shaped tensors (exact, min/max only)."""
    v = list(values)
    network = MEDIAN_NETWORKS[len(v)] if len(v) in MEDIAN_NETWORKS else median_network(len(v))
    for i, j, keep_min, keep_max in network:
        a, b = v[i], v[j]
        if keep_min and keep_max:
            v[i], v[j] = torch.minimum(a, b), torch.maximum(a, b)
        elif keep_min:
            v[i] = torch.minimum(a, b)
        else:
            v[j] = torch.maximum(a, b)
    return v[len(v) // 2]


def median_blur(u: torch.Tensor, ksize: int) -> torch.Tensor:
    """``cv::medianBlur(u, ksize)`` for float images ``[..., H, W]`` (replicated border)."""
    r = ksize // 2
    lead = u.shape[:-2]
    h, w = u.shape[-2:]
    x = u.reshape(-1, 1, h, w)
    p = F.pad(x, (r, r, r, r), mode="replicate")
    taps = [p[..., dy:dy + h, dx:dx + w] for dy in range(ksize) for dx in range(ksize)]
    return median_select(taps).reshape(*lead, h, w)


def median5(u: torch.Tensor) -> torch.Tensor:
    """``cv::medianBlur(u, 5)`` (the OpenCV default median filtering of the flow)."""
    return median_blur(u, 5)


# -------------------------------------------------------------------- iteration
def warp_terms(i0: torch.Tensor, i1: torch.Tensor, i1x: torch.Tensor, i1y: torch.Tensor,
               u1: torch.Tensor, u2: torch.Tensor, subpixel: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Warp ``I1`` and its gradient by the flow and return ``(I1wx, I1wy, grad, rho_c)``.

    ``buildFlowMap`` + three ``remap(INTER_CUBIC)`` + ``calcGradRho``: ``grad`` is
    ``|grad I1w|^2`` and ``rho_c = I1w - I1wx*u1 - I1wy*u2 - I0``.
    """
    b, h, w = u1.shape
    xs = torch.arange(w, device=u1.device, dtype=u1.dtype).view(1, 1, w)
    ys = torch.arange(h, device=u1.device, dtype=u1.dtype).view(1, h, 1)
    warped = remap_cubic(torch.stack((i1, i1x, i1y), 1), xs + u1, ys + u2, subpixel)
    i1w, i1wx, i1wy = warped.unbind(1)
    grad = i1wx * i1wx + i1wy * i1wy
    rho_c = i1w - i1wx * u1 - i1wy * u2 - i0
    return i1wx, i1wy, grad, rho_c


def tvl1_iteration(u: Sequence[torch.Tensor], p: Sequence[torch.Tensor], active: torch.Tensor,
                   i1wx: torch.Tensor, i1wy: torch.Tensor, grad: torch.Tensor, rho_c: torch.Tensor,
                   l_t: float, theta: float, taut: float, gamma: float, eps_scaled: torch.Tensor | float
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """One inner iteration of OpenCV's Dual TV-L1 for a batch, frozen where ``active`` is False.

    ``u`` is ``(u1, u2)`` or ``(u1, u2, u3)`` (``gamma != 0``), each ``[B, H, W]``;
    ``p`` the dual variables ``(p11, p12, p21, p22[, p31, p32])``. Returns the new
    ``u``, ``p`` and ``active & (error > eps_scaled)`` where ``error`` is OpenCV's sum of
    squared flow updates of this iteration (the dual update of the iteration that
    converges is still applied, as OpenCV does).
    """
    use_gamma = len(u) == 3
    u1, u2 = u[0], u[1]
    # estimateV: thresholding step
    rho = rho_c + (i1wx * u1 + i1wy * u2)
    if use_gamma:
        rho = rho + gamma * u[2]
    lg = l_t * grad
    safe = torch.where(grad > FLT_EPSILON, grad, torch.ones_like(grad))
    fi = torch.where(rho < -lg, torch.full_like(rho, l_t),
                     torch.where(rho > lg, torch.full_like(rho, -l_t),
                                 torch.where(grad > FLT_EPSILON, -rho / safe, torch.zeros_like(rho))))
    v = [u1 + fi * i1wx, u2 + fi * i1wy]
    if use_gamma:
        v.append(u[2] + fi * gamma)
    a = active.view(-1, 1, 1)
    new_u: list[torch.Tensor] = []
    new_p: list[torch.Tensor] = []
    err = None
    for c in range(len(u)):
        pc1, pc2 = p[2 * c], p[2 * c + 1]
        # estimateU: u = v + theta * div(p); error = sum of squared updates
        uc = v[c] + theta * divergence(pc1, pc2)
        d = uc - u[c]
        e = (d * d).sum(dim=(-2, -1))
        err = e if err is None else err + e
        # forward gradient of the new u and dual update
        ux, uy = forward_gradient(uc)
        ng = 1.0 + taut * torch.hypot(ux, uy)
        new_u.append(torch.where(a, uc, u[c]))
        new_p.append(torch.where(a, (pc1 + taut * ux) / ng, pc1))
        new_p.append(torch.where(a, (pc2 + taut * uy) / ng, pc2))
    assert err is not None
    return new_u, new_p, active & (err > eps_scaled)


def tvl1_iterations_counted(u: Sequence[torch.Tensor], p: Sequence[torch.Tensor], active: torch.Tensor,
                            count: torch.Tensor, i1wx: torch.Tensor, i1wy: torch.Tensor, grad: torch.Tensor,
                            rho_c: torch.Tensor, l_t: float, theta: float, taut: float, gamma: float,
                            eps_scaled: torch.Tensor | float, n: int
                            ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """``n`` consecutive :func:`tvl1_iteration` calls (unrolled; the unit that is compiled).

    ``count`` (int32 [B]) is incremented for every iteration a pair actually ran.
    """
    u, p = list(u), list(p)
    for _ in range(n):
        count = count + active.to(count.dtype)
        u, p, active = tvl1_iteration(u, p, active, i1wx, i1wy, grad, rho_c, l_t, theta, taut, gamma, eps_scaled)
    return u, p, active, count
