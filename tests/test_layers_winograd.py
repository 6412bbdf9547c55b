"""Winograd F(2x2, 3x3) convolution (workbench/runtime/layers/_winograd.py) against torch.conv2d."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.runtime.layers._base import Scratch, Workspace
from workbench.runtime.layers._winograd import winograd_forward, winograd_weights


@pytest.mark.parametrize("batch, c_in, c_out, height, width, pads, bias", [
    (1, 64, 64, 14, 14, ((1, 1), (1, 1)), False),   # ResNet-like, even sizes
    (1, 64, 64, 56, 56, ((1, 1), (1, 1)), True),    # tile planes 4 KiB apart (padded in scratch), bias
    (2, 40, 48, 15, 9, ((1, 1), (1, 1)), True),     # odd sizes: the last tile row/column is cropped
    (1, 32, 33, 10, 12, ((0, 0), (0, 0)), False),   # valid padding
    (1, 32, 32, 9, 8, ((0, 1), (1, 0)), True),      # asymmetric (SAME-style) padding
])
def test_winograd_matches_torch(batch, c_in, c_out, height, width, pads, bias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, c_in, height, width), dtype=np.float32)
    w = rng.standard_normal((c_out, c_in, 3, 3), dtype=np.float32)
    b = rng.standard_normal(c_out, dtype=np.float32) if bias else None
    (top, bottom), (left, right) = pads
    xt = F.pad(torch.from_numpy(x), (left, right, top, bottom))
    expected = F.conv2d(xt, torch.from_numpy(w), None if b is None else torch.from_numpy(b)).numpy()
    got = winograd_forward(x, winograd_weights(w), pads, expected.shape[2:], b)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_winograd_reuses_its_workspace_across_sizes():
    """Scratch shared with other layers and kept between predictions: a smaller image after a
    larger one must see zero borders, not the larger image's values."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 32, 3, 3), dtype=np.float32)
    u, workspace = winograd_weights(w), Workspace(Scratch())
    for size in (20, 9, 20, 13):
        x = rng.standard_normal((1, 32, size, size), dtype=np.float32)
        expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
        got = winograd_forward(x, u, ((1, 1), (1, 1)), (size, size), None, workspace)
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("declared, size, flexible, transformed_at_load", [
    (16, 16, False, True),      # 16x16 outputs use Winograd: transformed by the load-time shape pass
    (7, 7, False, False),       # 7x7 outputs never do: never transformed (no memory, no load time)
    (7, 16, True, False),       # a flexible input predicted larger than declared: on first use
])
def test_winograd_weights_are_transformed_only_for_layers_that_use_them(declared, size, flexible,
                                                                        transformed_at_load):
    """Through a model: the layer agrees with torch either way, and holds transformed weights
    exactly when its output is large enough for Winograd."""
    from support import exact_rank_builder, predict_builder, set_shape_range
    import workbench as wb
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
    x = rng.standard_normal((1, 64, size, size), dtype=np.float32)
    b = exact_rank_builder({"x": (1, 64, declared, declared)})
    b.add_convolution("conv", kernel_channels=64, output_channels=64, height=3, width=3, stride_height=1,
                      stride_width=1, border_mode="same", groups=1, W=w.transpose(2, 3, 1, 0), b=None,
                      has_bias=False, input_name="x", output_name="output")
    if flexible:
        set_shape_range(b.spec, "x", [(1, 1), (64, 64), (4, 32), (4, 32)])
    model = wb.load(b.spec)
    kernel = model.network.steps[0].kernel
    assert (kernel.winograd is not None) == transformed_at_load
    got = model.predict({"x": x})["output"]
    assert (kernel.winograd is not None) == (size >= 14)
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_an_input_with_inf_or_nan_is_convolved_as_the_formula_says():
    """Winograd's transforms add and subtract a tile's pixels, so one inf turns into inf - inf =
    NaN across its 4x4 tile, beside outputs that never read it. Such an input takes the im2col
    path: non-finite exactly where torch's convolution is, finite values equal."""
    from support import exact_rank_builder
    import workbench as wb
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
    x = rng.standard_normal((1, 64, 16, 16), dtype=np.float32)
    x[0, 3, 5, 7] = np.inf
    x[0, 10, 12, 2] = np.nan
    b = exact_rank_builder({"x": x.shape})
    b.add_convolution("conv", kernel_channels=64, output_channels=64, height=3, width=3, stride_height=1,
                      stride_width=1, border_mode="same", groups=1, W=w.transpose(2, 3, 1, 0), b=None,
                      has_bias=False, input_name="x", output_name="output")
    model = wb.load(b.spec)
    got = model.predict({"x": x})["output"]
    assert model.network.steps[0].kernel.winograd is not None        # a layer that uses Winograd
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    assert np.isfinite(expected).sum() == expected.size - 2 * 9 * 64  # 3x3 outputs read each pixel
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(got[np.isinf(expected)], expected[np.isinf(expected)])
    finite = np.isfinite(expected)
    assert np.abs(got[finite] - expected[finite]).max() <= 1e-5 * np.abs(expected[finite]).max()
    clean = rng.standard_normal(x.shape, dtype=np.float32)           # and a clean input after it
    expected = F.conv2d(torch.from_numpy(clean), torch.from_numpy(w), padding=1).numpy()
    got = model.predict({"x": clean})["output"]
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
