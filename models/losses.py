"""IAENet losses: sigmoid focal loss on the point classes and a weighted 1-D IoU loss.

Class labels per point: 0 background, 1 macro, 2 micro; logits have one channel per
foreground class (0 macro, 1 micro), targets are their one-hot encoding (background =
all zeros). Distances are (left, right) from the point, in units of the level stride.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Summed sigmoid focal loss.

    ``logits`` [..., C]; ``labels`` [...] integers in 0..C (0 = background, k = channel k-1);
    ``mask`` [...] bool, points to count (others contribute nothing). Per element:
    ``-w * (1 - p_t)^gamma * log(p_t)`` with ``w = alpha`` for positives, ``1 - alpha``
    for negatives; summed over points and classes.
    """
    num_classes = logits.shape[-1]
    target = F.one_hot(labels.long(), num_classes + 1)[..., 1:].to(logits.dtype)
    logits = logits.float()
    target = target.float()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # -log(p_t), stable
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    w = alpha * target + (1 - alpha) * (1 - target)
    loss = w * (1 - p_t).pow(gamma) * ce
    if mask is not None:
        loss = loss * mask.unsqueeze(-1).to(loss.dtype)
    return loss.sum()


def interval_iou(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """IoU of intervals given as (left, right) distances around the same point, [..., 2] → [...].

    Both intervals contain the point, so intersection = min(l) + min(r) (clamped at ``eps``
    as the published code does) and union = len_p + len_t - intersection.
    """
    pred = pred.float()
    target = target.float()
    inter = (torch.minimum(pred[..., 0], target[..., 0]) + torch.minimum(pred[..., 1], target[..., 1])).clamp(min=eps)
    union = pred.sum(-1) + target.sum(-1) - inter
    return inter / union


def iaenet_loss(logits: torch.Tensor, dists: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                valid: torch.Tensor | None = None, *, batch_size: int | torch.Tensor | None = None,
                alpha: float = 0.25, gamma: float = 2.0, micro_weight: float = 4.0,
                reg_weight: float = 0.05) -> dict[str, torch.Tensor]:
    """The IAENet training loss of one batch.

    ``logits`` [B, P, 2], ``dists`` [B, P, 2] (predicted, stride units), ``labels`` [B, P]
    (0/1/2), ``targets`` [B, P, 2] (stride units), ``valid`` [B, P] bool (False for points
    in padding of short videos and for padded batch rows), ``batch_size`` the number of
    real windows (default B).

    cls = focal sum / (positives + batch_size);
    reg = mean over positives of w * (1 - IoU), w = ``micro_weight`` for micro, 1 macro
    (0 when the batch has no positive);
    total = cls + reg_weight * reg.
    """
    if valid is None:
        valid = torch.ones(labels.shape, dtype=torch.bool, device=labels.device)
    if batch_size is None:
        batch_size = labels.shape[0]
    pos = (labels > 0) & valid
    n_pos = pos.sum()
    cls = sigmoid_focal_loss(logits, labels, alpha, gamma, mask=valid) / (n_pos + batch_size)
    w = torch.where(labels == 2, torch.full_like(targets[..., 0], float(micro_weight)),
                    torch.ones_like(targets[..., 0])).float()
    per_point = w * (1 - interval_iou(dists, targets))
    reg = torch.where(pos, per_point, torch.zeros_like(per_point)).sum() / n_pos.clamp(min=1)
    return {"loss": cls + reg_weight * reg, "cls": cls, "reg": reg}
