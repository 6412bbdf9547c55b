"""pooling, pooling3d and globalPooling3d kernels against torch.nn.functional pooling,
through wb.load(...).predict.

Asymmetric padding is applied with F.pad before torch pools (-inf for MAX, zeros otherwise);
"exclude padding" averages are torch's window sums over the padded input divided by torch's
window sums over a padded mask of ones. SAME amounts follow NeuralNetwork.proto's formulas.
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


def builder(shape, exact_rank):
    return NeuralNetworkBuilder([("data", datatypes.Array(*shape))], [("out", None)],
                                disable_rank5_shape_mapping=exact_rank)


def predict(b, x):
    return wb.load(b.spec).predict({"data": x})["out"]


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def check(actual, expected):
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


def same_pads(size, kernel, stride, top_left_heavy=False):
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + kernel - size)
    small = total // 2
    return (total - small, small) if top_left_heavy else (small, total - small)


def reference_pool(x, kind, k, s, pads, exclude):
    """Pool x [N, C, *spatial] after explicit padding ``pads`` (torch F.pad order)."""
    nd = len(k)
    avg = {2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    xt = t(x)
    if kind == "MAX":
        return {2: F.max_pool2d, 3: F.max_pool3d}[nd](F.pad(xt, pads, value=-np.inf), k, s).numpy()
    if kind == "L2":
        summed = avg(F.pad(xt * xt, pads), k, s) * np.prod(k)
        return torch.sqrt(summed).numpy()
    mean = avg(F.pad(xt, pads), k, s)
    if exclude:
        mean = mean / avg(F.pad(torch.ones_like(xt), pads), k, s)
    return mean.numpy()


def as_4d(x, exact_rank):
    return x if exact_rank else x[None]


# ---------------------------------------------------------------- 2-D pooling

@pytest.mark.parametrize("exact_rank", [False, True])
@pytest.mark.parametrize("kind", ["MAX", "AVERAGE", "L2"])
@pytest.mark.parametrize("k, s, pads", [
    ((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 2), (1, 2), (0, 0, 0, 0)),
    ((3, 3), (2, 2), (1, 2, 0, 1)), ((2, 4), (3, 1), (1, 0, 1, 3)), ((1, 1), (2, 3), (0, 0, 0, 0))])
@pytest.mark.parametrize("exclude", [False, True])
def test_pooling_valid_padding(kind, k, s, pads, exclude, exact_rank):
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 10) if exact_rank else (3, 9, 10)).astype(np.float32)
    b = builder(x.shape, exact_rank)
    b.add_pooling(name="pool", height=k[0], width=k[1], stride_height=s[0], stride_width=s[1],
                  layer_type=kind, padding_type="VALID", input_name="data", output_name="out",
                  exclude_pad_area=exclude, padding_top=pads[0], padding_bottom=pads[1],
                  padding_left=pads[2], padding_right=pads[3])
    ref = reference_pool(as_4d(x, exact_rank), kind, k, s, (pads[2], pads[3], pads[0], pads[1]), exclude)
    check(predict(b, x), ref if exact_rank else ref[0])


@pytest.mark.parametrize("asym", ["BOTTOM_RIGHT_HEAVY", "TOP_LEFT_HEAVY"])
@pytest.mark.parametrize("kind", ["MAX", "AVERAGE", "L2"])
@pytest.mark.parametrize("k, s", [((3, 3), (2, 2)), ((2, 4), (1, 3)), ((4, 1), (3, 1))])
@pytest.mark.parametrize("exclude", [False, True])
def test_pooling_same_padding(kind, k, s, asym, exclude):
    x = np.random.default_rng(1).standard_normal((3, 9, 10)).astype(np.float32)
    b = builder(x.shape, False)
    b.add_pooling(name="pool", height=k[0], width=k[1], stride_height=s[0], stride_width=s[1],
                  layer_type=kind, padding_type="SAME", input_name="data", output_name="out",
                  exclude_pad_area=exclude, same_padding_asymmetry_mode=asym)
    tl = asym == "TOP_LEFT_HEAVY"
    pads = same_pads(10, k[1], s[1], tl) + same_pads(9, k[0], s[0], tl)
    ref = reference_pool(x[None], kind, k, s, pads, exclude)[0]
    assert ref.shape[-2:] == (-(-9 // s[0]), -(-10 // s[1]))
    check(predict(b, x), ref)


@pytest.mark.parametrize("kind", ["MAX", "AVERAGE"])
@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("size, k, s, pad", [
    ((9, 10), (3, 3), (2, 2), (1, 1)), ((8, 7), (2, 2), (2, 2), (0, 0)), ((5, 9), (3, 2), (2, 3), (1, 0)),
    ((10, 10), (3, 3), (3, 3), (1, 1)), ((6, 11), (4, 4), (3, 2), (2, 2))])
def test_pooling_include_last_pixel_is_ceil_mode(kind, exclude, size, k, s, pad):
    """includeLastPixel is Caffe's rounding: torch ceil_mode=True (the last window starts inside
    the input or its leading padding; averages count padding but not the overhang)."""
    x = np.random.default_rng(2).standard_normal((2, 3) + size).astype(np.float32)
    b = builder(x.shape, True)
    b.add_pooling(name="pool", height=k[0], width=k[1], stride_height=s[0], stride_width=s[1],
                  layer_type=kind, padding_type="INCLUDE_LAST_PIXEL", input_name="data",
                  output_name="out", exclude_pad_area=exclude, padding_top=pad[0],
                  padding_bottom=pad[0], padding_left=pad[1], padding_right=pad[1])
    if kind == "MAX":
        ref = F.max_pool2d(t(x), k, s, padding=pad, ceil_mode=True)
    else:
        ref = F.avg_pool2d(t(x), k, s, padding=pad, ceil_mode=True, count_include_pad=not exclude)
    check(predict(b, x), ref.numpy())


def test_pooling_include_last_pixel_output_size_formula():
    """H_out = ceil((H + 2p - k) / s) + 1, minus one if (H_out - 1) * s >= H + p (padding only)."""
    for h, k, s, p in [(7, 3, 2, 1), (6, 2, 2, 1), (5, 3, 3, 1), (8, 3, 2, 0), (9, 3, 4, 1)]:
        x = np.zeros((1, 1, h, 4), np.float32)
        b = builder(x.shape, True)
        b.add_pooling(name="pool", height=k, width=1, stride_height=s, stride_width=1,
                      layer_type="MAX", padding_type="INCLUDE_LAST_PIXEL", input_name="data",
                      output_name="out", padding_top=p, padding_bottom=p)
        out = -(-(h + 2 * p - k) // s) + 1
        if p > 0 and (out - 1) * s >= h + p:
            out -= 1
        assert predict(b, x).shape == (1, 1, out, 4)


@pytest.mark.parametrize("exact_rank", [False, True])
@pytest.mark.parametrize("kind", ["MAX", "AVERAGE", "L2"])
def test_global_pooling(kind, exact_rank):
    x = np.random.default_rng(3).standard_normal((2, 4, 5, 7) if exact_rank else (4, 5, 7)).astype(np.float32)
    b = builder(x.shape, exact_rank)
    b.add_pooling(name="pool", height=3, width=3, stride_height=1, stride_width=1, layer_type=kind,
                  padding_type="VALID", input_name="data", output_name="out", is_global=True)
    xt = t(x)
    ref = {"MAX": lambda: torch.amax(xt, dim=(-2, -1), keepdim=True),
           "AVERAGE": lambda: torch.mean(xt, dim=(-2, -1), keepdim=True),
           "L2": lambda: torch.linalg.vector_norm(xt, dim=(-2, -1), keepdim=True)}[kind]().numpy()
    check(predict(b, x), ref)


def test_pooling_l2_matches_torch_lp_pool():
    x = np.random.default_rng(4).standard_normal((1, 3, 8, 9)).astype(np.float32)
    b = builder(x.shape, True)
    b.add_pooling(name="pool", height=3, width=2, stride_height=2, stride_width=2, layer_type="L2",
                  padding_type="VALID", input_name="data", output_name="out")
    check(predict(b, x), F.lp_pool2d(t(x), 2, (3, 2), (2, 2)).numpy())


def test_pooling_coremltools_l2_example():
    """The L2 pooling values coremltools' own MIL tests expect (SAME, kernel 2x3, stride 1x3)."""
    x = np.array([[[[-10.0, -6.0], [-7.0, 9.0]], [[-3.0, 0.0], [11.0, 7.0]]]], np.float32)
    b = builder(x.shape, True)
    b.add_pooling(name="pool", height=2, width=3, stride_height=1, stride_width=3, layer_type="L2",
                  padding_type="SAME", input_name="data", output_name="out")
    expected = np.array([[[[16.309507], [11.401754]], [[13.379088], [13.038404]]]], np.float32)
    check(predict(b, x), expected)


def test_pooling_on_rank3_exact_input():
    """Classic layers on exact-rank blobs address C, H, W from the end; [C, H, W] works too."""
    x = np.random.default_rng(5).standard_normal((3, 6, 6)).astype(np.float32)
    b = builder(x.shape, True)
    b.add_pooling(name="pool", height=2, width=2, stride_height=2, stride_width=2, layer_type="MAX",
                  padding_type="VALID", input_name="data", output_name="out")
    check(predict(b, x), F.max_pool2d(t(x[None]), 2).numpy()[0])


# ---------------------------------------------------------------- 3-D pooling

@pytest.mark.parametrize("kind", ["MAX", "AVERAGE"])
@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("padding, pads, k, s", [
    ("VALID", (0,) * 6, (2, 2, 2), (1, 1, 1)),
    ("VALID", (0,) * 6, (3, 2, 1), (2, 1, 3)),
    ("CUSTOM", (1, 0, 2, 1, 0, 1), (2, 3, 2), (1, 2, 2)),
    ("SAME", (0,) * 6, (3, 3, 2), (2, 2, 2)),
    ("SAME", (0,) * 6, (2, 2, 3), (1, 3, 1))])
def test_pooling3d(kind, exclude, padding, pads, k, s):
    x = np.random.default_rng(6).standard_normal((2, 3, 5, 6, 7)).astype(np.float32)
    b = builder(x.shape, True)
    b.add_pooling3d(name="pool", input_name="data", output_name="out", pooling_type=kind,
                    kernel_depth=k[0], kernel_height=k[1], kernel_width=k[2], stride_depth=s[0],
                    stride_height=s[1], stride_width=s[2], padding_mode=padding,
                    custom_padding_front=pads[0], custom_padding_back=pads[1],
                    custom_padding_top=pads[2], custom_padding_bottom=pads[3],
                    custom_padding_left=pads[4], custom_padding_right=pads[5],
                    average_pooling_count_excludes_padding=exclude)
    if padding == "SAME":
        pads = sum((same_pads(n, kk, ss) for n, kk, ss in zip(x.shape[2:], k, s)), ())
    torch_pads = (pads[4], pads[5], pads[2], pads[3], pads[0], pads[1])
    check(predict(b, x), reference_pool(x, kind, k, s, torch_pads, exclude))


def test_pooling3d_proto_example():
    """MAX 2x2x2, stride 1, VALID on the proto's (1, 1, 2, 3, 3) example -> [[14, 15], [17, 18]]."""
    x = np.arange(1, 19, dtype=np.float32).reshape(1, 1, 2, 3, 3)
    b = builder(x.shape, True)
    b.add_pooling3d(name="pool", input_name="data", output_name="out", pooling_type="MAX",
                    kernel_depth=2, kernel_height=2, kernel_width=2, stride_depth=1,
                    stride_height=1, stride_width=1, padding_mode="VALID")
    check(predict(b, x), np.array([14, 15, 17, 18], np.float32).reshape(1, 1, 1, 2, 2))


@pytest.mark.parametrize("kind", ["MAX", "AVERAGE"])
def test_global_pooling3d(kind):
    x = np.random.default_rng(7).standard_normal((2, 3, 4, 5, 6)).astype(np.float32)
    b = builder(x.shape, True)
    b.add_global_pooling3d(name="pool", input_name="data", output_name="out", pooling_type=kind)
    reduce = torch.amax if kind == "MAX" else torch.mean
    check(predict(b, x), reduce(t(x), dim=(-3, -2, -1), keepdim=True).numpy())


def test_global_pooling3d_proto_example():
    x = np.arange(1, 19, dtype=np.float32).reshape(1, 1, 2, 3, 3)
    b = builder(x.shape, True)
    b.add_global_pooling3d(name="pool", input_name="data", output_name="out", pooling_type="MAX")
    check(predict(b, x), np.full((1, 1, 1, 1, 1), 18, np.float32))


def test_max_pooling_ignores_padding_coremltools_examples():
    """coremltools' max_pool tests (VALID kernel 1x2x3 / stride 2x1x3 and SAME kernel 1x2x3 /
    stride 2x1x3 in 3-D, the trailing two in 2-D): a SAME window over padding and -2 gives -2,
    so padding never wins a max."""
    x2 = np.array([[[[-10.80291205, -6.42076184], [-7.07910997, 9.1913279]],
                    [[-3.18181497, 0.9132147], [11.9785544, 7.92449539]]]], np.float32)
    for padding, k, s, expected in [
            ("VALID", (1, 2), (2, 1), [[[[-6.42076184]], [[0.9132147]]]]),
            ("SAME", (2, 3), (1, 3), [[[[9.191328], [9.191328]], [[11.978555], [11.978555]]]])]:
        b = builder(x2.shape, True)
        b.add_pooling(name="pool", height=k[0], width=k[1], stride_height=s[0], stride_width=s[1],
                      layer_type="MAX", padding_type=padding, input_name="data", output_name="out")
        check(predict(b, x2), np.array(expected, np.float32))
    x3 = np.array([[[[[-1, -5, -1], [-3, -3, 8], [2, 6, 2]], [[-4, 7, -4], [4, 6, 7], [4, 4, 8]],
                     [[5, -3, 5], [0, -5, 8], [1, 7, 2]]]],
                   [[[[7, -3, -5], [5, 4, 7], [-2, -4, -3]], [[-4, 3, -1], [6, -4, 4], [3, 6, 2]],
                     [[-1, 4, -4], [-2, -1, -2], [3, 2, 8]]]]], np.float32)
    for padding, expected in [
            ("VALID", [[[[[8.0], [8.0]], [[8.0], [8.0]]]], [[[[7.0], [7.0]], [[4.0], [8.0]]]]]),
            ("SAME", [[[[[8.0], [8.0], [6.0]], [[8.0], [8.0], [7.0]]]],
                      [[[[7.0], [7.0], [-2.0]], [[4.0], [8.0], [8.0]]]]])]:
        b = builder(x3.shape, True)
        b.add_pooling3d(name="pool", input_name="data", output_name="out", pooling_type="MAX",
                        kernel_depth=1, kernel_height=2, kernel_width=3, stride_depth=2,
                        stride_height=1, stride_width=3, padding_mode=padding)
        check(predict(b, x3), np.array(expected, np.float32))


def test_average_pooling_exclude_padding_coremltools_examples():
    """coremltools' avg_pool tests: VALID, and SAME with padding excluded from the count."""
    x2 = np.array([[[[-10.80291205, -6.42076184], [-7.07910997, 9.1913279]],
                    [[-3.18181497, 0.9132147], [11.9785544, 7.92449539]]]], np.float32)
    for padding, k, s, expected in [
            ("VALID", (1, 2), (2, 1), [[[[-8.611837]], [[-1.1343001]]]]),
            ("SAME", (2, 3), (1, 3), [[[[-3.7778642], [1.056109]], [[4.4086123], [9.951525]]]])]:
        b = builder(x2.shape, True)
        b.add_pooling(name="pool", height=k[0], width=k[1], stride_height=s[0], stride_width=s[1],
                      layer_type="AVERAGE", padding_type=padding, input_name="data",
                      output_name="out", exclude_pad_area=True)
        check(predict(b, x2), np.array(expected, np.float32))
    x3 = np.array([[[[[-1, -5, -1], [-3, -3, 8], [2, 6, 2]], [[-4, 7, -4], [4, 6, 7], [4, 4, 8]],
                     [[5, -3, 5], [0, -5, 8], [1, 7, 2]]]],
                   [[[[7, -3, -5], [5, 4, 7], [-2, -4, -3]], [[-4, 3, -1], [6, -4, 4], [3, 6, 2]],
                     [[-1, 4, -4], [-2, -1, -2], [3, 2, 8]]]]], np.float32)
    b = builder(x3.shape, True)
    b.add_pooling3d(name="pool", input_name="data", output_name="out", pooling_type="AVERAGE",
                    kernel_depth=1, kernel_height=2, kernel_width=3, stride_depth=2, stride_height=1,
                    stride_width=3, padding_mode="SAME", average_pooling_count_excludes_padding=True)
    expected = [[[[[-0.8333334], [2.0], [3.3333335]], [[1.6666667], [2.1666667], [3.3333335]]]],
                [[[[2.5], [1.1666667], [-3.0]], [[-1.0], [1.3333334], [4.3333335]]]]]
    check(predict(b, x3), np.array(expected, np.float32))


# ---------------------------------------------------------------- as coremltools converts PyTorch

class PoolChain(torch.nn.Module):
    """ceil_mode (includeLastPixel) max and average pooling, padding excluded, L2, global average."""

    def forward(self, x):
        a = F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True)
        a = F.avg_pool2d(a, 3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        b = F.lp_pool2d(x, 2, 2, 2)
        b = F.avg_pool2d(b, 2, 1, padding=1, count_include_pad=True)
        return F.adaptive_avg_pool2d(a, 1) + F.max_pool2d(b, 2)[..., :1, :1]


class Pool3dChain(torch.nn.Module):
    def forward(self, x):
        y = F.avg_pool3d(F.max_pool3d(x, 2, (1, 2, 2), padding=1), 3, 2, padding=1,
                         count_include_pad=False)
        return torch.amax(y, dim=(2, 3, 4), keepdim=True) + torch.mean(y, dim=(2, 3, 4), keepdim=True) + y


@pytest.mark.parametrize("module, shape", [(PoolChain, (2, 3, 17, 14)), (Pool3dChain, (1, 2, 6, 9, 8))])
def test_pytorch_conversions(module, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        spec = ct.convert(torch.jit.trace(module().eval(), x), inputs=[ct.TensorType(name="x", shape=x.shape)],
                          convert_to="neuralnetwork").get_spec()
    kinds = {layer.WhichOneof("layer") for layer in spec.neuralNetwork.layers}
    assert kinds & {"pooling", "pooling3d", "globalPooling3d"}
    out = wb.load(spec).predict({"x": x.numpy()})[spec.description.output[0].name]
    check(out, module()(x).numpy())
