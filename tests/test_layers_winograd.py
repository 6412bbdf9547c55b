"""Winograd F(2x2, 3x3) convolution (workbench/runtime/layers/_winograd.py) against torch.conv2d."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.runtime.layers._winograd import winograd_forward, winograd_weights


@pytest.mark.parametrize("batch, c_in, c_out, height, width, pads", [
    (1, 64, 64, 14, 14, ((1, 1), (1, 1))),        # ResNet-like, even sizes
    (2, 40, 48, 15, 9, ((1, 1), (1, 1))),         # odd sizes: the last tile row/column is cropped
    (1, 32, 33, 10, 12, ((0, 0), (0, 0))),        # valid padding
    (1, 32, 32, 9, 8, ((0, 1), (1, 0))),          # asymmetric (SAME-style) padding
])
def test_winograd_matches_torch(batch, c_in, c_out, height, width, pads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, c_in, height, width), dtype=np.float32)
    w = rng.standard_normal((c_out, c_in, 3, 3), dtype=np.float32)
    (top, bottom), (left, right) = pads
    xt = F.pad(torch.from_numpy(x), (left, right, top, bottom))
    expected = F.conv2d(xt, torch.from_numpy(w)).numpy()
    got = winograd_forward(x, winograd_weights(w), pads, expected.shape[2:])
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
