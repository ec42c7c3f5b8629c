"""1-D NMS, weighted boxes fusion, minimum length, top-k and decoding on hand cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.learning.postprocess import decode, iou_1d, nms_1d, suppress, wbf_1d
from pipeline.learning.presets import load_model_preset
from pipeline.learning.windows import PointGrid

A = np.array


def test_iou_1d() -> None:
    assert iou_1d(0, 10, A([1.0, 10, 20, 0]), A([11.0, 20, 30, 10])).tolist() == pytest.approx([9 / 11, 0, 0, 1])


def test_nms_hand_case() -> None:
    on, off, sc = A([0.0, 1, 20, 10]), A([10.0, 11, 30, 20]), A([0.9, 0.8, 0.7, 0.6])
    assert nms_1d(on, off, sc, 0.01).tolist() == [0, 2, 3]        # [1,11] overlaps [0,10]; touching ones stay
    assert nms_1d(on, off, sc, 0.01, top_k=2).tolist() == [0, 2]
    assert nms_1d(on, off, sc, 0.9).tolist() == [0, 1, 2, 3]      # IoU 9/11 < 0.9 keeps both
    assert nms_1d(on[:0], off[:0], sc[:0], 0.01).tolist() == []


def test_wbf_hand_case() -> None:
    on, off, sc = A([0.0, 2, 50, 55]), A([10.0, 12, 60, 65]), A([0.9, 0.6, 0.5, 0.2])
    fo, ff, fs = wbf_1d(on, off, sc, 0.01, floor=0.3)
    assert fo.tolist() == pytest.approx([0.8, 50]) and ff.tolist() == pytest.approx([10.8, 60])
    assert fs.tolist() == pytest.approx([0.75, 0.5])              # mean score; [55,65] is below the floor
    fo, ff, fs = wbf_1d(on, off, sc, 0.01, floor=0.3, power=2.0)
    assert fo[0] == pytest.approx(0.72 / 1.17) and fs[0] == pytest.approx((0.81 + 0.36) / 2)
    fo, ff, fs = wbf_1d(on, off, sc, 0.01, floor=0.0)
    assert len(fo) == 2 and ff[1] == pytest.approx((60 * 0.5 + 65 * 0.2) / 0.7)


def test_wbf_matches_the_best_fused_box() -> None:
    # the third box overlaps both clusters; it joins the one with the larger IoU
    on, off, sc = A([0.0, 40, 15]), A([20.0, 60, 58]), A([0.9, 0.8, 0.7])   # IoU 0.086 vs 0.4
    fo, ff, fs = wbf_1d(on, off, sc, 0.01)
    assert len(fo) == 2
    assert fo.tolist() == pytest.approx([0, (40 * 0.8 + 15 * 0.7) / 1.5])
    assert ff.tolist() == pytest.approx([20, (60 * 0.8 + 58 * 0.7) / 1.5])


def test_suppress_min_length_topk_and_classes() -> None:
    on, off = A([0.0, 100, 200, 300, 0]), A([3.0, 104, 210, 310, 50])
    sc, cls = A([0.99, 0.9, 0.8, 0.7, 0.6]), A([1, 1, 1, 1, 2])
    df = suppress(on, off, sc, cls, {"method": "nms", "iou": 0.01, "top_k": 3, "min_length": 4})
    # top-3 macro are [0,3], [100,104], [200,210]; then [0,3] (length 3) is dropped
    assert df[df.type == "macro"][["onset", "offset"]].values.tolist() == [[100, 104], [200, 210]]
    assert df[df.type == "micro"]["score"].tolist() == [0.6]
    df = suppress(on, off, sc, cls, {"method": "wbf", "iou": 0.01, "top_k": 2, "min_length": 4,
                                     "score_floor": {"macro": 0.75, "micro": 0.7}})
    assert df[df.type == "macro"]["onset"].tolist() == [100, 200] and (df.type == "micro").sum() == 0


def test_decode_points_strides_clipping_and_shift() -> None:
    grid = PointGrid.from_preset(load_model_preset("iaenet_casme2"))
    logits = torch.full((1, 28, 2), -5.0)
    dists = torch.zeros(1, 28, 2)
    logits[0, 0] = torch.tensor([0.0, 1.0])          # point 4 (stride 8): micro wins
    dists[0, 0] = torch.tensor([0.25, 0.5])          # -> [2, 8]
    logits[0, 15] = torch.tensor([2.0, -1.0])        # point 124: macro
    dists[0, 15] = torch.tensor([1.0, 2.0])          # -> [116, 140] clipped to 127
    c = decode(logits, dists, np.array([20]), np.array([128]), grid)
    assert len(c["onset"]) == 28
    assert (c["onset"][0], c["offset"][0], c["class"][0]) == (22, 28, 2)
    assert c["score"][0] == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())
    assert (c["onset"][15], c["offset"][15], c["class"][15]) == (136, 147, 1)
    short = decode(logits, dists, np.array([0]), np.array([60]), grid)     # padded window: points < 60 only
    assert len(short["onset"]) == int((grid.positions < 60).sum()) and short["offset"].max() <= 59
    both = decode(logits, dists, np.array([0]), np.array([128]), grid, class_per_point="all")
    assert len(both["onset"]) == 56 and both["class"][:2].tolist() == [1, 2]


def test_predictions_group_interleaved_windows_by_video() -> None:
    """Windows of two videos in any order: each video's predictions are those of its windows alone,
    videos in order of first appearance, dtypes as for one video."""
    import pandas as pd

    from pipeline.learning.postprocess import predictions_from_outputs
    from pipeline.learning.windows import WindowSet, WindowSpec

    preset = load_model_preset("iaenet_casme2")
    spec, grid = WindowSpec.from_preset(preset), PointGrid.from_preset(preset)
    g = torch.Generator().manual_seed(3)
    n, p = 9, len(grid)
    video = np.array(["b", "a", "b", "b", "a", "b", "a", "a", "b"], dtype=object)
    wins = WindowSet(video, np.arange(n) * 8, np.full(n, 64))
    logits, dists = torch.randn(n, p, 2, generator=g), torch.rand(n, p, 2, generator=g) * 3
    both = predictions_from_outputs(logits, dists, wins, spec, grid, preset["inference"])
    alone = []
    for v in ("b", "a"):
        m = video == v
        alone.append(predictions_from_outputs(logits[m], dists[m], wins.subset(m), spec, grid, preset["inference"]))
    assert list(pd.unique(both["video"])) == ["b", "a"] and len(both) > 10
    pd.testing.assert_frame_equal(both, pd.concat(alone, ignore_index=True), check_exact=True)
    none = predictions_from_outputs(logits[:0], dists[:0], wins.subset(np.zeros(n, bool)), spec, grid,
                                    preset["inference"])
    assert list(none.columns) == ["video", "onset", "offset", "type", "score"] and none.empty
