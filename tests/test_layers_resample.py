"""upsample, resizeBilinear, cropResize, padding, constantPad, crop and reorganizeData kernels,
through wb.load(...).predict.

References: torch.nn.functional interpolate / pad / pixel_shuffle / pixel_unshuffle; for grids
that torch has no mode for, the grid is written from NeuralNetwork.proto's formulas and sampled
with torch's grid_sample (bilinear, align_corners=True, border clamping), an independent
bilinear interpolator. Literal values from the proto's examples and from coremltools' own
MIL tests pin the conventions down.
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
from coremltools.models.neural_network import NeuralNetworkBuilder

import workbench as wb

RTOL, ATOL = 1e-5, 1e-5


def builder(shapes, exact_rank):
    inputs = [(name, datatypes.Array(*shape)) for name, shape in shapes.items()]
    return NeuralNetworkBuilder(inputs, [("out", None)], disable_rank5_shape_mapping=exact_rank)


def predict(b, **inputs):
    return wb.load(b.spec).predict(inputs)["out"]


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def check(actual, expected, atol=ATOL):
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=atol)


def sample(images, ys, xs):
    """Bilinear samples of images [N, C, H, W] at rows ys [N, h] x columns xs [N, w] (pixel
    coordinates, clamped at the border), by torch grid_sample."""
    n, _, height, width = images.shape
    gy = 2 * np.asarray(ys, np.float64) / max(height - 1, 1) - 1
    gx = 2 * np.asarray(xs, np.float64) / max(width - 1, 1) - 1
    grid = np.stack(np.broadcast_arrays(gx[:, None, :], gy[:, :, None]), axis=-1)
    return F.grid_sample(t(images), t(grid), mode="bilinear", padding_mode="border",
                         align_corners=True).numpy()


def grid(start, end, n, mode):
    """SamplingMode grid on [start, end], written out from the proto's linspace formulas."""
    x_minus_1 = end - start
    if mode == "STRICT_ALIGN_ENDPOINTS_MODE":
        g = np.linspace(0, x_minus_1, n)
    elif mode == "ALIGN_ENDPOINTS_MODE":
        g = np.array([x_minus_1 / 2]) if n == 1 else np.linspace(0, x_minus_1, n)
    elif mode == "UPSAMPLE_MODE":
        g = np.minimum(x_minus_1, np.linspace(0, (x_minus_1 + 1) - (x_minus_1 + 1) / n, n))
    else:  # ROI_ALIGN_MODE
        spacing = max(1, x_minus_1) / n
        g = np.minimum(x_minus_1, np.linspace(0.5 * spacing, 0.5 * spacing + (n - 1) * spacing, n))
    return start + g


# ---------------------------------------------------------------- upsample

@pytest.mark.parametrize("exact_rank", [False, True])
@pytest.mark.parametrize("factors", [(2, 2), (1, 3), (3, 1)])
def test_upsample_nearest(factors, exact_rank):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5) if exact_rank else (3, 4, 5)).astype(np.float32)
    b = builder({"data": x.shape}, exact_rank)
    b.add_upsample(name="up", scaling_factor_h=factors[0], scaling_factor_w=factors[1],
                   input_name="data", output_name="out", mode="NN")
    ref = F.interpolate(t(x if exact_rank else x[None]), scale_factor=factors, mode="nearest").numpy()
    check(predict(b, data=x), ref if exact_rank else ref[0])


@pytest.mark.parametrize("align", ["ALIGN_CORNERS_TRUE", "ALIGN_CORNERS_FALSE"])
@pytest.mark.parametrize("factors", [(2, 3), (1, 2), (2.5, 1.5), (1.75, 3.3), (0.5, 0.75)])
@pytest.mark.parametrize("exact_rank", [False, True])
def test_upsample_bilinear_align_corners(factors, align, exact_rank):
    """Output size floor(in * factor); ALIGN_CORNERS_* are torch's align_corners at that size."""
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 8) if exact_rank else (3, 6, 8)).astype(np.float32)
    b = builder({"data": x.shape}, exact_rank)
    b.add_upsample(name="up", scaling_factor_h=factors[0], scaling_factor_w=factors[1],
                   input_name="data", output_name="out", mode="BILINEAR", linear_upsample_mode=align)
    size = (int(np.floor(6 * factors[0])), int(np.floor(8 * factors[1])))
    ref = F.interpolate(t(x if exact_rank else x[None]), size=size, mode="bilinear",
                        align_corners=align == "ALIGN_CORNERS_TRUE").numpy()
    check(predict(b, data=x), ref if exact_rank else ref[0])


@pytest.mark.parametrize("factors", [(2, 2), (3, 1), (1, 4)])
def test_upsample_bilinear_default_mode(factors):
    """DEFAULT: grid_point[i] = min(Xin - 1, i * (Xin - Xin/Xout) / (Xout - 1))."""
    x = np.random.default_rng(2).standard_normal((3, 4, 5)).astype(np.float32)
    b = builder({"data": x.shape}, False)
    b.add_upsample(name="up", scaling_factor_h=factors[0], scaling_factor_w=factors[1],
                   input_name="data", output_name="out", mode="BILINEAR")

    def points(n_in, n_out):
        spacing = (n_in - n_in / n_out) / (n_out - 1) if n_out > 1 else 0
        return np.minimum(n_in - 1, np.arange(n_out) * spacing)

    ys, xs = points(4, 4 * factors[0]), points(5, 5 * factors[1])
    ref = sample(x[None], ys[None], xs[None])[0]
    check(predict(b, data=x), ref)


def test_upsample_bilinear_coremltools_examples():
    """coremltools' MIL tests: [0, 1] x3 align corners -> 0 .. 1 in fifths; x2.6 unaligned."""
    x = np.array([0, 1], np.float32).reshape(1, 1, 2)
    b = builder({"data": x.shape}, True)
    b.add_upsample(name="up", scaling_factor_h=1, scaling_factor_w=3, input_name="data",
                   output_name="out", mode="BILINEAR", linear_upsample_mode="ALIGN_CORNERS_TRUE")
    check(predict(b, data=x), np.array([0, 0.2, 0.4, 0.6, 0.8, 1], np.float32).reshape(1, 1, 6))
    b = builder({"data": x.shape}, True)
    b.add_upsample(name="up", scaling_factor_h=1.0, scaling_factor_w=2.6, input_name="data",
                   output_name="out", mode="BILINEAR", linear_upsample_mode="ALIGN_CORNERS_FALSE")
    check(predict(b, data=x), np.array([0, 0.1, 0.5, 0.9, 1], np.float32).reshape(1, 1, 5))


# ---------------------------------------------------------------- resizeBilinear

MODES = ["STRICT_ALIGN_ENDPOINTS_MODE", "ALIGN_ENDPOINTS_MODE", "UPSAMPLE_MODE", "ROI_ALIGN_MODE"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("target", [(9, 4), (1, 1), (3, 12), (5, 7)])
@pytest.mark.parametrize("exact_rank", [False, True])
def test_resize_bilinear(mode, target, exact_rank):
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 7) if exact_rank else (3, 5, 7)).astype(np.float32)
    b = builder({"data": x.shape}, exact_rank)
    b.add_resize_bilinear(name="resize", input_name="data", output_name="out",
                          target_height=target[0], target_width=target[1], mode=mode)
    x4 = x if exact_rank else x[None]
    ys, xs = grid(0, 4, target[0], mode), grid(0, 6, target[1], mode)
    ref = sample(x4.reshape(-1, 5, 7)[:, None], np.tile(ys, (x4.shape[0] * 3, 1)),
                 np.tile(xs, (x4.shape[0] * 3, 1))).reshape(x4.shape[:2] + target)
    check(predict(b, data=x), ref if exact_rank else ref[0])


@pytest.mark.parametrize("mode, expected", [
    ("STRICT_ALIGN_ENDPOINTS_MODE", [0, 0.25, 0.5, 0.75, 1]),
    ("ALIGN_ENDPOINTS_MODE", [0, 0.25, 0.5, 0.75, 1]),
    ("UPSAMPLE_MODE", [0, 0.4, 0.8, 1, 1]),
    ("ROI_ALIGN_MODE", [0.1, 0.3, 0.5, 0.7, 0.9])])
def test_resize_bilinear_coremltools_examples(mode, expected):
    """The grids of [0, 1] resized to 5 that coremltools' resize_bilinear tests expect."""
    x = np.array([0, 1], np.float32).reshape(1, 1, 2)
    b = builder({"data": x.shape}, True)
    b.add_resize_bilinear(name="resize", input_name="data", output_name="out",
                          target_height=1, target_width=5, mode=mode)
    check(predict(b, data=x), np.array(expected, np.float32).reshape(1, 1, 5))


# ---------------------------------------------------------------- cropResize

COORD_MODES = ["CORNERS_HEIGHT_FIRST", "CORNERS_WIDTH_FIRST", "CENTER_SIZE_HEIGHT_FIRST",
               "CENTER_SIZE_WIDTH_FIRST"]


def encode_boxes(corners, mode):
    """Corner boxes (h0, w0, h1, w1) in the given BoxCoordinatesMode."""
    h0, w0, h1, w1 = np.asarray(corners, np.float64).T
    return np.stack({
        "CORNERS_HEIGHT_FIRST": (h0, w0, h1, w1),
        "CORNERS_WIDTH_FIRST": (w0, h0, w1, h1),
        "CENTER_SIZE_HEIGHT_FIRST": ((h0 + h1) / 2, (w0 + w1) / 2, h1 - h0, w1 - w0),
        "CENTER_SIZE_WIDTH_FIRST": ((w0 + w1) / 2, (h0 + h1) / 2, w1 - w0, h1 - h0)}[mode], axis=1)


CORNERS = np.array([[0.5, 1.0, 4.0, 6.5], [2.0, 0.0, 3.0, 2.0], [1.0, 2.0, 5.0, 7.0]])


@pytest.mark.parametrize("coord_mode", COORD_MODES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("normalized, spatial_scale", [(False, 1.0), (True, 1.0), (False, 0.5)])
@pytest.mark.parametrize("with_index", [False, True])
def test_crop_resize(coord_mode, mode, normalized, spatial_scale, with_index):
    rng = np.random.default_rng(4)
    batch, channels, height, width = 2, 3, 6, 8
    x = rng.standard_normal((1, batch, channels, height, width)).astype(np.float32)
    target = (3, 4)
    pixel = CORNERS * (2 if spatial_scale == 0.5 else 1)               # undone by the scale
    boxes = pixel / [height - 1, width - 1, height - 1, width - 1] if normalized else pixel
    boxes = encode_boxes(boxes, coord_mode)
    index = np.array([1, 0, 1])
    if with_index:
        boxes = np.concatenate([index[:, None], boxes], axis=1)
    roi = boxes.reshape(3, 1, boxes.shape[1], 1, 1).astype(np.float32)
    b = builder({"data": x.shape, "roi": roi.shape}, True)
    b.add_crop_resize(name="crop_resize", input_names=["data", "roi"], output_name="out",
                      target_height=target[0], target_width=target[1], mode=mode,
                      normalized_roi=normalized, box_indices_mode=coord_mode, spatial_scale=spatial_scale)
    # reference in pixel coordinates: corners * scale == CORNERS
    ys = np.stack([grid(h0, h1, target[0], mode) for h0, _, h1, _ in CORNERS])
    xs = np.stack([grid(w0, w1, target[1], mode) for _, w0, _, w1 in CORNERS])
    if with_index:
        ref = sample(x[0][index], ys, xs)[:, None]
    else:
        ref = np.stack([sample(x[0][[i] * 3], ys, xs) for i in range(batch)], axis=1)
    check(predict(b, data=x, roi=roi), ref.astype(np.float32), atol=1e-4)


@pytest.mark.parametrize("roi, target, normalized, expected", [
    ([1, 1, 2, 2], 2, False, [6, 7, 10, 11]),
    ([1, 1, 2, 2], 4, False, [[6, 6.333333, 6.666666, 7], [7.333333, 7.666666, 8, 8.333333],
                              [8.666666, 9, 9.333333, 9.666666], [10, 10.333333, 10.666666, 11]]),
    ([1, 1, 2, 2], 1, False, [8.5]),
    ([0, 0, 0, 1 / 3, 1 / 3], 2, True, [1, 2, 5, 6]),
    ([2, 2, 1, 1], 2, False, [11, 10, 7, 6])])
def test_crop_resize_coremltools_examples(roi, target, normalized, expected):
    """coremltools' crop_resize tests (ALIGN_ENDPOINTS_MODE), including the flipped box."""
    x = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 1, 4, 4)
    roi = np.array(roi, np.float32).reshape(1, 1, len(roi), 1, 1)
    b = builder({"data": x.shape, "roi": roi.shape}, True)
    b.add_crop_resize(name="crop_resize", input_names=["data", "roi"], output_name="out",
                      target_height=target, target_width=target, mode="ALIGN_ENDPOINTS_MODE",
                      normalized_roi=normalized)
    check(predict(b, data=x, roi=roi), np.array(expected, np.float32).reshape(1, 1, 1, target, target))


def test_crop_resize_rank5_model():
    """A rank-5 model: [C, H, W] input is [1, 1, C, H, W], a (4, 1, 1) box input is one box."""
    x = np.random.default_rng(5).standard_normal((2, 5, 6)).astype(np.float32)
    roi = np.array([1, 0.5, 3.5, 4], np.float32).reshape(4, 1, 1)
    b = builder({"data": x.shape, "roi": roi.shape}, False)
    b.add_crop_resize(name="crop_resize", input_names=["data", "roi"], output_name="out",
                      target_height=3, target_width=3, mode="STRICT_ALIGN_ENDPOINTS_MODE")
    ref = sample(x[None], np.linspace(1, 3.5, 3)[None], np.linspace(0.5, 4, 3)[None])
    out = predict(b, data=x, roi=roi)
    np.testing.assert_allclose(out.reshape(ref.shape), ref, rtol=RTOL, atol=1e-4)


def test_crop_resize_then_average_pool_is_roi_align():
    """The proto's note: RoI Align = cropResize (ROI_ALIGN_MODE, spatialScale) + average pooling.
    Reference: RoI Align with 2x2 samples per bin, written out in numpy (bin = roi / pooled size,
    samples at bin_start + (i + 0.5) * bin / 2, bilinear)."""
    rng = np.random.default_rng(6)
    feat = rng.standard_normal((1, 1, 4, 12, 12)).astype(np.float32)
    rois = np.array([[0, 4.0, 6.0, 18.0, 20.0], [0, 0.0, 0.0, 22.0, 14.0]])   # batch, y0, x0, y1, x1
    scale, pooled, ratio = 0.5, 3, 2
    roi_input = rois.reshape(2, 1, 5, 1, 1).astype(np.float32)
    b = builder({"data": feat.shape, "roi": roi_input.shape}, True)
    b.add_crop_resize(name="crop", input_names=["data", "roi"], output_name="crops",
                      target_height=pooled * ratio, target_width=pooled * ratio, mode="ROI_ALIGN_MODE",
                      spatial_scale=scale)
    b.add_pooling(name="pool", height=ratio, width=ratio, stride_height=ratio, stride_width=ratio,
                  layer_type="AVERAGE", padding_type="VALID", input_name="crops", output_name="out")
    out = predict(b, data=feat, roi=roi_input)

    def bilinear(img, y, x):
        y, x = np.clip(y, 0, img.shape[-2] - 1), np.clip(x, 0, img.shape[-1] - 1)
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        y1, x1 = min(y0 + 1, img.shape[-2] - 1), min(x0 + 1, img.shape[-1] - 1)
        ly, lx = y - y0, x - x0
        return ((1 - ly) * (1 - lx) * img[..., y0, x0] + (1 - ly) * lx * img[..., y0, x1]
                + ly * (1 - lx) * img[..., y1, x0] + ly * lx * img[..., y1, x1])

    ref = np.zeros((2, 1, 4, pooled, pooled))
    for n, (_, y0, x0, y1, x1) in enumerate(rois):
        y0, x0, y1, x1 = y0 * scale, x0 * scale, y1 * scale, x1 * scale
        bin_h, bin_w = max(y1 - y0, 1) / pooled, max(x1 - x0, 1) / pooled
        for i in range(pooled):
            for j in range(pooled):
                acc = 0
                for a in range(ratio):
                    for c in range(ratio):
                        yy = y0 + i * bin_h + (a + 0.5) * bin_h / ratio
                        xx = x0 + j * bin_w + (c + 0.5) * bin_w / ratio
                        acc = acc + bilinear(feat[0, 0], yy, xx)
                ref[n, 0, :, i, j] = acc / ratio ** 2
    check(out, ref.astype(np.float32), atol=1e-4)


# ---------------------------------------------------------------- padding

@pytest.mark.parametrize("exact_rank", [False, True])
@pytest.mark.parametrize("kind, torch_mode", [("constant", "constant"), ("reflection", "reflect"),
                                              ("replication", "replicate")])
@pytest.mark.parametrize("pads", [(1, 2, 0, 3), (0, 0, 2, 0), (3, 1, 1, 2)])   # top, bottom, left, right
def test_padding(kind, torch_mode, pads, exact_rank):
    x = np.random.default_rng(7).standard_normal((2, 3, 5, 6) if exact_rank else (3, 5, 6)).astype(np.float32)
    b = builder({"data": x.shape}, exact_rank)
    b.add_padding(name="pad", top=pads[0], bottom=pads[1], left=pads[2], right=pads[3], value=-1.5,
                  input_name="data", output_name="out", padding_type=kind)
    kwargs = {"value": -1.5} if kind == "constant" else {}
    ref = F.pad(t(x if exact_rank else x[None]), (pads[2], pads[3], pads[0], pads[1]), mode=torch_mode,
                **kwargs).numpy()
    check(predict(b, data=x), ref if exact_rank else ref[0])


@pytest.mark.parametrize("kind, expected", [
    ("constant", [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 1, 2, 3, 4], [0, 0, 5, 6, 7, 8],
                  [0, 0, 9, 10, 11, 12]]),
    ("reflection", [[11, 10, 9, 10, 11, 12], [7, 6, 5, 6, 7, 8], [3, 2, 1, 2, 3, 4],
                    [7, 6, 5, 6, 7, 8], [11, 10, 9, 10, 11, 12]]),
    ("replication", [[1, 1, 1, 2, 3, 4], [1, 1, 1, 2, 3, 4], [1, 1, 1, 2, 3, 4], [5, 5, 5, 6, 7, 8],
                     [9, 9, 9, 10, 11, 12]])])
def test_padding_proto_example(kind, expected):
    x = np.arange(1, 13, dtype=np.float32).reshape(1, 3, 4)
    b = builder({"data": x.shape}, False)
    b.add_padding(name="pad", top=2, left=2, input_name="data", output_name="out", padding_type=kind)
    check(predict(b, data=x), np.array(expected, np.float32).reshape(1, 5, 6))


def test_padding_on_rank2_input():
    """Exact-rank [H, W] input: padding needs only rank 2."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = builder({"data": x.shape}, True)
    b.add_padding(name="pad", top=1, right=2, input_name="data", output_name="out", padding_type="replication")
    check(predict(b, data=x), F.pad(t(x[None]), (0, 2, 1, 0), mode="replicate").numpy()[0])


# ---------------------------------------------------------------- constantPad

@pytest.mark.parametrize("shape, amounts", [((20, 10), [0, 1, 4, 0]), ((20, 10, 5), [0, 0, 3, 4, 0, 9]),
                                            ((2, 3, 4, 5), [1, 0, 0, 2, 3, 1, 0, 0])])
@pytest.mark.parametrize("from_input", [False, True])
def test_constant_pad(shape, amounts, from_input):
    x = np.random.default_rng(8).standard_normal(shape).astype(np.float32)
    pads = np.array(amounts, np.float32)
    shapes = {"data": shape, "pads": pads.shape} if from_input else {"data": shape}
    b = builder(shapes, True)
    b.add_constant_pad(name="pad", input_names=list(shapes), output_name="out", value=2.5,
                       pad_amounts=[] if from_input else amounts)
    torch_pads = sum(((amounts[2 * i], amounts[2 * i + 1]) for i in reversed(range(len(shape)))), ())
    ref = F.pad(t(x), torch_pads, value=2.5).numpy()
    out = predict(b, data=x, pads=pads) if from_input else predict(b, data=x)
    check(out, ref)


@pytest.mark.parametrize("shape, amounts, out_shape", [
    ((20, 10), [0, 21, 14, 0], (21, 14)), ((20, 10, 5), [0, 0, 17, 0, 0, 14], (20, 17, 14)),
    ((4, 6), [3, 0, 0, 8], (4, 8))])
def test_constant_pad_to_given_output_size(shape, amounts, out_shape):
    """padToGivenOutputSizeMode: the proto's examples; the non-zero amount is the output size,
    padded before or after depending on which of the pair it is in."""
    x = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
    b = builder({"data": shape}, True)
    b.add_constant_pad(name="pad", input_names=["data"], output_name="out", value=-1.0,
                       pad_to_given_output_size_mode=True, pad_amounts=amounts)
    out = predict(b, data=x)
    assert out.shape == out_shape
    ref = np.full(out_shape, -1.0, np.float32)
    index = []
    for n, m, before in zip(shape, out_shape, amounts[::2]):
        index.append(slice(m - n, m) if before else slice(0, n))
    ref[tuple(index)] = x
    check(out, ref)


# ---------------------------------------------------------------- crop

@pytest.mark.parametrize("exact_rank", [False, True])
@pytest.mark.parametrize("amounts", [(1, 2, 0, 3), (0, 0, 0, 0), (2, 0, 1, 1)])   # top, bottom, left, right
def test_crop_by_amounts(amounts, exact_rank):
    x = np.random.default_rng(10).standard_normal((2, 3, 6, 7) if exact_rank else (3, 6, 7)).astype(np.float32)
    top, bottom, left, right = amounts
    b = builder({"data": x.shape}, exact_rank)
    b.add_crop(name="crop", left=left, right=right, top=top, bottom=bottom, offset=[0, 0],
               input_names=["data"], output_name="out")
    check(predict(b, data=x), x[..., top:6 - bottom, left:7 - right])


@pytest.mark.parametrize("exact_rank", [False, True])
@pytest.mark.parametrize("offset, ref_hw", [((0, 0), (3, 4)), ((2, 1), (4, 5)), ((1, 3), (5, 4))])
def test_crop_to_reference(offset, ref_hw, exact_rank):
    """Two inputs: y = x[..., o0:o0 + H_ref, o1:o1 + W_ref]."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 6, 7) if exact_rank else (3, 6, 7)).astype(np.float32)
    ref_shape = x.shape[:-2] + ref_hw
    reference = rng.standard_normal(ref_shape).astype(np.float32)
    b = builder({"data": x.shape, "like": ref_shape}, exact_rank)
    b.add_crop(name="crop", left=0, right=0, top=0, bottom=0, offset=list(offset),
               input_names=["data", "like"], output_name="out")
    expected = x[..., offset[0]:offset[0] + ref_hw[0], offset[1]:offset[1] + ref_hw[1]]
    check(predict(b, data=x, like=reference), expected)


# ---------------------------------------------------------------- reorganizeData

def test_depth_to_space_and_pixel_shuffle_proto_examples():
    x = np.arange(1, 17, dtype=np.float32).reshape(8, 1, 2)
    expected = {
        "DEPTH_TO_SPACE": [[[1, 5, 2, 6], [9, 13, 10, 14]], [[3, 7, 4, 8], [11, 15, 12, 16]]],
        "PIXEL_SHUFFLE": [[[1, 3, 2, 4], [5, 7, 6, 8]], [[9, 11, 10, 12], [13, 15, 14, 16]]]}
    for mode, want in expected.items():
        b = builder({"data": x.shape}, False)
        b.add_reorganize_data(name="reorg", input_name="data", output_name="out", mode=mode, block_size=2)
        check(predict(b, data=x), np.array(want, np.float32))
    b = builder({"data": (2, 2, 4)}, False)
    b.add_reorganize_data(name="reorg", input_name="data", output_name="out", mode="SPACE_TO_DEPTH",
                          block_size=2)
    check(predict(b, data=np.array(expected["DEPTH_TO_SPACE"], np.float32)), x)


@pytest.mark.parametrize("exact_rank", [False, True])
@pytest.mark.parametrize("block", [2, 3])
def test_reorganize_data_against_torch(block, exact_rank):
    """PIXEL_SHUFFLE is torch's pixel_shuffle; SPACE_TO_DEPTH is pixel_unshuffle with the channel
    index ordered (block row, block column, channel) instead of (channel, block row, block column);
    DEPTH_TO_SPACE inverts SPACE_TO_DEPTH."""
    rng = np.random.default_rng(12)
    c = 2
    deep = rng.standard_normal((2, c * block * block, 3, 4) if exact_rank else (c * block * block, 3, 4))
    wide = rng.standard_normal((2, c, 3 * block, 2 * block) if exact_rank else (c, 3 * block, 2 * block))
    deep, wide = deep.astype(np.float32), wide.astype(np.float32)

    def run(mode, x):
        b = builder({"data": x.shape}, exact_rank)
        b.add_reorganize_data(name="reorg", input_name="data", output_name="out", mode=mode, block_size=block)
        return predict(b, data=x)

    as4 = (lambda a: a) if exact_rank else (lambda a: a[None])
    back = (lambda a: a) if exact_rank else (lambda a: a[0])
    check(run("PIXEL_SHUFFLE", deep), back(F.pixel_shuffle(t(as4(deep)), block).numpy()))
    unshuffled = F.pixel_unshuffle(t(as4(wide)), block).numpy()          # channels (c, bh, bw)
    n = unshuffled.shape[0]
    s2d = unshuffled.reshape(n, c, block * block, 3, 2).transpose(0, 2, 1, 3, 4).reshape(n, -1, 3, 2)
    check(run("SPACE_TO_DEPTH", wide), back(s2d))
    check(run("DEPTH_TO_SPACE", back(s2d)), wide)


# ---------------------------------------------------------------- as coremltools converts PyTorch

class ResampleChain(torch.nn.Module):
    def forward(self, x):
        a = F.interpolate(x, scale_factor=2, mode="nearest")
        a = F.interpolate(a, size=(12, 15), mode="bilinear", align_corners=False)
        a = F.interpolate(a, size=(13, 9), mode="bilinear", align_corners=True)
        a = F.pad(a, (1, 2, 3, 0), mode="reflect")
        a = F.pad(a, (0, 1, 2, 1), mode="replicate")
        a = F.pad(a, (1, 1, 0, 2, 3, 1), value=0.5)
        return F.pixel_shuffle(a, 2)


@pytest.mark.parametrize("shape", [(1, 4, 4, 3)])
def test_pytorch_conversion(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        spec = ct.convert(torch.jit.trace(ResampleChain().eval(), x),
                          inputs=[ct.TensorType(name="x", shape=x.shape)], convert_to="neuralnetwork").get_spec()
    kinds = {layer.WhichOneof("layer") for layer in spec.neuralNetwork.layers}
    assert {"upsample", "padding", "constantPad", "reorganizeData"} <= kinds
    out = wb.load(spec).predict({"x": x.numpy()})[spec.description.output[0].name]
    check(out, ResampleChain()(x).numpy())
