"""Dual TV-L1 optical flow: OpenCV, the batched torch solver and its Triton kernels."""
