"""convolution and convolution3d kernels against torch.nn.functional, through wb.load(...).predict.

Padding amounts for SAME come from NeuralNetwork.proto's SamePadding formulas (written out here);
where torch has the same rule built in (padding="same" at stride 1, ConvTranspose output_padding)
it is used instead.
"""
import contextlib
import io
import warnings

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder, quantization_utils

import workbench as wb

RTOL, ATOL = 1e-5, 1e-4


def rng(seed=0):
    return np.random.default_rng(seed)


def builder(shapes, exact_rank):
    inputs = [(name, datatypes.Array(*shape)) for name, shape in shapes.items()]
    return NeuralNetworkBuilder(inputs, [("out", None)], disable_rank5_shape_mapping=exact_rank)


def predict(b, **inputs):
    return wb.load(b.spec).predict(inputs)["out"]


def same_pads(size, kernel, stride, top_left_heavy):
    """SamePadding from the proto: out = ceil(in / s), total = max(0, (out-1)*s + k - in)."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + kernel - size)
    small = total // 2
    return (total - small, small) if top_left_heavy else (small, total - small)


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def check(actual, expected):
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


def add_conv(b, w, *, groups=1, stride=(1, 1), dilation=(1, 1), bias=None, border="valid",
             pads=(0, 0, 0, 0), asym="BOTTOM_RIGHT_HEAVY", inputs="data"):
    """w in torch layout [C_out, C_in/groups, kH, kW]; the builder takes [kH, kW, C_in/groups, C_out]."""
    c_out, kc, kh, kw = w.shape
    b.add_convolution(
        name="conv", kernel_channels=kc, output_channels=c_out, height=kh, width=kw,
        stride_height=stride[0], stride_width=stride[1], border_mode=border, groups=groups,
        W=None if w is None or not isinstance(inputs, str) else w.transpose(2, 3, 1, 0),
        b=bias, has_bias=bias is not None, input_name=inputs, output_name="out",
        dilation_factors=list(dilation), padding_top=pads[0], padding_bottom=pads[1],
        padding_left=pads[2], padding_right=pads[3], same_padding_asymmetry_mode=asym)


def add_deconv(b, w, *, groups=1, stride=(1, 1), dilation=(1, 1), bias=None, border="valid",
               pads=(0, 0, 0, 0), asym="BOTTOM_RIGHT_HEAVY", output_shape=None):
    """w in torch layout [C_in, C_out/groups, kH, kW]; the builder takes [kH, kW, C_in, C_out/groups]."""
    c_in, og, kh, kw = w.shape
    b.add_convolution(
        name="deconv", kernel_channels=c_in, output_channels=og * groups, height=kh, width=kw,
        stride_height=stride[0], stride_width=stride[1], border_mode=border, groups=groups,
        W=w.transpose(2, 3, 0, 1), b=bias, has_bias=bias is not None, is_deconv=True,
        output_shape=output_shape, input_name="data", output_name="out",
        dilation_factors=list(dilation), padding_top=pads[0], padding_bottom=pads[1],
        padding_left=pads[2], padding_right=pads[3], same_padding_asymmetry_mode=asym)


# ---------------------------------------------------------------- 2-D convolution

CONV_CASES = [
    # (C_in, C_out, groups, kernel, stride, dilation, pads t,b,l,r)
    (4, 6, 1, (3, 3), (1, 1), (1, 1), (0, 0, 0, 0)),
    (4, 6, 1, (3, 2), (2, 1), (1, 1), (1, 2, 0, 3)),
    (4, 6, 2, (3, 3), (1, 2), (2, 1), (1, 1, 1, 1)),
    (6, 9, 3, (2, 2), (2, 2), (1, 2), (0, 1, 1, 0)),
    (4, 8, 4, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),      # depthwise, channel multiplier 2
    (4, 4, 4, (3, 2), (2, 2), (2, 1), (2, 0, 0, 1)),      # depthwise, strided, dilated
    (4, 6, 1, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0)),      # 1x1
    (4, 6, 2, (1, 1), (2, 3), (1, 1), (0, 0, 0, 0)),      # 1x1 strided, grouped
    (4, 6, 1, (1, 1), (1, 1), (1, 1), (1, 0, 2, 1)),      # 1x1 with padding
]


@pytest.mark.parametrize("exact_rank", [False, True])
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_convolution_valid_padding(case, exact_rank, with_bias):
    c_in, c_out, groups, k, stride, dil, pads = case
    r = rng(1)
    w = r.standard_normal((c_out, c_in // groups) + k).astype(np.float32)
    bias = r.standard_normal(c_out).astype(np.float32) if with_bias else None
    shape = (2, c_in, 9, 10) if exact_rank else (c_in, 9, 10)
    x = r.standard_normal(shape).astype(np.float32)
    b = builder({"data": shape}, exact_rank)
    add_conv(b, w, groups=groups, stride=stride, dilation=dil, bias=bias, pads=pads)
    xt = F.pad(t(x if exact_rank else x[None]), (pads[2], pads[3], pads[0], pads[1]))
    ref = F.conv2d(xt, t(w), None if bias is None else t(bias), stride=stride, dilation=dil,
                   groups=groups).numpy()
    check(predict(b, data=x), ref if exact_rank else ref[0])


@pytest.mark.parametrize("asym", ["BOTTOM_RIGHT_HEAVY", "TOP_LEFT_HEAVY"])
@pytest.mark.parametrize("k, stride, dil, groups", [
    ((3, 3), (2, 2), (1, 1), 1), ((4, 2), (1, 3), (1, 1), 2), ((3, 3), (2, 1), (2, 2), 1),
    ((2, 2), (3, 3), (1, 1), 4), ((5, 1), (1, 1), (1, 1), 1)])
@pytest.mark.parametrize("exact_rank", [False, True])
def test_convolution_same_padding(k, stride, dil, groups, asym, exact_rank):
    r = rng(2)
    c_in, c_out = 4, 8
    w = r.standard_normal((c_out, c_in // groups) + k).astype(np.float32)
    shape = (1, c_in, 11, 8) if exact_rank else (c_in, 11, 8)
    x = r.standard_normal(shape).astype(np.float32)
    b = builder({"data": shape}, exact_rank)
    add_conv(b, w, groups=groups, stride=stride, dilation=dil, border="same", asym=asym)
    top_left = asym == "TOP_LEFT_HEAVY"
    eff = [(kk - 1) * d + 1 for kk, d in zip(k, dil)]
    ph = same_pads(11, eff[0], stride[0], top_left)
    pw = same_pads(8, eff[1], stride[1], top_left)
    xt = F.pad(t(x.reshape(1, c_in, 11, 8)), pw + ph)
    ref = F.conv2d(xt, t(w), stride=stride, dilation=dil, groups=groups).numpy()
    assert ref.shape[-2:] == (-(-11 // stride[0]), -(-8 // stride[1]))
    check(predict(b, data=x), ref.reshape((c_out,) + ref.shape[2:]) if not exact_rank else ref)


@pytest.mark.parametrize("k", [(3, 3), (2, 4), (5, 2)])
def test_convolution_same_padding_matches_torch_same_at_stride_1(k):
    """torch's padding='same' (extra unit at the end) is Core ML's BOTTOM_RIGHT_HEAVY."""
    r = rng(3)
    w = r.standard_normal((5, 3) + k).astype(np.float32)
    x = r.standard_normal((2, 3, 7, 9)).astype(np.float32)
    b = builder({"data": x.shape}, True)
    add_conv(b, w, border="same")
    check(predict(b, data=x), F.conv2d(t(x), t(w), padding="same").numpy())


def test_convolution_flattens_leading_axes():
    """Exact-rank inputs of rank > 4: every axis before C is batch."""
    r = rng(4)
    w = r.standard_normal((6, 2, 3, 3)).astype(np.float32)
    x = r.standard_normal((2, 3, 4, 7, 6)).astype(np.float32)
    b = builder({"data": x.shape}, True)
    add_conv(b, w, groups=2, pads=(1, 1, 1, 1))
    ref = F.conv2d(t(x.reshape(6, 4, 7, 6)), t(w), padding=1, groups=2).numpy()
    check(predict(b, data=x), ref.reshape(2, 3, 6, 7, 6))


def test_convolution_rank5_sequence_and_batch():
    """Rank-5 models: [Seq, Batch, C, H, W] blobs, Seq and Batch both batch the convolution."""
    r = rng(5)
    w = r.standard_normal((3, 4, 3, 3)).astype(np.float32)
    x = r.standard_normal((4, 6, 6)).astype(np.float32)
    b = builder({"data": x.shape}, False)
    add_conv(b, w, bias=np.arange(3, dtype=np.float32))
    ref = F.conv2d(t(x[None]), t(w), t(np.arange(3, dtype=np.float32))).numpy()[0]
    check(predict(b, data=x), ref)


@pytest.mark.parametrize("stride, dil, border, pads", [
    ((1, 1), (1, 1), "valid", (0, 0, 0, 0)), ((2, 1), (1, 2), "valid", (1, 0, 0, 2)),
    ((2, 2), (1, 1), "same", (0, 0, 0, 0))])
def test_convolution_weights_as_second_input(stride, dil, border, pads):
    """Spec 4+: the weights blob [C_out, kernelChannels, kH, kW] is the second input."""
    r = rng(6)
    x = r.standard_normal((1, 4, 9, 8)).astype(np.float32)
    w = r.standard_normal((5, 4, 3, 2)).astype(np.float32)
    b = builder({"data": x.shape, "w": w.shape}, True)
    add_conv(b, w, stride=stride, dilation=dil, border=border, pads=pads, inputs=["data", "w"])
    assert len(b.spec.neuralNetwork.layers[0].convolution.weights.floatValue) == 0
    if border == "same":
        eff = [(kk - 1) * d + 1 for kk, d in zip(w.shape[2:], dil)]
        ph, pw = same_pads(9, eff[0], stride[0], False), same_pads(8, eff[1], stride[1], False)
        pads = ph + pw
    xt = F.pad(t(x), (pads[2], pads[3], pads[0], pads[1]))
    ref = F.conv2d(xt, t(w), stride=stride, dilation=dil).numpy()
    check(predict(b, data=x, w=w), ref)


def test_convolution_wrong_weight_count_is_a_format_error():
    r = rng(7)
    b = builder({"data": (1, 4, 6, 6)}, True)
    add_conv(b, r.standard_normal((6, 4, 3, 3)).astype(np.float32))
    del b.spec.neuralNetwork.layers[0].convolution.weights.floatValue[-1]
    with pytest.raises(wb.ModelFormatError, match="conv"):
        wb.load(b.spec)


def test_convolution_wrong_input_channels_names_the_layer():
    b = builder({"data": (1, 3, 6, 6)}, True)
    add_conv(b, np.ones((6, 4, 3, 3), np.float32))
    with pytest.raises(wb.WorkbenchError, match="conv.*channels"):
        wb.load(b.spec).predict({"data": np.ones((1, 3, 6, 6), np.float32)})


@pytest.mark.parametrize("deconv", [False, True])
def test_linear_quantized_weights_per_output_channel(deconv):
    """coremltools' quantize_weights scales convolution weights per output channel: along axis 0
    of [C_out, C_in/g, kH, kW], and along axis 1 of deconvolution's [C_in, C_out/g, kH, kW]."""
    r = rng(17)
    x = r.standard_normal((1, 4, 5, 6)).astype(np.float32)
    channel_scale = np.array([1, 10, 0.1], np.float32)
    b = builder({"data": x.shape}, True)
    if deconv:
        w = r.standard_normal((4, 3, 3, 3)).astype(np.float32) * channel_scale[None, :, None, None]
        add_deconv(b, w, groups=2, stride=(2, 2))
    else:
        w = r.standard_normal((6, 2, 3, 3)).astype(np.float32) * np.tile(channel_scale, 2)[:, None, None, None]
        add_conv(b, w, groups=2)
    with contextlib.redirect_stdout(io.StringIO()):
        spec = quantization_utils.quantize_weights(ct.models.MLModel(b.spec, skip_model_load=True),
                                                   nbits=8, quantization_mode="linear").get_spec()
    wp = spec.neuralNetwork.layers[0].convolution.weights
    axis = 1 if deconv else 0
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    scale = np.array(wp.quantization.linearQuantization.scale, np.float32).reshape(shape)
    bias = np.array(wp.quantization.linearQuantization.bias, np.float32).reshape(shape)
    assert scale.size == w.shape[axis] > 1
    dequantized = np.frombuffer(wp.rawValue, np.uint8).reshape(w.shape) * scale + bias
    if deconv:
        ref = F.conv_transpose2d(t(x), t(dequantized), stride=2, groups=2).numpy()
    else:
        ref = F.conv2d(t(x), t(dequantized), groups=2).numpy()
    check(wb.load(spec).predict({"data": x})["out"], ref)


# ---------------------------------------------------------------- 2-D deconvolution

DECONV_CASES = [
    # (C_in, C_out, groups, kernel, stride, dilation, pads t,b,l,r)
    (4, 6, 1, (3, 3), (1, 1), (1, 1), (0, 0, 0, 0)),
    (4, 6, 1, (3, 2), (2, 3), (1, 1), (1, 1, 0, 1)),
    (4, 6, 2, (3, 3), (2, 2), (1, 1), (2, 3, 2, 3)),
    (6, 3, 3, (2, 3), (3, 1), (2, 1), (0, 1, 1, 0)),      # grouped, dilated
    (4, 4, 4, (4, 4), (2, 2), (1, 1), (1, 1, 1, 1)),      # depthwise transpose
]


@pytest.mark.parametrize("exact_rank", [False, True])
@pytest.mark.parametrize("case", DECONV_CASES)
def test_deconvolution_valid_padding(case, exact_rank):
    """H_out = (H_in - 1) * stride + kernel - (top + bottom): the full transposed convolution,
    cropped by the padding amounts."""
    c_in, c_out, groups, k, stride, dil, pads = case
    r = rng(8)
    w = r.standard_normal((c_in, c_out // groups) + k).astype(np.float32)
    bias = r.standard_normal(c_out).astype(np.float32)
    shape = (2, c_in, 5, 6) if exact_rank else (c_in, 5, 6)
    x = r.standard_normal(shape).astype(np.float32)
    b = builder({"data": shape}, exact_rank)
    add_deconv(b, w, groups=groups, stride=stride, dilation=dil, bias=bias, pads=pads)
    full = F.conv_transpose2d(t(x.reshape((-1, c_in, 5, 6))), t(w), t(bias), stride=stride,
                              dilation=dil, groups=groups).numpy()
    ref = full[:, :, pads[0]:full.shape[2] - pads[1], pads[2]:full.shape[3] - pads[3]]
    check(predict(b, data=x), ref if exact_rank else ref[0])


@pytest.mark.parametrize("asym", ["BOTTOM_RIGHT_HEAVY", "TOP_LEFT_HEAVY"])
@pytest.mark.parametrize("k, stride, groups", [((3, 3), (2, 2), 1), ((4, 3), (2, 1), 2),
                                               ((2, 2), (2, 2), 1), ((1, 2), (3, 3), 1)])
def test_deconvolution_same_padding(k, stride, groups, asym):
    """SAME deconvolution: H_out = H_in * stride, the full result cropped by k - s split per
    asymmetry mode (zero-extended when the kernel is shorter than the stride)."""
    r = rng(9)
    c_in, c_out = 4, 6
    w = r.standard_normal((c_in, c_out // groups) + k).astype(np.float32)
    x = r.standard_normal((1, c_in, 5, 4)).astype(np.float32)
    b = builder({"data": x.shape}, True)
    add_deconv(b, w, groups=groups, stride=stride, border="same", asym=asym)
    full = F.conv_transpose2d(t(x), t(w), stride=stride, groups=groups).numpy()
    ref = np.zeros((1, c_out, 5 * stride[0], 4 * stride[1]), np.float32)
    starts = []
    for axis, (n, s) in enumerate(zip((5, 4), stride)):
        total = max(0, full.shape[2 + axis] - n * s)
        small = total // 2
        starts.append(total - small if asym == "TOP_LEFT_HEAVY" else small)
    window = full[:, :, starts[0]:starts[0] + ref.shape[2], starts[1]:starts[1] + ref.shape[3]]
    ref[:, :, :window.shape[2], :window.shape[3]] = window
    check(predict(b, data=x), ref)


@pytest.mark.parametrize("k, stride, dil, padding, output_padding, groups", [
    ((3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 1),
    ((4, 3), (3, 2), (1, 1), (1, 0), (2, 1), 2),
    ((3, 3), (2, 2), (2, 1), (2, 1), (0, 1), 1),
    ((2, 2), (2, 2), (1, 1), (0, 0), (1, 0), 1)])
def test_deconvolution_output_shape_is_torch_output_padding(k, stride, dil, padding, output_padding, groups):
    """outputShape with valid paddingAmounts: crop `top` at the start, take outputShape rows
    (how coremltools converts ConvTranspose2d(padding, output_padding))."""
    r = rng(10)
    c_in, c_out = 4, 6
    w = r.standard_normal((c_in, c_out // groups) + k).astype(np.float32)
    x = r.standard_normal((1, c_in, 5, 6)).astype(np.float32)
    ref = F.conv_transpose2d(t(x), t(w), stride=stride, padding=padding, output_padding=output_padding,
                             groups=groups, dilation=dil).numpy()
    b = builder({"data": x.shape}, True)
    add_deconv(b, w, groups=groups, stride=stride, dilation=dil,
               pads=(padding[0], padding[0], padding[1], padding[1]), output_shape=ref.shape[2:])
    check(predict(b, data=x), ref)


@pytest.mark.parametrize("asym", ["BOTTOM_RIGHT_HEAVY", "TOP_LEFT_HEAVY"])
def test_deconvolution_output_shape_with_same_padding(asym):
    """outputShape with SAME: the crop is the SAME split of (full - outputShape)."""
    r = rng(11)
    w = r.standard_normal((3, 2, 3, 4)).astype(np.float32)
    x = r.standard_normal((3, 4, 5)).astype(np.float32)
    out_hw = (8, 11)
    b = builder({"data": x.shape}, False)
    add_deconv(b, w, stride=(2, 2), border="same", asym=asym, output_shape=out_hw)
    full = F.conv_transpose2d(t(x[None]), t(w), stride=2).numpy()[0]     # (2, 9, 12)
    starts = []
    for axis in (0, 1):
        total = full.shape[1 + axis] - out_hw[axis]
        starts.append(total - total // 2 if asym == "TOP_LEFT_HEAVY" else total // 2)
    check(predict(b, data=x), full[:, starts[0]:starts[0] + 8, starts[1]:starts[1] + 11])


# ---------------------------------------------------------------- 3-D

def add_conv3d(b, w, *, deconv=False, groups=1, stride=(1, 1, 1), dilation=(1, 1, 1), bias=None,
               padding="valid", pads=(0,) * 6, output_shape=None):
    """w in torch layout; the builder takes conv [C_out, C_in/g, ...] and deconv [C_out/g, C_in, ...]."""
    if deconv:
        c_in, og = w.shape[:2]
        c_out, builder_w = og * groups, w.transpose(1, 0, 2, 3, 4)
    else:
        c_out, c_in, builder_w = w.shape[0], w.shape[1] * groups, w
    b.add_convolution3d(
        name="conv3d", input_channels=c_in, output_channels=c_out, depth=w.shape[2],
        height=w.shape[3], width=w.shape[4], W=builder_w, b=bias, has_bias=bias is not None,
        groups=groups, stride_depth=stride[0], stride_height=stride[1], stride_width=stride[2],
        dilation_depth=dilation[0], dilation_height=dilation[1], dilation_width=dilation[2],
        is_deconv=deconv, output_shape=output_shape, padding_mode=padding,
        padding_front=pads[0], padding_back=pads[1], padding_top=pads[2], padding_bottom=pads[3],
        padding_left=pads[4], padding_right=pads[5], input_name="data", output_name="out")


@pytest.mark.parametrize("padding, pads, k, stride, dil, groups", [
    ("valid", (0,) * 6, (2, 3, 3), (1, 1, 1), (1, 1, 1), 1),
    ("custom", (1, 0, 2, 1, 0, 3), (3, 2, 3), (2, 1, 2), (1, 2, 1), 2),
    ("same", (0,) * 6, (3, 3, 2), (2, 2, 3), (1, 1, 1), 1),
    ("same", (0,) * 6, (2, 3, 3), (1, 2, 1), (2, 1, 1), 4),              # depthwise
    ("custom", (1, 1, 1, 1, 1, 1), (1, 1, 1), (1, 2, 1), (1, 1, 1), 1)])  # 1x1x1
def test_convolution3d(padding, pads, k, stride, dil, groups):
    r = rng(12)
    c_in, c_out = 4, 8
    w = r.standard_normal((c_out, c_in // groups) + k).astype(np.float32)
    bias = r.standard_normal(c_out).astype(np.float32)
    x = r.standard_normal((2, c_in, 6, 7, 5)).astype(np.float32)
    b = builder({"data": x.shape}, True)
    add_conv3d(b, w, groups=groups, stride=stride, dilation=dil, bias=bias, padding=padding, pads=pads)
    if padding == "same":
        eff = [(kk - 1) * d + 1 for kk, d in zip(k, dil)]
        pads = sum((same_pads(n, e, s, False) for n, e, s in zip(x.shape[2:], eff, stride)), ())
    xt = F.pad(t(x), (pads[4], pads[5], pads[2], pads[3], pads[0], pads[1]))
    ref = F.conv3d(xt, t(w), t(bias), stride=stride, dilation=dil, groups=groups).numpy()
    check(predict(b, data=x), ref)


def test_convolution3d_same_padding_proto_example():
    """The proto's example: [1, 3, 3, 8, 8], stride 2, kernel 3, SAME -> [1, 2, 2, 4, 4]."""
    w = rng(13).standard_normal((2, 3, 3, 3, 3)).astype(np.float32)
    x = rng(14).standard_normal((1, 3, 3, 8, 8)).astype(np.float32)
    b = builder({"data": x.shape}, True)
    add_conv3d(b, w, stride=(2, 2, 2), padding="same")
    # front/back 1/1, top/bottom 0/1, left/right 0/1, as the proto spells out
    ref = F.conv3d(F.pad(t(x), (0, 1, 0, 1, 1, 1)), t(w), stride=2).numpy()
    assert ref.shape == (1, 2, 2, 4, 4)
    check(predict(b, data=x), ref)


@pytest.mark.parametrize("padding, torch_pad, k, stride, dil, groups, output_padding", [
    ("valid", (0, 0, 0), (2, 3, 3), (1, 2, 1), (1, 1, 1), 1, None),
    ("custom", (1, 2, 1), (3, 3, 4), (2, 2, 2), (1, 1, 1), 2, None),
    ("custom", (1, 0, 1), (3, 2, 2), (2, 1, 2), (2, 1, 1), 1, (1, 0, 1)),   # with outputShape
    ("custom", (2, 2, 2), (2, 2, 2), (2, 1, 1), (2, 1, 1), 2, (0, 0, 0))])  # coremltools' own config
def test_deconvolution3d(padding, torch_pad, k, stride, dil, groups, output_padding):
    r = rng(15)
    c_in, c_out = 4, 6
    w = r.standard_normal((c_in, c_out // groups) + k).astype(np.float32)
    bias = r.standard_normal(c_out).astype(np.float32)
    x = r.standard_normal((1, c_in, 5, 6, 5)).astype(np.float32)
    ref = F.conv_transpose3d(t(x), t(w), t(bias), stride=stride, padding=torch_pad, dilation=dil,
                             groups=groups, output_padding=output_padding or 0).numpy()
    b = builder({"data": x.shape}, True)
    add_conv3d(b, w, deconv=True, groups=groups, stride=stride, dilation=dil, bias=bias,
               padding=padding, pads=sum(((p, p) for p in torch_pad), ()),
               output_shape=ref.shape[2:] if output_padding else None)
    check(predict(b, data=x), ref)


def test_deconvolution3d_same_padding():
    r = rng(16)
    w = r.standard_normal((2, 3, 3, 4, 2)).astype(np.float32)
    x = r.standard_normal((1, 2, 3, 4, 3)).astype(np.float32)
    b = builder({"data": x.shape}, True)
    add_conv3d(b, w, deconv=True, stride=(2, 2, 2), padding="same")
    full = F.conv_transpose3d(t(x), t(w), stride=2).numpy()           # (1, 3, 7, 10, 6)
    starts = [(full.shape[2 + i] - n * 2) // 2 for i, n in enumerate(x.shape[2:])]
    ref = full[:, :, starts[0]:starts[0] + 6, starts[1]:starts[1] + 8, starts[2]:starts[2] + 6]
    check(predict(b, data=x), ref)


# ---------------------------------------------------------------- as coremltools converts PyTorch

def converted_agrees(module, *examples):
    """Trace, convert with coremltools (neuralnetwork), run here, compare with the module."""
    module = module.eval()
    inputs = [ct.TensorType(name=f"in{i}", shape=x.shape) for i, x in enumerate(examples)]
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        spec = ct.convert(torch.jit.trace(module, examples), inputs=inputs,
                          convert_to="neuralnetwork").get_spec()
    with torch.no_grad():
        expected = module(*examples).numpy()
    kinds = {layer.WhichOneof("layer") for layer in spec.neuralNetwork.layers}
    out = wb.load(spec).predict({f"in{i}": x.numpy() for i, x in enumerate(examples)})
    check(out[spec.description.output[0].name], expected)
    return kinds


class Conv2dChain(torch.nn.Module):
    """Grouped deconvolution with output_padding, dilated deconvolution, depthwise convolution,
    then a convolution whose weights are the second model input."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.dilated = torch.nn.ConvTranspose2d(6, 4, 3, stride=2, dilation=2, padding=2)
        self.depthwise = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=4)

    def forward(self, x, w):
        return F.conv2d(self.depthwise(self.dilated(self.up(x))), w, stride=2, padding=1)


class Conv3dChain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(4, 6, (2, 3, 3), stride=(1, 2, 2), padding=(1, 1, 0), groups=2)
        self.deconv = torch.nn.ConvTranspose3d(6, 4, 3, stride=2, padding=1, groups=2)

    def forward(self, x):
        return self.deconv(self.conv(x))


@pytest.mark.parametrize("module, shapes, kind", [
    (Conv2dChain, [(1, 4, 5, 6), (3, 8, 3, 3)], "convolution"),
    (Conv3dChain, [(1, 4, 4, 7, 6)], "convolution3d")])
def test_pytorch_conversions(module, shapes, kind):
    torch.manual_seed(0)
    assert kind in converted_agrees(module(), *[torch.randn(*s) for s in shapes])


@pytest.mark.parametrize("batch, channels, size, kernel, stride, dil, pads", [
    (1, 96, 28, (3, 3), 1, 1, (1, 1, 1, 1)),      # many channels, small maps
    (1, 128, 15, (3, 3), 2, 2, (1, 1, 1, 1)),     # strided and dilated
    (1, 32, 56, (3, 3), 1, 1, (1, 1, 1, 1)),      # planes of several 512-output blocks
    (1, 16, 112, (3, 3), 2, 1, (1, 1, 1, 1)),     # strided: four stride phases
    (1, 8, 23, (3, 3), 3, 2, (1, 1, 1, 1)),       # stride 3, dilation 2: taps spread over phases unevenly
    (3, 5, 17, (5, 2), 1, 1, (2, 0, 1, 0)),       # a batch (planes = N * C), asymmetric kernel and pads
])
def test_depthwise_paths_match_torch(batch, channels, size, kernel, stride, dil, pads):
    r = rng(3)
    w = r.standard_normal((channels, 1) + kernel).astype(np.float32)
    bias = r.standard_normal(channels).astype(np.float32)
    x = r.standard_normal((batch, channels, size, size)).astype(np.float32)
    b = builder({"data": x.shape}, True)
    add_conv(b, w, groups=channels, stride=(stride, stride), dilation=(dil, dil), pads=pads, bias=bias)
    top, bottom, left, right = pads
    ref = F.conv2d(F.pad(t(x), (left, right, top, bottom)), t(w), t(bias), stride=stride, dilation=dil,
                   groups=channels).numpy()
    check(predict(b, data=x), ref)


# ---------------------------------------------------------------- fused activations (fusion.fuse_activations)

def _conv_then(activation, w, groups, stride, pads, bias, x, extra=None):
    """data -> conv ("conv_out") -> ReLU or clip ("out"); ``extra``: "second reader" (an add
    also reads conv_out) or "output" (conv_out is a model output too)."""
    outputs = [("out", None)] + ([("conv_out", None)] if extra == "output" else [])
    b = NeuralNetworkBuilder([("data", datatypes.Array(*x.shape))], outputs, disable_rank5_shape_mapping=True)
    c_out, kc, kh, kw = w.shape
    b.add_convolution(name="conv", kernel_channels=kc, output_channels=c_out, height=kh, width=kw,
                      stride_height=stride, stride_width=stride, border_mode="valid", groups=groups,
                      W=w.transpose(2, 3, 1, 0), b=bias, has_bias=bias is not None, input_name="data",
                      output_name="conv_out", padding_top=pads, padding_bottom=pads, padding_left=pads,
                      padding_right=pads)
    target = "act" if extra == "second reader" else "out"
    if activation == "relu":
        b.add_activation("relu", "RELU", "conv_out", target)
    else:
        b.add_clip("clip", "conv_out", target, *activation)
    if extra == "second reader":
        b.add_elementwise("sum", ["act", "conv_out"], "out", "ADD")
    return wb.load(b.spec)


@pytest.mark.parametrize("activation", ["relu", (0.0, 6.0), (1.0, -1.0)])   # low > high: high wins
@pytest.mark.parametrize("channels, groups, kernel, size, stride, pads, path", [
    (8, 8, 3, 20, 2, 1, "depthwise"),
    (32, 1, 3, 16, 1, 1, "winograd"),
    (6, 1, 3, 15, 2, 1, "im2col"),
    (6, 1, 1, 9, 1, 0, "1x1"),
])
@pytest.mark.parametrize("with_bias", [False, True])
def test_activation_fused_into_its_convolution(activation, channels, groups, kernel, size, stride, pads, path,
                                               with_bias):
    """predict computes the pair in the convolution; trace still shows the convolution's own output."""
    r = rng(5)
    w = r.standard_normal((channels, channels // groups, kernel, kernel)).astype(np.float32)
    bias = r.standard_normal(channels).astype(np.float32) if with_bias else None
    x = r.standard_normal((1, channels, size, size)).astype(np.float32)
    model = _conv_then(activation, w, groups, stride, pads, bias, x)
    assert model.fused_activations == 1
    conv = F.conv2d(F.pad(t(x), (pads,) * 4), t(w), None if bias is None else t(bias), stride=stride,
                    groups=groups)
    expected = F.relu(conv) if activation == "relu" else \
        torch.minimum(torch.maximum(conv, torch.tensor(activation[0])), torch.tensor(activation[1]))
    kernel_obj = next(s.kernel for s in model.network.steps if s.kind == "convolution")
    assert kernel_obj.depthwise == (path == "depthwise")
    assert (kernel_obj.winograd is not None) == (path == "winograd")
    for _ in range(2):                                       # reused arrays: the second run too
        check(model.predict({"data": x})["out"], expected.numpy())
    traced = model.trace({"data": x})
    check(traced["conv_out"], conv.numpy())
    check(traced["out"], expected.numpy())


@pytest.mark.parametrize("activation", ["relu", (-0.5, 0.5)])
def test_activation_fused_into_a_depthwise_layer_with_a_channel_multiplier(activation):
    """Two outputs per input channel: the strided-taps path, whose bias and clamp are one pass."""
    r = rng(7)
    w = r.standard_normal((8, 1, 3, 3)).astype(np.float32)       # 4 groups, 2 outputs each
    bias = r.standard_normal(8).astype(np.float32)
    x = r.standard_normal((1, 4, 9, 9)).astype(np.float32)
    model = _conv_then(activation, w, 4, 1, 1, bias, x)
    assert model.fused_activations == 1
    conv = F.conv2d(t(x), t(w), t(bias), padding=1, groups=4)
    expected = F.relu(conv) if activation == "relu" else torch.clamp(conv, *activation)
    check(model.predict({"data": x})["out"], expected.numpy())
    check(model.trace({"data": x})["conv_out"], conv.numpy())


@pytest.mark.parametrize("extra", ["second reader", "output"])
def test_activation_is_not_fused_where_its_input_is_read_elsewhere(extra):
    r = rng(6)
    w = r.standard_normal((4, 4, 3, 3)).astype(np.float32)
    x = r.standard_normal((1, 4, 7, 7)).astype(np.float32)
    model = _conv_then("relu", w, 1, 1, 1, None, x, extra)
    assert model.fused_activations == 0
    conv = F.conv2d(t(x), t(w), padding=1)
    got = model.predict({"data": x})
    if extra == "second reader":
        check(got["out"], (F.relu(conv) + conv).numpy())
    else:
        check(got["out"], F.relu(conv).numpy())
        check(got["conv_out"], conv.numpy())


@pytest.mark.parametrize("activation", ["relu", (0.0, 6.0), (-1.0, 6.0)])
@pytest.mark.parametrize("c_in, groups, kernel, bias, negative", [
    (4, 4, 1, -0.0, True),          # depthwise, bias -0: every output -0
    (4, 1, 1, -0.0, False),         # BLAS's 1x1 product gives +0
    (2, 2, 3, None, True),          # a channel multiplier (its sums start with the first product), no bias
])
def test_fused_activation_keeps_the_sign_of_zero_of_its_layer(activation, c_in, groups, kernel, bias, negative):
    """ReLU is np.maximum(x, 0), +0 for a -0 input; clip is np.clip, which keeps -0 (weights -1
    on zeros make each output a zero of some sign)."""
    x = np.zeros((1, c_in, 6, 6), np.float32)
    b = NeuralNetworkBuilder([("data", datatypes.Array(*x.shape))], [("out", None)], disable_rank5_shape_mapping=True)
    b.add_convolution(name="conv", kernel_channels=c_in // groups, output_channels=4, height=kernel, width=kernel,
                      stride_height=1, stride_width=1, border_mode="same", groups=groups,
                      W=-np.ones((kernel, kernel, c_in // groups, 4), np.float32),
                      b=None if bias is None else np.full(4, bias, np.float32), has_bias=bias is not None,
                      input_name="data", output_name="conv_out")
    if activation == "relu":
        b.add_activation("relu", "RELU", "conv_out", "out")
    else:
        b.add_clip("clip", "conv_out", "out", *activation)
    model = wb.load(b.spec)
    assert model.fused_activations == 1
    traced = model.trace({"data": x})
    conv = traced["conv_out"]
    assert np.signbit(conv).all() == negative
    expected = np.maximum(conv, np.float32(0)) if activation == "relu" else np.clip(conv, *np.float32(activation))
    np.testing.assert_array_equal(np.signbit(model.predict({"data": x})["out"]), np.signbit(expected))
    np.testing.assert_array_equal(np.signbit(traced["out"]), np.signbit(expected))


def test_activations_are_not_fused_with_a_later_layer_or_a_nan_bound():
    """A ReLU reading the model input, which a later convolution overwrites, and clips whose
    bound is NaN (np.clip gives NaN everywhere) stay as written."""
    x = np.array([[[[-1., 2.], [-3., 4.]]]], np.float32)
    b = NeuralNetworkBuilder([("data", datatypes.Array(1, 1, 2, 2))], [("out", None), ("low", None)],
                             disable_rank5_shape_mapping=True)
    b.add_activation("relu", "RELU", "data", "out")
    b.add_convolution(name="conv", kernel_channels=1, output_channels=1, height=1, width=1, stride_height=1,
                      stride_width=1, border_mode="valid", groups=1, W=np.ones((1, 1, 1, 1), np.float32),
                      b=None, has_bias=False, input_name="out", output_name="data")
    b.add_convolution(name="conv2", kernel_channels=1, output_channels=1, height=1, width=1, stride_height=1,
                      stride_width=1, border_mode="valid", groups=1, W=np.ones((1, 1, 1, 1), np.float32),
                      b=None, has_bias=False, input_name="out", output_name="conv2_out")
    b.add_clip("clip", "conv2_out", "low", float("nan"), 1.0)
    model = wb.load(b.spec)
    assert model.fused_activations == 0
    got = model.predict({"data": x})
    np.testing.assert_array_equal(got["out"], np.maximum(x, 0))
    assert np.isnan(got["low"]).all()


# ---------------------------------------------------------------- im2col in bands of output rows

@pytest.mark.parametrize("column_bytes", [1, 4000])                # one output row a band; a few rows
@pytest.mark.parametrize("c_in, c_out, groups, k, stride, dil, pads", [
    (4, 20, 1, (3, 3), (1, 1), (1, 1), (1, 2, 0, 1)),
    (6, 24, 2, (3, 2), (2, 1), (1, 2), (0, 1, 2, 0)),
    (3, 32, 1, (5, 5), (3, 2), (2, 1), (2, 2, 2, 2)),
])
def test_im2col_in_bands_of_output_rows(monkeypatch, column_bytes, c_in, c_out, groups, k, stride, dil, pads):
    """Columns for a band of output rows at a time (_im2col.COLUMN_BYTES), made tiny here so that
    every layer takes several bands and a last, shorter one."""
    from workbench.runtime.layers import _im2col
    monkeypatch.setattr(_im2col, "COLUMN_BYTES", column_bytes)
    r = rng(21)
    w = r.standard_normal((c_out, c_in // groups) + k).astype(np.float32)
    bias = r.standard_normal(c_out).astype(np.float32)
    x = r.standard_normal((2, c_in, 17, 13)).astype(np.float32)
    b = builder({"data": x.shape}, True)
    add_conv(b, w, groups=groups, stride=stride, dilation=dil, bias=bias, pads=pads)
    model = wb.load(b.spec)
    xt = F.pad(t(x), (pads[2], pads[3], pads[0], pads[1]))
    expected = F.conv2d(xt, t(w), t(bias), stride=stride, dilation=dil, groups=groups).numpy()
    for _ in range(2):
        check(model.predict({"data": x})["out"], expected)
    assert _im2col.band_rows(2, c_in, k, expected.shape[2:]) < expected.shape[2]


def test_the_im2col_limit_applies_to_one_band(monkeypatch):
    """A layer whose columns for every output row at once pass max_blob_bytes runs, a band at a
    time, when one band fits: 3 -> 24 channels, 9x9, 200x200 needs 39 MB of columns in all, and
    bands of 8 MB here (43 rows)."""
    from workbench.runtime.layers import _im2col
    monkeypatch.setattr(_im2col, "COLUMN_BYTES", 8 << 20)
    r = rng(22)
    w = (r.standard_normal((24, 3, 9, 9)) / 15).astype(np.float32)
    x = r.standard_normal((1, 3, 200, 200)).astype(np.float32)
    b = builder({"data": x.shape}, True)
    add_conv(b, w, border="same")
    model = wb.load(b.spec, limits={"max_blob_bytes": 16 << 20})
    check(model.predict({"data": x})["out"], F.conv2d(t(x), t(w), padding="same").numpy())
    assert 3 * 81 * 200 * 200 * 4 > 16 << 20
