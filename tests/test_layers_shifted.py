"""Convolutions with few output channels as sums of shifted products (layers/_shifted.py), against
torch.nn.functional and, for inputs holding inf and NaN, the convolution's formula in float64."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder

import workbench as wb
from workbench.runtime.layers import _shifted

RTOL, ATOL = 1e-5, 1e-4


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def conv_model(w, x_shape, *, bias=None, dilation=(1, 1), stride=(1, 1), pads=(0, 0, 0, 0), border="valid",
               asym="BOTTOM_RIGHT_HEAVY", groups=1, then_relu=False):
    """One convolution (w in torch's layout [C_out, C_in / groups, kH, kW]), exact-rank input."""
    c_out, kc, kh, kw = w.shape
    b = NeuralNetworkBuilder([("data", datatypes.Array(*x_shape))], [("out", None)],
                             disable_rank5_shape_mapping=True)
    b.add_convolution(
        name="conv", kernel_channels=kc, output_channels=c_out, height=kh, width=kw,
        stride_height=stride[0], stride_width=stride[1], border_mode=border, groups=groups,
        W=w.transpose(2, 3, 1, 0), b=bias, has_bias=bias is not None, input_name="data",
        output_name="conv_out" if then_relu else "out", dilation_factors=list(dilation),
        padding_top=pads[0], padding_bottom=pads[1], padding_left=pads[2], padding_right=pads[3],
        same_padding_asymmetry_mode=asym)
    if then_relu:
        b.add_activation("relu", "RELU", "conv_out", "out")
    return wb.load(b.spec)


def conv_kernel(model):
    return next(s.kernel for s in model.network.steps if s.kind == "convolution")


def took_shifted_path(model):
    """Whether a prediction summed shifted products: their padded planes are in the scratch pool."""
    return "shifted planes" in model.state.scratch._pools


@pytest.mark.parametrize("batch, c_in, c_out, kernel, dilation, size, pads", [
    (1, 64, 3, (9, 9), (1, 1), (40, 37), (4, 4, 4, 4)),     # a style-transfer net's last layer
    (2, 9, 3, (9, 9), (1, 1), (23, 30), (4, 4, 4, 4)),
    (1, 3, 9, (9, 9), (1, 1), (31, 26), (4, 4, 4, 4)),      # three input channels: a short product
    (2, 5, 16, (3, 3), (1, 1), (17, 19), (1, 1, 1, 1)),     # the most output channels it takes
    (1, 1, 1, (3, 3), (1, 1), (8, 9), (0, 0, 0, 0)),
    (1, 7, 4, (5, 3), (2, 1), (21, 14), (3, 1, 0, 2)),      # rectangular, dilated, asymmetric pads
    (1, 6, 5, (2, 4), (1, 3), (12, 25), (0, 2, 5, 1)),
    (1, 6, 3, (3, 3), (2, 3), (19, 23), (2, 2, 3, 3)),      # dilated along both axes
    (3, 33, 7, (3, 3), (1, 1), (70, 65), (1, 1, 1, 1)),     # more positions than a block
])
@pytest.mark.parametrize("with_bias", [False, True])
def test_few_output_channels_take_the_shifted_path_and_match_torch(batch, c_in, c_out, kernel, dilation,
                                                                  size, pads, with_bias):
    r = np.random.default_rng(c_in * 100 + c_out)
    w = (r.standard_normal((c_out, c_in) + kernel) / np.sqrt(c_in * np.prod(kernel))).astype(np.float32)
    bias = r.standard_normal(c_out).astype(np.float32) if with_bias else None
    x = r.standard_normal((batch, c_in) + size).astype(np.float32)
    model = conv_model(w, x.shape, bias=bias, dilation=dilation, pads=pads)
    assert conv_kernel(model).shifted is not None
    xt = F.pad(t(x), (pads[2], pads[3], pads[0], pads[1]))
    expected = F.conv2d(xt, t(w), None if bias is None else t(bias), dilation=dilation).numpy()
    for _ in range(2):                                        # the second run reuses its arrays
        np.testing.assert_allclose(model.predict({"data": x})["out"], expected, rtol=RTOL, atol=ATOL)
    assert took_shifted_path(model)


@pytest.mark.parametrize("c_in, c_out, kernel, stride, dilation, size, pads", [
    (9, 9, (3, 3), (2, 2), (1, 1), (40, 31), (1, 1, 1, 1)),   # a style-transfer net's downsampling layer
    (3, 8, (9, 9), (2, 2), (1, 1), (37, 42), (4, 4, 4, 4)),
    (5, 4, (3, 5), (2, 3), (1, 1), (23, 29), (0, 2, 1, 3)),   # strides differ; asymmetric pads
    (4, 6, (3, 3), (2, 2), (2, 3), (25, 26), (2, 2, 3, 3)),   # dilation with stride: taps in both phases
    (6, 3, (3, 3), (2, 2), (2, 2), (19, 20), (0, 1, 0, 2)),   # dilation 2, stride 2: one phase is read
    (7, 2, (4, 1), (2, 1), (1, 1), (30, 11), (1, 2, 0, 0)),   # one axis strided
])
def test_strided_convolutions_sum_shifted_products_of_stride_phases(c_in, c_out, kernel, stride, dilation,
                                                                   size, pads):
    r = np.random.default_rng(c_in * 10 + c_out)
    w = (r.standard_normal((c_out, c_in) + kernel) / np.sqrt(c_in * np.prod(kernel))).astype(np.float32)
    bias = r.standard_normal(c_out).astype(np.float32)
    x = r.standard_normal((2, c_in) + size).astype(np.float32)
    model = conv_model(w, x.shape, bias=bias, stride=stride, dilation=dilation, pads=pads)
    assert conv_kernel(model).shifted is not None
    xt = F.pad(t(x), (pads[2], pads[3], pads[0], pads[1]))
    expected = F.conv2d(xt, t(w), t(bias), stride=stride, dilation=dilation).numpy()
    for _ in range(2):
        np.testing.assert_allclose(model.predict({"data": x})["out"], expected, rtol=RTOL, atol=ATOL)
    assert took_shifted_path(model)


def test_a_strided_3d_convolution_takes_phases_along_every_axis():
    r = np.random.default_rng(8)
    c_in, c_out, k = 3, 4, (3, 3, 2)
    w = r.standard_normal((c_out, c_in) + k).astype(np.float32)
    x = r.standard_normal((1, c_in, 7, 12, 9)).astype(np.float32)
    b = NeuralNetworkBuilder([("data", datatypes.Array(*x.shape))], [("out", None)],
                             disable_rank5_shape_mapping=True)
    b.add_convolution3d(name="conv3d", input_channels=c_in, output_channels=c_out, depth=k[0], height=k[1],
                        width=k[2], W=w, b=None, has_bias=False, groups=1, stride_depth=2, stride_height=2,
                        stride_width=1, padding_mode="custom", padding_front=1, padding_back=1, padding_top=0,
                        padding_bottom=2, padding_left=1, padding_right=0, input_name="data", output_name="out")
    model = wb.load(b.spec)
    assert next(s.kernel for s in model.network.steps).shifted is not None
    expected = F.conv3d(F.pad(t(x), (1, 0, 0, 2, 1, 1)), t(w), stride=(2, 2, 1)).numpy()
    np.testing.assert_allclose(model.predict({"data": x})["out"], expected, rtol=RTOL, atol=ATOL)
    assert took_shifted_path(model)


def test_a_small_map_under_wide_padding_takes_im2col():
    """A 9x9 kernel on a 5x4 map padded by 4: the rows computed in full would be mostly padding."""
    r = np.random.default_rng(8)
    w = r.standard_normal((2, 8, 9, 9)).astype(np.float32)
    x = r.standard_normal((1, 8, 5, 4)).astype(np.float32)
    model = conv_model(w, x.shape, pads=(4, 4, 4, 4))
    expected = F.conv2d(F.pad(t(x), (4, 4, 4, 4)), t(w)).numpy()
    np.testing.assert_allclose(model.predict({"data": x})["out"], expected, rtol=RTOL, atol=ATOL)
    assert conv_kernel(model).shifted is not None and not took_shifted_path(model)


def test_rank5_sequence_and_batch_axes():
    r = np.random.default_rng(9)
    w = r.standard_normal((4, 3, 3, 3)).astype(np.float32)
    x = r.standard_normal((2, 3, 3, 10, 11)).astype(np.float32)          # [Seq, Batch, C, H, W]
    b = NeuralNetworkBuilder([("data", datatypes.Array(3, 10, 11))], [("out", None)])
    b.add_convolution(name="conv", kernel_channels=3, output_channels=4, height=3, width=3, stride_height=1,
                      stride_width=1, border_mode="same", groups=1, W=w.transpose(2, 3, 1, 0), b=None,
                      has_bias=False, input_name="data", output_name="out")
    model = wb.load(b.spec)
    expected = F.conv2d(t(x.reshape(6, 3, 10, 11)), t(w), padding="same").numpy().reshape(2, 3, 4, 10, 11)
    np.testing.assert_allclose(model.predict({"data": x})["out"], expected, rtol=RTOL, atol=ATOL)
    assert took_shifted_path(model)


def test_limits_check_the_buffers_the_path_allocates():
    """The limit applies to the planes and outputs this path allocates, not to im2col columns it
    never builds (64 x 81 x 40 x 40 floats: 33 MB here)."""
    r = np.random.default_rng(10)
    w = (r.standard_normal((3, 64, 9, 9)) / 72).astype(np.float32)
    x = r.standard_normal((1, 64, 40, 40)).astype(np.float32)
    b = NeuralNetworkBuilder([("data", datatypes.Array(*x.shape))], [("out", None)],
                             disable_rank5_shape_mapping=True)
    b.add_convolution(name="conv", kernel_channels=64, output_channels=3, height=9, width=9, stride_height=1,
                      stride_width=1, border_mode="same", groups=1, W=w.transpose(2, 3, 1, 0), b=None,
                      has_bias=False, input_name="data", output_name="out")
    model = wb.load(b.spec, limits={"max_blob_bytes": 4 << 20})
    expected = F.conv2d(t(x), t(w), padding="same").numpy()
    np.testing.assert_allclose(model.predict({"data": x})["out"], expected, rtol=RTOL, atol=ATOL)
    planes = 64 * (48 * 48 + 8) * 4                           # 590 KB: over this limit, under the input's
    tight = wb.load(b.spec, limits={"max_blob_bytes": planes - 4})
    with pytest.raises(wb.ResourceLimitError, match="shifted-products buffer"):
        tight.predict({"data": x})


def test_weights_given_as_an_input_take_im2col():
    r = np.random.default_rng(11)
    w = r.standard_normal((3, 4, 3, 3)).astype(np.float32)
    x = r.standard_normal((1, 4, 8, 9)).astype(np.float32)
    b = NeuralNetworkBuilder([("data", datatypes.Array(*x.shape)), ("w", datatypes.Array(*w.shape))],
                             [("out", None)], disable_rank5_shape_mapping=True)
    b.add_convolution(name="conv", kernel_channels=4, output_channels=3, height=3, width=3, stride_height=1,
                      stride_width=1, border_mode="valid", groups=1, W=None, b=None, has_bias=False,
                      input_name=["data", "w"], output_name="out")
    model = wb.load(b.spec)
    assert conv_kernel(model).shifted is None
    np.testing.assert_allclose(model.predict({"data": x, "w": w})["out"], F.conv2d(t(x), t(w)).numpy(),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("asym", ["BOTTOM_RIGHT_HEAVY", "TOP_LEFT_HEAVY"])
def test_same_padding(asym):
    """SAME at stride 1 pads (kernel - 1) in all, the odd unit where the asymmetry mode says."""
    r = np.random.default_rng(3)
    w = r.standard_normal((3, 4, 4, 3)).astype(np.float32)
    x = r.standard_normal((1, 4, 11, 10)).astype(np.float32)
    model = conv_model(w, x.shape, border="same", asym=asym)
    assert conv_kernel(model).shifted is not None
    top, left = (2, 1) if asym == "TOP_LEFT_HEAVY" else (1, 1)
    xt = F.pad(t(x), (left, 2 - left, top, 3 - top))
    np.testing.assert_allclose(model.predict({"data": x})["out"], F.conv2d(xt, t(w)).numpy(), rtol=RTOL, atol=ATOL)
    assert took_shifted_path(model)


@pytest.mark.parametrize("c_out, stride, groups, kernel, why", [
    (17, (1, 1), 1, (3, 3), "more output channels than it takes"),
    (16, (2, 2), 1, (3, 3), "strided, from 4 input channels into more than 8 outputs"),
    (4, (3, 3), 1, (2, 2), "a stride past the kernel's reach"),
    (4, (1, 1), 2, (3, 3), "groups"),
    (4, (1, 1), 1, (1, 1), "a 1x1 kernel, which needs no columns"),
])
def test_other_convolutions_keep_their_paths(c_out, stride, groups, kernel, why):
    r = np.random.default_rng(4)
    w = r.standard_normal((c_out, 4 // groups) + kernel).astype(np.float32)
    x = r.standard_normal((1, 4, 9, 9)).astype(np.float32)
    model = conv_model(w, x.shape, stride=stride, groups=groups)
    assert conv_kernel(model).shifted is None, why
    expected = F.conv2d(t(x), t(w), stride=stride, groups=groups).numpy()
    np.testing.assert_allclose(model.predict({"data": x})["out"], expected, rtol=RTOL, atol=ATOL)


def test_three_dimensional_convolution():
    r = np.random.default_rng(5)
    c_in, c_out, k = 6, 5, (2, 3, 3)
    w = r.standard_normal((c_out, c_in) + k).astype(np.float32)
    bias = r.standard_normal(c_out).astype(np.float32)
    x = r.standard_normal((2, c_in, 5, 8, 7)).astype(np.float32)
    b = NeuralNetworkBuilder([("data", datatypes.Array(*x.shape))], [("out", None)],
                             disable_rank5_shape_mapping=True)
    b.add_convolution3d(name="conv3d", input_channels=c_in, output_channels=c_out, depth=k[0], height=k[1],
                        width=k[2], W=w, b=bias, has_bias=True, groups=1, stride_depth=1, stride_height=1,
                        stride_width=1, dilation_depth=1, dilation_height=2, dilation_width=1,
                        padding_mode="custom", padding_front=1, padding_back=0, padding_top=2,
                        padding_bottom=1, padding_left=0, padding_right=3, input_name="data", output_name="out")
    model = wb.load(b.spec)
    assert next(s.kernel for s in model.network.steps).shifted is not None
    xt = F.pad(t(x), (0, 3, 2, 1, 1, 0))
    expected = F.conv3d(xt, t(w), t(bias), dilation=(1, 2, 1)).numpy()
    np.testing.assert_allclose(model.predict({"data": x})["out"], expected, rtol=RTOL, atol=ATOL)
    assert took_shifted_path(model)


def test_inf_and_nan_reach_only_the_outputs_whose_window_holds_them():
    """The outputs past each row's end, computed and dropped, read the next row's pixels: an inf
    there must not leak into a kept output. The reference is the formula, in float64."""
    r = np.random.default_rng(6)
    w = r.standard_normal((2, 3, 3, 3)).astype(np.float32)
    x = r.standard_normal((1, 3, 8, 9)).astype(np.float32)
    x[0, 0, 2, 8] = np.inf            # the last column: padded outputs of the row read it
    x[0, 1, 5, 0] = -np.inf           # the first column
    x[0, 2, 7, 4] = np.nan
    model = conv_model(w, x.shape, pads=(1, 1, 1, 1))
    assert conv_kernel(model).shifted is not None
    xp = np.pad(x[0].astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    expected = np.zeros((2, 8, 9))
    with np.errstate(invalid="ignore"):
        for o in range(2):
            for i in range(8):
                for j in range(9):
                    expected[o, i, j] = np.sum(w[o].astype(np.float64) * xp[:, i:i + 3, j:j + 3])
    got = model.predict({"data": x})["out"][0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)      # equal_nan: infinities must agree
    assert np.isfinite(got).sum() > 0.5 * got.size
    assert took_shifted_path(model)


def test_a_fused_relu_and_trace():
    """predict clamps in the convolution's epilogue; trace shows the convolution's own output."""
    r = np.random.default_rng(7)
    w = r.standard_normal((3, 8, 5, 5)).astype(np.float32)
    bias = r.standard_normal(3).astype(np.float32)
    x = r.standard_normal((1, 8, 16, 13)).astype(np.float32)
    model = conv_model(w, x.shape, bias=bias, pads=(2, 2, 2, 2), then_relu=True)
    assert model.fused_activations == 1 and conv_kernel(model).shifted is not None
    conv = F.conv2d(F.pad(t(x), (2, 2, 2, 2)), t(w), t(bias))
    np.testing.assert_allclose(model.predict({"data": x})["out"], F.relu(conv).numpy(), rtol=RTOL, atol=ATOL)
    traced = model.trace({"data": x})
    np.testing.assert_allclose(traced["conv_out"], conv.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(traced["out"], F.relu(conv).numpy(), rtol=RTOL, atol=ATOL)
    assert took_shifted_path(model)


def test_tap_weights_are_one_row_major_matrix_per_tap():
    w = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)        # [C_out, C_in, kH, kW]
    taps = _shifted.tap_weights(w.reshape(1, 2, -1), 3, (2, 2))
    assert taps.shape == (4, 2, 3) and taps.flags.c_contiguous
    for tap, (dy, dx) in enumerate(np.ndindex(2, 2)):
        np.testing.assert_array_equal(taps[tap], w[:, :, dy, dx])
