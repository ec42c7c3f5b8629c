"""Dual TV-L1 as one Triton kernel per pyramid level: a persistent program per frame pair.

Why this shape: OpenCV stops a warp after the first iteration whose squared flow update
falls below ``epsilon^2 * pixels``, and on faces that happens after ~5 % of the maximum
iterations. A batch that shares one schedule (:mod:`pipeline.tvl1.solver`'s eager path)
runs every warp as long as its slowest pair, and the host has to look at the flags to
end it. Here each pair is one Triton *program* that runs its own schedule for a whole
pyramid level -- every warp (cubic remap of ``I1`` and its gradient, ``calcGradRho``),
every outer iteration (5x5 median of the flow) and inner iteration (``estimateV``,
divergence, ``estimateU`` with the error sum, forward gradient, ``estimateDualVariables``)
-- and leaves the loop exactly when OpenCV would, with no host synchronisation at all.
A converged pair's program ends and the GPU schedules the next pair in its place, so
no memory traffic is spent on pairs that have stopped (batch efficiency 1 by design).

Inside a program the image is swept in tiles of ``BLOCK`` pixels; the two stencil
phases of an iteration (``u`` needs the divergence of ``p`` at x-1 / y-1, ``p`` needs
the gradient of the new ``u`` at x+1 / y+1) are separated by a block barrier, so the
state is updated in place in global memory (L2-resident tiles). Per pixel and iteration
the kernel reads u (8 B), p (16 B) and the four warp constants (16 B) and writes u and
p (24 B): 64 B, the fp32 floor of ``benchmarks/flow_notes.md``, plus the re-read of u
and p in the second phase (24 B) -- 88 B.

Numerics are OpenCV's (see :mod:`pipeline.tvl1.kernels` for the routine-by-routine
correspondence): IEEE divisions (``div_rn``), the same FLT_EPSILON guard, the exact
median network, the same cubic weights and border rule. Supported: ``gamma == 0`` and
median filtering 0/1, 3 or 5 (:func:`supports`); other settings use the torch path.

The kernels also run on the CPU under ``TRITON_INTERPRET=1`` (how the tests check them
against the eager torch solver on a machine without a GPU).
"""

from __future__ import annotations

import os

import torch

try:  # Triton ships with CUDA builds of torch; CPU-only installs may lack it
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    HAVE_TRITON = False

from pipeline.tvl1.params import TVL1Params


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``; tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def supports(params: TVL1Params, device: torch.device) -> str | None:
    """``None`` when the Triton kernel can solve ``params`` on ``device``, else the reason it cannot."""
    if not HAVE_TRITON:
        return "triton is not installed"
    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        return f"device {device} is not CUDA"
    if params.gamma != 0:
        return "gamma != 0 (the third flow channel) is only in the torch path"
    if params.median_filtering not in (0, 1, 3, 5):
        return f"median_filtering {params.median_filtering} (Triton kernel: 0/1, 3 or 5)"
    return None


if HAVE_TRITON:
    from pipeline.tvl1.triton_median import _median3, _median5

    @triton.jit
    def _cubic_w(t):
        """OpenCV's ``interpolateCubic`` weights (Keys, A = -0.75) of the four taps for fraction ``t``."""
        a = -0.75
        t1 = t + 1.0
        c0 = ((a * t1 - 5.0 * a) * t1 + 8.0 * a) * t1 - 4.0 * a
        c1 = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
        o = 1.0 - t
        c2 = ((a + 2.0) * o - (a + 3.0)) * o * o + 1.0
        c3 = 1.0 - c0 - c1 - c2
        return c0, c1, c2, c3

    @triton.jit
    def _round_half_even(v):
        """``torch.round`` (ties to even) of float values."""
        r = tl.floor(v + 0.5)
        tie = (r - v) == 0.5
        odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
        return tl.where(tie & odd, r - 1.0, r)

    @triton.jit
    def _tap3(i1, i1x, i1y, off, ok, wk, a, b, c):
        """Add weight ``wk`` times the three images at ``off`` (0 outside the image) to ``a, b, c``."""
        a = a + tl.load(i1 + off, mask=ok, other=0.0) * wk
        b = b + tl.load(i1x + off, mask=ok, other=0.0) * wk
        c = c + tl.load(i1y + off, mask=ok, other=0.0) * wk
        return a, b, c

    @triton.jit
    def _warp_row(i1, i1x, i1y, w0, w1, w2, w3, iy, ix, H, W, m):
        """One row of the 4x4 cubic footprint, horizontally interpolated, for the three images."""
        ok_y = m & (iy >= 0) & (iy < H)
        row = iy * W
        a = tl.zeros_like(w0)
        b = tl.zeros_like(w0)
        c = tl.zeros_like(w0)
        a, b, c = _tap3(i1, i1x, i1y, row + ix - 1, ok_y & (ix >= 1) & (ix - 1 < W), w0, a, b, c)
        a, b, c = _tap3(i1, i1x, i1y, row + ix, ok_y & (ix >= 0) & (ix < W), w1, a, b, c)
        a, b, c = _tap3(i1, i1x, i1y, row + ix + 1, ok_y & (ix >= -1) & (ix + 1 < W), w2, a, b, c)
        a, b, c = _tap3(i1, i1x, i1y, row + ix + 2, ok_y & (ix >= -2) & (ix + 2 < W), w3, a, b, c)
        return a, b, c

    @triton.jit
    def _tile(start, lane, HW, W):
        """Flat offsets, in-image mask and (y, x) of the tile of pixels starting at ``start``."""
        offs = start + lane
        y = offs // W
        return offs, offs < HW, y, offs - y * W

    @triton.jit
    def _level_kernel(i0_ptr, i1_ptr, i1x_ptr, i1y_ptr,
                      u1_ptr, u2_ptr, p11_ptr, p12_ptr, p21_ptr, p22_ptr,
                      wx_ptr, wy_ptr, g_ptr, rc_ptr, m1_ptr, m2_ptr, count_ptr,
                      H, W, warps, outer, inner, l_t, theta, taut, eps_scaled,
                      MEDIAN: tl.constexpr, SUBPIXEL: tl.constexpr, BLOCK: tl.constexpr):
        """All warps of one pyramid level for pair ``program_id(0)``; state updated in place."""
        pid = tl.program_id(0)
        HW = H * W
        base = pid.to(tl.int64) * HW
        i0_ptr += base
        i1_ptr += base
        i1x_ptr += base
        i1y_ptr += base
        u1_ptr += base
        u2_ptr += base
        p11_ptr += base
        p12_ptr += base
        p21_ptr += base
        p22_ptr += base
        wx_ptr += base
        wy_ptr += base
        g_ptr += base
        rc_ptr += base
        m1_ptr += base
        m2_ptr += base
        lane = tl.arange(0, BLOCK)
        total = 0
        for _w in range(warps):
            # ---- buildFlowMap + remap(INTER_CUBIC) of I1, I1x, I1y + calcGradRho
            for start in range(0, HW, BLOCK):
                offs, m, y, x = _tile(start, lane, HW, W)
                u1 = tl.load(u1_ptr + offs, mask=m, other=0.0)
                u2 = tl.load(u2_ptr + offs, mask=m, other=0.0)
                mx = x.to(tl.float32) + u1
                my = y.to(tl.float32) + u2
                if SUBPIXEL > 0:
                    qx = _round_half_even(mx * SUBPIXEL)
                    qy = _round_half_even(my * SUBPIXEL)
                    fx0 = tl.floor(qx / SUBPIXEL)
                    fy0 = tl.floor(qy / SUBPIXEL)
                    fx = (qx - fx0 * SUBPIXEL) * (1.0 / SUBPIXEL)
                    fy = (qy - fy0 * SUBPIXEL) * (1.0 / SUBPIXEL)
                else:
                    fx0 = tl.floor(mx)
                    fy0 = tl.floor(my)
                    fx = mx - fx0
                    fy = my - fy0
                ix = tl.minimum(tl.maximum(fx0, -4.0), W + 4.0).to(tl.int32)
                iy = tl.minimum(tl.maximum(fy0, -4.0), H + 4.0).to(tl.int32)
                wx0, wx1, wx2, wx3 = _cubic_w(fx)
                wy0, wy1, wy2, wy3 = _cubic_w(fy)
                a0, b0, c0 = _warp_row(i1_ptr, i1x_ptr, i1y_ptr, wx0, wx1, wx2, wx3, iy - 1, ix, H, W, m)
                a1, b1, c1 = _warp_row(i1_ptr, i1x_ptr, i1y_ptr, wx0, wx1, wx2, wx3, iy, ix, H, W, m)
                a2, b2, c2 = _warp_row(i1_ptr, i1x_ptr, i1y_ptr, wx0, wx1, wx2, wx3, iy + 1, ix, H, W, m)
                a3, b3, c3 = _warp_row(i1_ptr, i1x_ptr, i1y_ptr, wx0, wx1, wx2, wx3, iy + 2, ix, H, W, m)
                i1w = a0 * wy0 + a1 * wy1 + a2 * wy2 + a3 * wy3
                i1wx = b0 * wy0 + b1 * wy1 + b2 * wy2 + b3 * wy3
                i1wy = c0 * wy0 + c1 * wy1 + c2 * wy2 + c3 * wy3
                i0 = tl.load(i0_ptr + offs, mask=m, other=0.0)
                tl.store(wx_ptr + offs, i1wx, mask=m)
                tl.store(wy_ptr + offs, i1wy, mask=m)
                tl.store(g_ptr + offs, i1wx * i1wx + i1wy * i1wy, mask=m)
                tl.store(rc_ptr + offs, i1w - i1wx * u1 - i1wy * u2 - i0, mask=m)
            tl.debug_barrier()
            err = 3.4028234663852886e38
            n_outer = 0
            while (err > eps_scaled) & (n_outer < outer):
                if MEDIAN > 1:
                    # ---- medianBlur(u1), medianBlur(u2): into scratch, then back
                    for start in range(0, HW, BLOCK):
                        offs, m, y, x = _tile(start, lane, HW, W)
                        if MEDIAN == 5:
                            tl.store(m1_ptr + offs, _median5(u1_ptr, y, x, H, W, m), mask=m)
                            tl.store(m2_ptr + offs, _median5(u2_ptr, y, x, H, W, m), mask=m)
                        else:
                            tl.store(m1_ptr + offs, _median3(u1_ptr, y, x, H, W, m), mask=m)
                            tl.store(m2_ptr + offs, _median3(u2_ptr, y, x, H, W, m), mask=m)
                    tl.debug_barrier()
                    for start in range(0, HW, BLOCK):
                        offs = start + lane
                        m = offs < HW
                        tl.store(u1_ptr + offs, tl.load(m1_ptr + offs, mask=m, other=0.0), mask=m)
                        tl.store(u2_ptr + offs, tl.load(m2_ptr + offs, mask=m, other=0.0), mask=m)
                    tl.debug_barrier()
                n_inner = 0
                while (err > eps_scaled) & (n_inner < inner):
                    # ---- estimateV, divergence(p), estimateU (+ error)
                    acc = tl.zeros([BLOCK], dtype=tl.float32)
                    for start in range(0, HW, BLOCK):
                        offs, m, y, x = _tile(start, lane, HW, W)
                        u1 = tl.load(u1_ptr + offs, mask=m, other=0.0)
                        u2 = tl.load(u2_ptr + offs, mask=m, other=0.0)
                        i1wx = tl.load(wx_ptr + offs, mask=m, other=0.0)
                        i1wy = tl.load(wy_ptr + offs, mask=m, other=0.0)
                        grad = tl.load(g_ptr + offs, mask=m, other=0.0)
                        rho = tl.load(rc_ptr + offs, mask=m, other=0.0) + (i1wx * u1 + i1wy * u2)
                        lg = l_t * grad
                        safe = tl.where(grad > 1.1920928955078125e-07, grad, 1.0)
                        fi = tl.where(rho < -lg, l_t,
                                      tl.where(rho > lg, -l_t,
                                               tl.where(grad > 1.1920928955078125e-07, tl.math.div_rn(-rho, safe), 0.0)))
                        v1 = u1 + fi * i1wx
                        v2 = u2 + fi * i1wy
                        left = m & (x > 0)
                        up = m & (y > 0)
                        div1 = (tl.load(p11_ptr + offs, mask=m, other=0.0)
                                - tl.load(p11_ptr + offs - 1, mask=left, other=0.0)) \
                            + (tl.load(p12_ptr + offs, mask=m, other=0.0)
                               - tl.load(p12_ptr + offs - W, mask=up, other=0.0))
                        div2 = (tl.load(p21_ptr + offs, mask=m, other=0.0)
                                - tl.load(p21_ptr + offs - 1, mask=left, other=0.0)) \
                            + (tl.load(p22_ptr + offs, mask=m, other=0.0)
                               - tl.load(p22_ptr + offs - W, mask=up, other=0.0))
                        n1 = v1 + theta * div1
                        n2 = v2 + theta * div2
                        d1 = n1 - u1
                        d2 = n2 - u2
                        acc += tl.where(m, d1 * d1 + d2 * d2, 0.0)
                        tl.store(u1_ptr + offs, n1, mask=m)
                        tl.store(u2_ptr + offs, n2, mask=m)
                    err = tl.sum(acc, axis=0)
                    tl.debug_barrier()
                    # ---- forwardGradient(u), estimateDualVariables
                    for start in range(0, HW, BLOCK):
                        offs, m, y, x = _tile(start, lane, HW, W)
                        right = m & (x < W - 1)
                        down = m & (y < H - 1)
                        u1 = tl.load(u1_ptr + offs, mask=m, other=0.0)
                        u2 = tl.load(u2_ptr + offs, mask=m, other=0.0)
                        u1x = tl.where(right, tl.load(u1_ptr + offs + 1, mask=right, other=0.0) - u1, 0.0)
                        u1y = tl.where(down, tl.load(u1_ptr + offs + W, mask=down, other=0.0) - u1, 0.0)
                        u2x = tl.where(right, tl.load(u2_ptr + offs + 1, mask=right, other=0.0) - u2, 0.0)
                        u2y = tl.where(down, tl.load(u2_ptr + offs + W, mask=down, other=0.0) - u2, 0.0)
                        ng1 = 1.0 + taut * tl.sqrt_rn(u1x * u1x + u1y * u1y)
                        ng2 = 1.0 + taut * tl.sqrt_rn(u2x * u2x + u2y * u2y)
                        q11 = tl.load(p11_ptr + offs, mask=m, other=0.0)
                        q12 = tl.load(p12_ptr + offs, mask=m, other=0.0)
                        q21 = tl.load(p21_ptr + offs, mask=m, other=0.0)
                        q22 = tl.load(p22_ptr + offs, mask=m, other=0.0)
                        tl.store(p11_ptr + offs, tl.math.div_rn(q11 + taut * u1x, ng1), mask=m)
                        tl.store(p12_ptr + offs, tl.math.div_rn(q12 + taut * u1y, ng1), mask=m)
                        tl.store(p21_ptr + offs, tl.math.div_rn(q21 + taut * u2x, ng2), mask=m)
                        tl.store(p22_ptr + offs, tl.math.div_rn(q22 + taut * u2y, ng2), mask=m)
                    tl.debug_barrier()
                    n_inner += 1
                total += n_inner
                n_outer += 1
        tl.store(count_ptr + pid, tl.load(count_ptr + pid) + total)


def solve_level(i0: torch.Tensor, i1: torch.Tensor, i1x: torch.Tensor, i1y: torch.Tensor,
                u: list[torch.Tensor], p: list[torch.Tensor], count: torch.Tensor, params: TVL1Params,
                subpixel: int, block: int = 256, num_warps: int = 4) -> None:
    """Run every warp of one pyramid level for a batch ``[B, H, W]``; ``u``, ``p`` and ``count`` in place.

    ``u`` = (u1, u2) and ``p`` = (p11, p12, p21, p22), float32 contiguous on the device;
    ``count`` (int32 [B]) gets the number of inner iterations each pair ran.
    """
    if not HAVE_TRITON:  # pragma: no cover - guarded by supports()
        raise RuntimeError("triton is not installed")
    b, h, w = i0.shape
    scratch = torch.empty((6, b, h, w), dtype=torch.float32, device=i0.device)
    pr = params
    l_t, theta, taut, _ = pr.iteration_constants()
    eps = pr.scaled_epsilon(h * w)
    median = pr.median_filtering if pr.median_filtering > 1 else 0
    _level_kernel[(b,)](i0, i1, i1x, i1y, u[0], u[1], p[0], p[1], p[2], p[3],
                        scratch[0], scratch[1], scratch[2], scratch[3], scratch[4], scratch[5], count,
                        h, w, pr.warps, pr.outer_iterations, pr.inner_iterations, l_t, theta, taut, eps,
                        MEDIAN=median, SUBPIXEL=int(subpixel), BLOCK=block, num_warps=num_warps)
