"""Windows (90% rule, clipping, grids, padding) and IAENet label assignment on hand-built cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.learning.presets import load_model_preset
from pipeline.learning.windows import (FeatureBank, PointGrid, WindowSpec, assign_labels, grid_starts, inside_ratio,
                              make_test_windows, make_train_windows, point_mask, window_labels)

SPEC = WindowSpec(frames=128, feature_stride=2, train_step=32, test_step=16, min_inside=0.9)


@pytest.fixture(scope="module")
def casme_grid() -> PointGrid:
    return PointGrid.from_preset(load_model_preset("iaenet_casme2"))


def _assign(grid: PointGrid, boxes, labels):
    b = torch.tensor([boxes], dtype=torch.float32)
    lab = torch.tensor([labels], dtype=torch.long)
    cls, tgt = assign_labels(b, lab, grid)
    return cls[0], tgt[0]


def _index(grid: PointGrid, stride: int, position: int) -> int:
    hit = ((grid.strides == stride) & (grid.positions == position)).nonzero()
    assert len(hit) == 1
    return int(hit[0, 0])


def test_point_grid_positions(casme_grid: PointGrid) -> None:
    assert len(casme_grid) == 28
    assert casme_grid.positions[:3].tolist() == [4, 12, 20]           # i*8 + 4
    assert casme_grid.positions[16:18].tolist() == [8, 24]            # i*16 + 8
    assert casme_grid.positions[24:].tolist() == [16, 48, 80, 112]    # i*32 + 16
    samm = PointGrid.from_preset(load_model_preset("iaenet_samm"))
    assert len(samm) == 56 and samm.positions[:2].tolist() == [2, 6]


def test_range_boundaries_are_inclusive(casme_grid: PointGrid) -> None:
    cls, tgt = _assign(casme_grid, [[0, 28]], [1])
    # level 3 point at 16: distances (16, 12), max 16 == lower bound of [16, 128] -> positive
    i = _index(casme_grid, 32, 16)
    assert cls[i] == 1 and tgt[i].tolist() == pytest.approx([16 / 32, 12 / 32])
    # level 2 points 8 (8, 20) and 24 (24, 4): max 20 / 24 in [14, 32]
    assert cls[_index(casme_grid, 16, 8)] == 1 and tgt[_index(casme_grid, 16, 8)].tolist() == [0.5, 1.25]
    assert cls[_index(casme_grid, 16, 24)] == 1
    # level 1 point 12: (12, 16), max 16 > 14 -> background at level 1
    assert cls[_index(casme_grid, 8, 12)] == 0
    # upper bound: box [2, 18], level-1 point 4 has (2, 14): max 14 == upper bound -> positive
    cls, tgt = _assign(casme_grid, [[2, 18]], [2])
    assert cls[_index(casme_grid, 8, 4)] == 2 and tgt[_index(casme_grid, 8, 4)].tolist() == [2 / 8, 14 / 8]


def test_points_must_be_strictly_inside(casme_grid: PointGrid) -> None:
    cls, _ = _assign(casme_grid, [[4, 20]], [1])
    assert cls[_index(casme_grid, 8, 4)] == 0     # left distance 0
    assert cls[_index(casme_grid, 8, 20)] == 0    # right distance 0
    assert cls[_index(casme_grid, 8, 12)] == 1    # (8, 8)
    assert int((cls > 0).sum()) == 1


def test_shortest_interval_wins_and_first_on_ties(casme_grid: PointGrid) -> None:
    i = _index(casme_grid, 16, 24)
    cls, tgt = _assign(casme_grid, [[0, 40], [2, 40]], [1, 2])     # both qualify at point 24
    assert cls[i] == 2 and tgt[i].tolist() == pytest.approx([22 / 16, 1.0])
    cls, tgt = _assign(casme_grid, [[2, 40], [0, 40]], [2, 1])     # order does not matter
    assert cls[i] == 2
    cls, tgt = _assign(casme_grid, [[0, 40], [1, 41]], [1, 2])     # equal length: the first
    assert cls[i] == 1 and tgt[i].tolist() == pytest.approx([24 / 16, 1.0])
    cls, _ = _assign(casme_grid, [[0, 40], [0, 0]], [1, 0])        # empty slots never match
    assert set(cls.tolist()) <= {0, 1}


def test_inside_ratio_and_90_percent_rule() -> None:
    assert inside_ratio([31], [40], 32, 128)[0] == pytest.approx(0.9)      # 9 of 10 frames
    b, c = window_labels(np.array([31, 30, 20, 29]), np.array([40, 39, 49, 59]), np.array([1, 2, 1, 2]), 32, SPEC)
    assert c.tolist() == [1, 2]                       # [31,40] 90 % in, [29,59] 28/31; [30,39] 80 %, [20,49] 60 %
    assert b.tolist() == [[0, 8], [0, 27]]            # relative to frame 32, clipped at 0
    b, c = window_labels(np.array([10, 120]), np.array([129, 139]), np.array([1, 1]), 0, SPEC)
    assert c.tolist() == [1] and b.tolist() == [[10, 127]]     # 118/120 inside, clipped to the last frame


def test_train_and_test_window_grids() -> None:
    ann = pd.DataFrame({"video": ["v"], "subject": ["s"], "onset": [100], "offset": [130], "type": ["macro"]})
    tw = make_train_windows({"v": 200, "empty": 300}, ann, SPEC)
    assert tw.start.tolist() == [0, 16, 32, 48]        # frames 0, 32, 64, 96 hold >= 90 % of [100, 130]
    assert tw.boxes[:, 0].tolist() == [[100, 127], [68, 98], [36, 66], [4, 34]]   # relative, clipped
    assert (tw.valid == 64).all() and set(tw.video) == {"v"}
    assert grid_starts(200, SPEC, 16, align_end=True).tolist() == list(range(0, 137, 8))
    assert grid_starts(203, SPEC, 16, align_end=True).tolist() == list(range(0, 137, 8)) + [139]
    assert grid_starts(64, SPEC, 16, align_end=True).tolist() == [0]
    short = make_test_windows({"s": 30}, SPEC)
    assert short.start.tolist() == [0] and short.valid.tolist() == [30]


def test_short_video_is_padded_and_masked(casme_grid: PointGrid) -> None:
    feats = {"a": np.ones((30, 4), np.float32), "b": np.full((100, 4), 2.0, np.float32)}
    bank = FeatureBank(feats)
    wins = make_test_windows(bank.lengths, SPEC)
    x = bank.gather(bank.rows(wins, SPEC.steps))
    assert x.shape == (len(wins), 64, 4)
    first = x[0]
    assert (first[:30] == 1).all() and (first[30:] == 0).all()          # padding is zeros, never video b
    mask = point_mask(torch.from_numpy(wins.valid), casme_grid, 2)
    assert mask[0].sum() == int((casme_grid.positions < 60).sum()) and mask[1:].all()
