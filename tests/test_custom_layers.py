"""The custom layer implementations shipped in layers/, each against an independent reference.

Unit tests call a layer's methods in MLCustomLayer's order (__init__, set_weight_data,
output_shapes, evaluate into preallocated outputs) with read-only inputs and weights, and compare
with torch (F.silu, F.mish, F.grid_sample, torch.matmul) or with the formula written out here
(Keras slicing, torchvision's deform_conv2d as bilinear samples times mask, summed as a
convolution). End-to-end tests run the real models of ../shared/corpus through wb.load.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import workbench as wb

TESTS = Path(__file__).resolve().parent
LAYERS = TESTS.parent / "layers"
CORPUS = TESTS.parent.parent / "shared" / "corpus"
RNG = np.random.default_rng(20240611)


# ------------------------------------------------------------------ helpers

def layer_class(class_name):
    """The class layers/<class_name>.py defines, imported as a plain module."""
    path = LAYERS / f"{class_name}.py"
    spec = importlib.util.spec_from_file_location(f"custom_layer_files.{class_name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, class_name)


def read_only(array):
    array = np.array(array, dtype=np.float32)
    array.flags.writeable = False
    return array


def run_layer(class_name, inputs, parameters=None, weights=()):
    """One prediction through a layer, called the way Core ML calls it."""
    layer = layer_class(class_name)(dict(parameters or {}))
    layer.set_weight_data([read_only(np.ravel(w)) for w in weights])
    inputs = [read_only(x) for x in inputs]
    shapes = layer.output_shapes([tuple(x.shape) for x in inputs])
    outputs = [np.empty(tuple(s), np.float32) for s in shapes]
    for out in outputs:
        out.fill(np.nan)                     # anything evaluate forgets to write shows up as NaN
    layer.evaluate(inputs, outputs)
    for out in outputs:
        assert out.dtype == np.float32
    return outputs


def corpus(name):
    path = CORPUS / name
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus not found")
    if not path.exists():
        pytest.skip(f"../shared/corpus/{name} not found")
    return path


def custom_layer_proto(spec, class_name):
    nn = getattr(spec, spec.WhichOneof("Type"))
    return next(layer.custom for layer in nn.layers
                if layer.WhichOneof("layer") == "custom" and layer.custom.className == class_name)


def t(array, dtype=torch.float32):
    return torch.from_numpy(np.array(array)).to(dtype)


# ------------------------------------------------------------------ elementwise activations

SHAPES = [(1, 1, 6, 5, 7),        # rank-5 [Seq, Batch, C, H, W]
          (2, 3, 4),              # exact rank
          (10,)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("beta", [0.01, 1.0, 2.5, -0.75])
def test_swish_matches_torch_silu_with_beta(shape, beta):
    x = RNG.normal(0, 4, shape).astype(np.float32)
    (y,) = run_layer("Swish", [x], {"beta": beta})
    # x * sigmoid(beta x) == silu(beta x) / beta
    expected = F.silu(beta * t(x)) / beta
    np.testing.assert_allclose(y, expected.numpy(), rtol=2e-5, atol=1e-6)


def test_swish_default_beta_is_one_and_every_input_has_its_output():
    a = RNG.normal(0, 3, (1, 1, 2, 3, 3)).astype(np.float32)
    b = RNG.normal(0, 3, (1, 1, 4, 1, 1)).astype(np.float32)
    ya, yb = run_layer("Swish", [a, b], {})
    np.testing.assert_allclose(ya, F.silu(t(a)).numpy(), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(yb, F.silu(t(b)).numpy(), rtol=2e-5, atol=1e-6)


def test_swish_and_mish_saturate_without_overflow():
    x = np.array([-1e30, -1e4, -100, -20, 0, 20, 100, 1e4, 1e30], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):     # underflow to 0 is fine
        (swish,) = run_layer("Swish", [x], {"beta": 1.0})
        (mish,) = run_layer("Mish", [x])
    np.testing.assert_allclose(swish, F.silu(t(x)).numpy(), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(mish, F.mish(t(x)).numpy(), rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("shape", SHAPES)
def test_mish_matches_torch(shape):
    x = RNG.normal(0, 5, shape).astype(np.float32)
    (y,) = run_layer("Mish", [x])
    np.testing.assert_allclose(y, F.mish(t(x)).numpy(), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_rescale_output_maps_tanh_range_to_pixels(shape):
    x = np.tanh(RNG.normal(0, 2, shape)).astype(np.float32)
    (y,) = run_layer("RescaleOutputLambda", [x])
    np.testing.assert_allclose(y, ((t(x) + 1) * 127.5).numpy(), rtol=1e-6, atol=1e-5)
    assert y.min() >= 0 and y.max() <= 255


# ------------------------------------------------------------------ ResCropBlockLambda

@pytest.mark.parametrize("batch,height,width,channels",
                         [(1, 12, 12, 64), (2, 5, 9, 3), (1, 4, 6, 2), (1, 3, 8, 1)])
def test_res_crop_is_the_keras_slice_on_nhwc_seen_in_rank5_layout(batch, height, width, channels):
    nhwc = RNG.normal(size=(batch, height, width, channels)).astype(np.float32)
    keras = nhwc[:, 2:-2, 2:-2]                                   # the Lambda's code, on Keras' NHWC
    # The rank-5 Core ML model holds the same tensor as [Seq=1, Batch, C, H, W].
    coreml = nhwc.transpose(0, 3, 1, 2)[None]
    (y,) = run_layer("ResCropBlockLambda", [coreml])
    assert y.shape == (1, batch, channels) + keras.shape[1:3]
    np.testing.assert_array_equal(y, keras.transpose(0, 3, 1, 2)[None])


def test_res_crop_exact_rank_and_crop_parameter():
    x = RNG.normal(size=(2, 3, 10, 11)).astype(np.float32)
    (y,) = run_layer("ResCropBlockLambda", [x], {"crop": 3})
    np.testing.assert_array_equal(y, x[:, :, 3:-3, 3:-3])


# ------------------------------------------------------------------ ChannelAffine (a layer with weights)

@pytest.mark.parametrize("shape", [(1, 1, 4, 5, 6), (2, 4, 3, 3), (4, 2, 7)])
@pytest.mark.parametrize("has_bias", [True, False])
def test_channel_affine_scales_and_shifts_axis_minus_3(shape, has_bias):
    channels = shape[-3]
    x = RNG.normal(size=shape).astype(np.float32)
    scale = RNG.normal(size=channels).astype(np.float32)
    bias = RNG.normal(size=channels).astype(np.float32)
    weights = [scale, bias] if has_bias else [scale]
    (y,) = run_layer("ChannelAffine", [x], {"hasBias": has_bias}, weights)
    expected = t(x) * t(scale).view(-1, 1, 1)
    if has_bias:
        expected = expected + t(bias).view(-1, 1, 1)
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-6, atol=1e-6)


def test_channel_affine_rejects_wrong_weights_and_channel_counts():
    cls = layer_class("ChannelAffine")
    with pytest.raises(ValueError, match="weight blob"):
        cls({"hasBias": True}).set_weight_data([read_only(np.ones(3))])
    layer = cls({})
    layer.set_weight_data([read_only(np.ones(3)), read_only(np.zeros(3))])
    with pytest.raises(ValueError, match="3 channels"):
        layer.output_shapes([(1, 1, 4, 2, 2)])


# ------------------------------------------------------------------ GridSampleLayer

def torch_grid_sample(image, grid_n2hw, mode="bilinear", padding_mode="zeros", align_corners=False):
    """The reference: grid [N, 2, H, W] (the layer's layout) is torch's [N, H, W, 2]."""
    grid = t(grid_n2hw).permute(0, 2, 3, 1)
    return F.grid_sample(t(image), grid, mode=mode, padding_mode=padding_mode,
                         align_corners=align_corners).numpy()


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("padding_mode", [0, 1, 2])
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_matches_torch(mode, padding_mode, align_corners):
    image = RNG.normal(size=(2, 3, 5, 7)).astype(np.float32)
    grid = RNG.uniform(-1.6, 1.6, size=(2, 2, 4, 6)).astype(np.float32)   # some points fall outside
    grid[0, :, 0, :3] = [[-1, 1, 3.5], [1, -1, -7.25]]                      # edges and far outside
    params = {"mode": mode, "padding_mode": padding_mode, "align_corners": align_corners}
    (y,) = run_layer("GridSampleLayer", [image, grid], params)
    expected = torch_grid_sample(image, grid, ["bilinear", "nearest"][mode],
                                 ["zeros", "border", "reflection"][padding_mode], align_corners)
    assert y.shape == (2, 3, 4, 6)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_grid_sample_defaults_are_the_corpus_models_bilinear_zeros_no_align():
    image = RNG.normal(size=(1, 3, 9, 8)).astype(np.float32)
    grid = RNG.uniform(-1.2, 1.2, size=(1, 2, 11, 5)).astype(np.float32)
    grid[0, :, 0, 0] = [1e10, -1e10]                                       # reads only padding
    (y,) = run_layer("GridSampleLayer", [image, grid], {})
    np.testing.assert_allclose(y, torch_grid_sample(image, grid), rtol=1e-5, atol=1e-5)
    assert np.all(y[0, :, 0, 0] == 0)


def test_grid_sample_nearest_rounds_ties_to_even_like_torch():
    image = RNG.normal(size=(1, 1, 8, 8)).astype(np.float32)
    ties = (np.arange(-1, 9) / 4 - 0.75).astype(np.float32)   # pixel coordinates k + 0.5 exactly
    grid = np.stack(np.meshgrid(ties, ties[::-1]))[None].astype(np.float32)
    (y,) = run_layer("GridSampleLayer", [image, grid], {"mode": 1})
    np.testing.assert_array_equal(y, torch_grid_sample(image, grid, "nearest"))


def test_grid_sample_rank5_and_one_grid_for_every_image():
    image = RNG.normal(size=(1, 3, 2, 6, 5)).astype(np.float32)          # [Seq, Batch=3, C, H, W]
    grid = RNG.uniform(-1, 1, size=(1, 1, 2, 4, 4)).astype(np.float32)
    (y,) = run_layer("GridSampleLayer", [image, grid], {})
    expected = torch_grid_sample(image[0], np.repeat(grid[0], 3, axis=0))
    assert y.shape == (1, 3, 2, 4, 4)
    np.testing.assert_allclose(y[0], expected, rtol=1e-5, atol=1e-5)


def test_grid_sample_rejects_bicubic_and_bad_grids():
    cls = layer_class("GridSampleLayer")
    with pytest.raises(ValueError, match="bicubic"):
        cls({"mode": 2})
    with pytest.raises(ValueError, match="grid"):
        cls({}).output_shapes([(1, 3, 4, 4), (1, 3, 4, 4)])


# ------------------------------------------------------------------ dneprDroid_addmm

@pytest.mark.parametrize("a_shape,b_shape", [((1, 1, 1, 27), (1, 1, 27, 256)),     # the corpus model
                                             ((1, 1, 4, 27), (1, 1, 27, 30)),
                                             ((2, 3, 4, 5), (5, 6)),
                                             ((3, 5), (2, 1, 5, 4))])
def test_addmm_is_torch_matmul(a_shape, b_shape):
    a = RNG.normal(size=a_shape).astype(np.float32)
    b = RNG.normal(size=b_shape).astype(np.float32)
    (y,) = run_layer("dneprDroid_addmm", [a, b])
    expected = torch.matmul(t(a), t(b)).numpy()
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_addmm_rejects_mismatched_inner_axes():
    with pytest.raises(ValueError, match="cannot multiply"):
        layer_class("dneprDroid_addmm")({}).output_shapes([(1, 1, 1, 27), (1, 1, 26, 256)])


# ------------------------------------------------------------------ dneprDroid_deform_conv2d

def deform_samples(x, offset, mask, kernel, stride, pad, dilation):
    """torchvision's deform_conv2d sampling, written out: [N, C, kH*kW, outH, outW] in float64.

    value(n, c, tap, oy, ox) = mask * bilinear(x[n, c], y, x) at
    y = oy*sH - pH + i*dH + offset_y, x = ox*sW - pW + j*dW + offset_x, with zero outside the image.
    Bilinear with zeros outside is grid_sample(align_corners=True, padding_mode="zeros") on pixel
    coordinates normalized by (size - 1).
    """
    n, c, h, w = x.shape
    taps = kernel[0] * kernel[1]
    out_h, out_w = offset.shape[-2:]
    groups = offset.shape[1] // (2 * taps)
    xs = t(x, torch.float64)
    oy = torch.arange(out_h, dtype=torch.float64)[:, None]
    ox = torch.arange(out_w, dtype=torch.float64)[None, :]
    result = torch.zeros((n, c, taps, out_h, out_w), dtype=torch.float64)
    per_group = c // groups
    for g in range(groups):
        for tap in range(taps):
            i, j = divmod(tap, kernel[1])
            dy = t(offset[:, g * 2 * taps + 2 * tap], torch.float64)
            dx = t(offset[:, g * 2 * taps + 2 * tap + 1], torch.float64)
            py = oy * stride[0] - pad[0] + i * dilation[0] + dy
            px = ox * stride[1] - pad[1] + j * dilation[1] + dx
            grid = torch.stack([2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], dim=-1)
            channels = slice(g * per_group, (g + 1) * per_group)
            sampled = F.grid_sample(xs[:, channels], grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=True)
            if mask is not None:
                sampled = sampled * t(mask[:, g * taps + tap], torch.float64)[:, None]
            result[:, channels, tap] = sampled
    return result


def deform_params(c, h, w, kernel, stride, pad, dilation, groups, images, use_mask):
    out_h = (h + 2 * pad[0] - (dilation[0] * (kernel[0] - 1) + 1)) // stride[0] + 1
    out_w = (w + 2 * pad[1] - (dilation[1] * (kernel[1] - 1) + 1)) // stride[1] + 1
    taps = kernel[0] * kernel[1]
    out_shape = [1, 1, c * taps, out_w, out_h]       # what the author's converter writes (out_w first)
    return {
        "inChannels": c, "height": h, "width": w, "weightH": kernel[0], "weightW": kernel[1],
        "padH": pad[0], "padW": pad[1], "strideH": stride[0], "strideW": stride[1],
        "dilationH": dilation[0], "dilationW": dilation[1], "outH": out_h, "outW": out_w,
        "parallelImgs": images, "deformableGroup": groups, "useMask": use_mask,
        "offsetShape": str([1, images, groups * 2 * taps, out_h, out_w]),
        "maskShape": str([1, images, groups * taps, out_h, out_w]),
        "outShape": str(list(out_shape)),
    }


DEFORM_CASES = {
    # name: (C, H, W, kernel, stride, pad, dilation, deformable groups, images, mask, out channels)
    "corpus": (3, 18, 18, (3, 3), (1, 1), (0, 0), (1, 1), 1, 1, True, 1),
    "strided": (4, 7, 9, (3, 2), (2, 1), (1, 2), (1, 2), 2, 1, True, 3),
    "no_mask": (2, 6, 5, (2, 3), (1, 2), (1, 1), (2, 1), 1, 1, False, 2),
    "two_images": (4, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), 4, 2, True, 2),
}


@pytest.mark.parametrize("case", list(DEFORM_CASES))
def test_deform_conv2d_columns_reshape_addmm_is_torchvisions_deform_conv2d(case):
    c, h, w, kernel, stride, pad, dilation, groups, images, use_mask, out_c = DEFORM_CASES[case]
    taps = kernel[0] * kernel[1]
    params = deform_params(c, h, w, kernel, stride, pad, dilation, groups, images, use_mask)
    out_h, out_w = params["outH"], params["outW"]
    if images > 1:                 # the converter's outShape ignores parallelImgs; give the full matrix
        params["outShape"] = str([1, 1, c * taps, images * out_h * out_w])
    x = RNG.uniform(0, 1, (images, c, h, w)).astype(np.float32)
    offset = RNG.normal(0, 2, (images, groups * 2 * taps, out_h, out_w)).astype(np.float32)
    offset[..., 0, 0] = np.round(offset[..., 0, 0])                          # whole-pixel offsets too
    mask = RNG.uniform(0, 1, (images, groups * taps, out_h, out_w)).astype(np.float32)
    weight = RNG.normal(size=(out_c, c, kernel[0], kernel[1])).astype(np.float32)
    bias = RNG.normal(size=out_c).astype(np.float32)

    blobs = [offset, mask] if use_mask else [offset]
    (columns,) = run_layer("dneprDroid_deform_conv2d", [x], params, blobs)
    assert columns.shape == tuple(json.loads(params["outShape"]))

    # the rest of the converted graph: reshapeStatic, addmm with the weights, reshape, add bias
    columns_2d = columns.reshape(1, 1, c * taps, images * out_h * out_w)
    (product,) = run_layer("dneprDroid_addmm", [weight.reshape(1, 1, out_c, c * taps), columns_2d])
    out = product.reshape(out_c, images, out_h, out_w).transpose(1, 0, 2, 3) + bias[None, :, None, None]

    samples = deform_samples(x, offset, mask if use_mask else None, kernel, stride, pad, dilation)
    expected_columns = samples.permute(1, 2, 0, 3, 4).reshape(c * taps, images * out_h * out_w)
    np.testing.assert_allclose(columns.reshape(c * taps, -1), expected_columns.numpy(), rtol=1e-5, atol=1e-5)
    # the convolution as a sum over input channels and kernel taps
    expected = (torch.einsum("ock,nckyx->noyx", t(weight, torch.float64).reshape(out_c, c, taps), samples)
                + t(bias, torch.float64)[None, :, None, None])
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_deform_conv2d_with_zero_offsets_and_unit_mask_is_conv2d():
    c, h, w, kernel, stride, pad, dilation = 3, 8, 10, (3, 3), (2, 1), (1, 2), (2, 1)
    params = deform_params(c, h, w, kernel, stride, pad, dilation, 1, 1, True)
    out_h, out_w = params["outH"], params["outW"]
    x = RNG.normal(size=(1, c, h, w)).astype(np.float32)
    weight = RNG.normal(size=(2, c) + kernel).astype(np.float32)
    offsets = np.zeros((1, 2 * 9, out_h, out_w), np.float32)
    mask = np.ones((1, 9, out_h, out_w), np.float32)
    (columns,) = run_layer("dneprDroid_deform_conv2d", [x], params, [offsets, mask])
    out = weight.reshape(2, -1) @ columns.reshape(c * 9, out_h * out_w)
    expected = F.conv2d(t(x), t(weight), stride=stride, padding=pad, dilation=dilation)
    np.testing.assert_allclose(out.reshape(expected.shape), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_deform_conv2d_checks_its_parameters_against_weights_and_input():
    cls = layer_class("dneprDroid_deform_conv2d")
    params = deform_params(3, 18, 18, (3, 3), (1, 1), (0, 0), (1, 1), 1, 1, True)
    with pytest.raises(ValueError, match="outShape"):
        cls(dict(params, outShape="[1, 1, 27, 16, 15]"))
    layer = cls(params)
    with pytest.raises(ValueError, match="offsetShape|shape parameter"):
        layer.set_weight_data([read_only(np.zeros(4607)), read_only(np.zeros(2304))])
    layer.set_weight_data([read_only(np.zeros(4608)), read_only(np.zeros(2304))])
    with pytest.raises(ValueError, match="does not match"):
        layer.output_shapes([(1, 3, 18, 17)])


# ------------------------------------------------------------------ through wb.load (built models)

def builder_model(class_name, input_shape, exact, parameters=None, weights=()):
    from support import custom_only_model
    return custom_only_model([class_name], input_shape=input_shape, exact=exact,
                             parameters=parameters, weights=weights)


@pytest.mark.parametrize("exact", [False, True])
def test_built_models_run_the_layer_files(exact):
    x = RNG.normal(0, 3, (4, 5, 6)).astype(np.float32)
    scale = RNG.normal(size=4).astype(np.float32)
    bias = RNG.normal(size=4).astype(np.float32)
    cases = [("Swish", {"beta": 0.5}, (), F.silu(0.5 * t(x)) / 0.5),
             ("Mish", None, (), F.mish(t(x))),
             ("ChannelAffine", {"hasBias": True}, (scale, bias),
              t(x) * t(scale).view(-1, 1, 1) + t(bias).view(-1, 1, 1)),
             ("RescaleOutputLambda", None, (), (t(x) + 1) * 127.5)]
    for class_name, parameters, weights, expected in cases:
        model = wb.load(builder_model(class_name, x.shape, exact, parameters, weights), layers=str(LAYERS))
        y = model.predict({"x": x})["y"]
        np.testing.assert_allclose(np.reshape(y, x.shape), expected.numpy(), rtol=1e-5, atol=1e-4,
                                   err_msg=class_name)


def test_built_rank5_model_crops_like_keras():
    x = RNG.normal(size=(3, 9, 8)).astype(np.float32)            # [C, H, W] of a rank-5 model
    model = wb.load(builder_model("ResCropBlockLambda", x.shape, exact=False), layers=str(LAYERS))
    y = model.predict({"x": x})["y"]
    keras = x.transpose(1, 2, 0)[None][:, 2:-2, 2:-2]               # the same tensor as Keras' NHWC
    np.testing.assert_array_equal(np.reshape(y, (3, 5, 4)), keras[0].transpose(2, 0, 1))


# ------------------------------------------------------------------ the real models in ../shared/corpus

def test_corpus_swish_model_runs_and_passes_beta():
    from PIL import Image
    path = corpus("hollance_NeuralMcNeuralNet.mlmodel")
    model = wb.load(str(path), layers=str(LAYERS))
    image = Image.open(corpus("floortje.png")).convert("RGB").resize((256, 256))
    blobs = model.trace({"image": image})
    conv = blobs["conv2d_1_output"]
    assert conv.shape == (1, 1, 6, 256, 256)                     # rank-5 [Seq, Batch, C, H, W]
    beta = 0.01                                                  # the file's parameter
    np.testing.assert_allclose(blobs["swish_1_output"], (F.silu(beta * t(conv)) / beta).numpy(),
                               rtol=1e-5, atol=1e-4)
    output = model.predict({"image": image})["output"]
    assert np.shape(output) == (10,)
    assert np.all(np.isfinite(output)) and abs(float(np.sum(output)) - 1) < 1e-5   # softmax


def test_corpus_style_transfer_model_shapes_and_range():
    from PIL import Image
    path = corpus("packt_FastStyleTransferVanGoghStarryNight.mlmodel")
    model = wb.load(str(path), layers=str(LAYERS))
    pixels = RNG.integers(0, 256, (320, 320, 3), dtype=np.uint8)
    blobs = model.trace({"image": Image.fromarray(pixels)})
    for k in range(5):                                           # every residual shortcut crop
        layer_input = {0: "activation_3_output"}.get(k, f"add_{k}_output")
        source, cropped = blobs[layer_input], blobs[f"res_crop_{k}_output"]
        assert cropped.shape == source.shape[:-2] + (source.shape[-2] - 4, source.shape[-1] - 4)
        np.testing.assert_array_equal(cropped, source[..., 2:-2, 2:-2])
    raw = blobs["output"]
    assert raw.shape[-3:] == (3, 320, 320)
    assert raw.min() >= 0 and raw.max() <= 255                   # (tanh + 1) * 127.5
    np.testing.assert_allclose(raw, (t(blobs["conv2d_16__activation___output"]) + 1).numpy() * 127.5,
                               rtol=1e-6, atol=1e-4)
    # (one trace only: predict would run the 16 convolutions again just to make the PIL image)


def test_corpus_grid_sample_model_matches_torch():
    from PIL import Image
    path = corpus("dneprDroid_GridSample_model.mlmodel")
    model = wb.load(str(path), layers=str(LAYERS))
    pixels = RNG.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    warp = RNG.uniform(-1.1, 1.1, (1, 256, 256, 2)).astype(np.float32)
    output = model.predict({"image_input": Image.fromarray(pixels), "warp_grid": warp})["output"]

    # The authors' torch model: nearest x2 resize of the grid, then grid_sample with torch's defaults.
    image = t(pixels).permute(2, 0, 1)[None]
    grid = F.interpolate(t(warp).permute(0, 3, 1, 2), size=(512, 512), mode="nearest").permute(0, 2, 3, 1)
    expected = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    expected = np.clip(np.rint(expected[0].permute(1, 2, 0).numpy()), 0, 255)
    got = np.asarray(output, dtype=np.float32)
    assert got.shape == (512, 512, 3)
    assert np.abs(got - expected).max() <= 1                     # float rounding at pixel conversion


def test_corpus_deform_conv2d_model_matches_torchvision_formula():
    path = corpus("dneprDroid_DeformConv2d_test-model.mlmodel")
    model = wb.load(str(path), layers=str(LAYERS))
    x = RNG.uniform(0, 1, (1, 3, 600, 600)).astype(np.float32)
    blobs = model.trace({"input": x})

    # Constants of the file: the layer's offsets and mask, the conv weights and bias.
    nn = model.spec.neuralNetwork
    deform = custom_layer_proto(model.spec, "dneprDroid_deform_conv2d")
    offset = np.asarray(deform.weights[0].floatValue, np.float32).reshape(1, 18, 16, 16)
    mask = np.asarray(deform.weights[1].floatValue, np.float32).reshape(1, 9, 16, 16)
    constants = {layer.name: np.asarray(layer.loadConstantND.data.floatValue, np.float32)
                 for layer in nn.layers if layer.WhichOneof("layer") == "loadConstantND"}
    weight = constants["30___view_9"].reshape(1, 3, 3, 3)
    bias = constants["30___view_15"].reshape(1)

    # The authors' torch model: bilinear resize to 18 x 18, then deform_conv2d.
    resized = F.interpolate(t(x), size=(18, 18), mode="bilinear", align_corners=False)
    samples = deform_samples(resized.numpy(), offset, mask, (3, 3), (1, 1), (0, 0), (1, 1))
    expected = (torch.einsum("ock,nckyx->noyx", t(weight, torch.float64).reshape(1, 3, 9), samples)
                + float(bias[0]))

    # The custom layer alone, on the blob the runtime fed it (independent of the resize kernel).
    own = deform_samples(blobs["input_1"], offset, mask, (3, 3), (1, 1), (0, 0), (1, 1))
    np.testing.assert_allclose(blobs["30_columns"].reshape(27, 256),
                               own.permute(1, 2, 0, 3, 4).reshape(27, 256).numpy(), rtol=1e-5, atol=1e-5)
    output = model.predict({"input": x})["output"]
    assert np.shape(output) == (1, 1, 16, 16)
    np.testing.assert_allclose(output, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_every_layer_file_defines_the_class_its_name_promises():
    from workbench.runtime.registry import Implementations
    found = Implementations()
    found.add_source(str(LAYERS))
    for path in LAYERS.glob("*.py"):
        assert path.stem in found.classes, f"{path.name} must define className {path.stem}"
    assert {"Swish", "Mish", "ResCropBlockLambda", "RescaleOutputLambda", "GridSampleLayer", "ChannelAffine",
            "dneprDroid_deform_conv2d", "dneprDroid_addmm"} <= set(found.classes)
