"""Flexible shapes: enumerated and ranged shapes of arrays and images.

Models are made flexible with coremltools' flexible_shape_utils (rank-5 and N-D forms) or
converted from PyTorch with ct.RangeDim / ct.EnumeratedShapes. Every allowed shape predicts what
the reference gives (a formula for builder models, PyTorch for converted ones); every other shape
is an InputError that says what the model allows. FeatureTypes.proto's rules: an upper bound < 0
is unbounded; a rank-5 model (specification <= 3) declares [C] or [C, H, W] and also takes
[Seq, Batch, C, H, W] arrays; an exact-rank model takes exactly the declared rank.
"""
import re

import numpy as np
import pytest
import torch
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder
from coremltools.models.neural_network import flexible_shape_utils as fsu
from PIL import Image

import workbench as wb

RNG = np.random.default_rng(3)


def doubler(shape, exact):
    """y = 2 x, an elementwise network, so every input shape has an obvious answer."""
    bld = NeuralNetworkBuilder([("x", datatypes.Array(*shape))], [("y", None)], disable_rank5_shape_mapping=exact)
    bld.add_activation("double", "LINEAR", "x", "y", params=[2.0, 0.0])
    return bld.spec


def predicts_double(model, shape):
    x = RNG.standard_normal(shape).astype(np.float32)
    y = model.predict({"x": x})["y"]
    np.testing.assert_allclose(y.reshape(x.shape), 2 * x, rtol=1e-6)


def rejects(model, shape, match):
    with pytest.raises(wb.InputError, match=match):
        model.predict({"x": np.zeros(shape, np.float32)})


# ---------------------------------------------------------------- exact-rank arrays

def test_exact_rank_range():
    spec = doubler((2, 3, 4), exact=True)
    fsu.set_multiarray_ndshape_range(spec, "x", lower_bounds=[1, 3, 2], upper_bounds=[4, 3, -1])
    model = wb.load(spec)
    for shape in [(1, 3, 2), (4, 3, 2), (2, 3, 500)]:            # the bounds are inclusive; -1 is unbounded
        predicts_double(model, shape)
    allowed = r"3-D shapes with sizes within \[1, 4\] x \[3, 3\] x \[2, unbounded\]"
    for shape in [(5, 3, 2), (2, 2, 4), (2, 3, 1)]:
        rejects(model, shape, re.escape(f"input 'x' has shape {shape}; the model allows ") + allowed)
    rejects(model, (1, 1, 2, 3, 4), allowed)                    # a 5-D array is not a rank-5 variant here
    rejects(model, (3, 4), allowed)


def test_exact_rank_enumerated():
    spec = doubler((2, 3), exact=True)
    fsu.add_multiarray_ndshape_enumeration(spec, "x", [(4, 5), (1, 2, 3)])
    model = wb.load(spec)
    for shape in [(2, 3), (4, 5), (1, 2, 3)]:                   # the declared shape stays one of the options
        predicts_double(model, shape)
    rejects(model, (5, 4), r"allows one of \(2, 3\), \(4, 5\), \(1, 2, 3\)")
    rejects(model, (1, 1, 1, 2, 3), "allows one of")


def test_exact_rank_fixed_shape_takes_no_rank5_variant():
    model = wb.load(doubler((2, 3, 4), exact=True))
    predicts_double(model, (2, 3, 4))
    rejects(model, (1, 1, 2, 3, 4), r"the model allows \(2, 3, 4\)$")


# ---------------------------------------------------------------- rank-5 arrays

def test_rank5_channel_height_width_range():
    spec = doubler((3, 4, 4), exact=False)
    r = fsu.NeuralNetworkMultiArrayShapeRange()
    r.add_channel_range((3, 3))
    r.add_height_range((2, 8))
    r.add_width_range((4, -1))
    fsu.update_multiarray_shape_range(spec, "x", r)
    assert spec.specificationVersion <= 3
    model = wb.load(spec)
    for shape in [(3, 2, 4), (3, 8, 40), (1, 1, 3, 5, 6), (2, 1, 3, 2, 4)]:
        predicts_double(model, shape)
    rejects(model, (3, 9, 4), r"sizes within \[3, 3\] x \[2, 8\] x \[4, unbounded\] \(or \[Seq, Batch")
    rejects(model, (1, 1, 4, 2, 4), "sizes within")
    rejects(model, (3, 4), "sizes within")


def test_rank5_channel_only_range():
    spec = doubler((5,), exact=False)
    r = fsu.NeuralNetworkMultiArrayShapeRange()
    r.add_channel_range((2, 6))
    fsu.update_multiarray_shape_range(spec, "x", r)
    model = wb.load(spec)
    for shape in [(2,), (6,), (1, 1, 4, 1, 1), (3, 1, 6, 1, 1)]:
        predicts_double(model, shape)
    rejects(model, (7,), r"1-D shapes with sizes within \[2, 6\]")
    rejects(model, (1, 1, 4, 2, 1), "sizes within")             # [C] maps to [C, 1, 1]


def test_rank5_enumerated():
    spec = doubler((3, 2, 2), exact=False)
    fsu.add_enumerated_multiarray_shapes(spec, "x", [fsu.NeuralNetworkMultiArrayShape(3, 4, 6),
                                                     fsu.NeuralNetworkMultiArrayShape(1, 8, 8)])
    model = wb.load(spec)
    for shape in [(3, 2, 2), (3, 4, 6), (1, 8, 8), (2, 1, 1, 8, 8)]:
        predicts_double(model, shape)
    rejects(model, (3, 6, 4), r"allows one of \(3, 4, 6\), \(1, 8, 8\), \(3, 2, 2\)")


def test_rank5_fixed_shape_takes_seq_batch_arrays():
    model = wb.load(doubler((3, 2, 2), exact=False))
    predicts_double(model, (4, 1, 3, 2, 2))
    rejects(model, (4, 1, 3, 2, 1), r"allows \(3, 2, 2\) \(or \[Seq, Batch, C, H, W\]")


def test_custom_layer_output_shapes_is_asked_again_when_shapes_change():
    from coremltools.proto import NeuralNetwork_pb2
    bld = NeuralNetworkBuilder([("x", datatypes.Array(2, 3))], [("y", None)], disable_rank5_shape_mapping=True)
    params = NeuralNetwork_pb2.CustomLayerParams()
    params.className = "Twice"
    bld.add_custom(name="twice", input_names=["x"], output_names=["y"], custom_proto_spec=params)
    fsu.set_multiarray_ndshape_range(bld.spec, "x", lower_bounds=[1, 1], upper_bounds=[8, 8])
    seen = []

    class Twice(wb.CustomLayer):
        def output_shapes(self, input_shapes):
            seen.append(list(input_shapes))
            return [(2 * input_shapes[0][0], input_shapes[0][1])]

        def evaluate(self, inputs, outputs):
            outputs[0][...] = np.concatenate([inputs[0], inputs[0]])
    model = wb.load(bld.spec, layers=Twice)
    assert seen == [[(2, 3)]]                                   # at load, for the default shape
    x = np.arange(20, dtype=np.float32).reshape(4, 5)
    np.testing.assert_array_equal(model.predict({"x": x})["y"], np.concatenate([x, x]))
    model.predict({"x": x})
    assert seen == [[(2, 3)], [(4, 5)]]                         # once per change, not per prediction


# ---------------------------------------------------------------- images

def image_doubler(width, height):
    """Image -> 2 * pixels / 255 as an array, RGB, rank-5 builder model."""
    bld = NeuralNetworkBuilder([("img", datatypes.Array(3, height, width))], [("y", None)])
    bld.set_pre_processing_parameters(image_input_names=["img"], image_scale=1 / 255)
    bld.add_activation("double", "LINEAR", "img", "y", params=[2.0, 0.0])
    spec = bld.spec
    spec.description.input[0].type.imageType.colorSpace = 20      # RGB
    return spec


def image_predicts(model, width, height):
    pixels = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    y = model.predict({"img": Image.fromarray(pixels, "RGB")})["y"]
    np.testing.assert_allclose(y.reshape(3, height, width), 2 * pixels.transpose(2, 0, 1).astype(np.float64) / 255,
                               rtol=1e-5)


def image_rejects(model, width, height, match):
    with pytest.raises(wb.InputError, match=match):
        model.predict({"img": Image.new("RGB", (width, height))})


def test_enumerated_image_sizes():
    spec = image_doubler(4, 3)
    fsu.add_enumerated_image_sizes(spec, "img", [fsu.NeuralNetworkImageSize(height=6, width=8),
                                                  fsu.NeuralNetworkImageSize(height=2, width=5)])
    model = wb.load(spec)
    for w, h in [(4, 3), (8, 6), (5, 2)]:
        image_predicts(model, w, h)
    image_rejects(model, 6, 8, r"image 'img' is 6x8; the model allows 8x6, 5x2, 4x3")


def test_image_size_range():
    spec = image_doubler(4, 4)
    fsu.update_image_size_range(spec, "img", fsu.NeuralNetworkImageSizeRange(height_range=(2, 6),
                                                                               width_range=(3, -1)))
    model = wb.load(spec)
    for w, h in [(3, 2), (4, 4), (64, 6)]:
        image_predicts(model, w, h)
    image_rejects(model, 2, 4, r"is 2x4, outside the model's size range: width \[3, unbounded\], height \[2, 6\]")
    image_rejects(model, 5, 7, r"height \[2, 6\]")


def test_fixed_image_size():
    model = wb.load(image_doubler(4, 3))
    image_predicts(model, 4, 3)
    image_rejects(model, 3, 4, r"is 3x4; the model takes 4x3 \(resize it first\)")


# ---------------------------------------------------------------- converted from PyTorch

@pytest.fixture(scope="module")
def conv_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 3, stride=2, padding=1), torch.nn.Sigmoid()).eval()
    return net, torch.jit.trace(net, torch.rand(1, 3, 8, 8))


def convert(traced, input_type):
    import coremltools as ct
    return ct.convert(traced, inputs=[input_type], convert_to="neuralnetwork")


def torch_agrees(model, net, name, x):
    got = list(model.predict({name: x}).values())[0]
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_range_dim_conversion_agrees_with_torch(conv_net):
    import coremltools as ct
    net, traced = conv_net
    shape = ct.Shape(shape=(1, 3, ct.RangeDim(4, 32, default=8), ct.RangeDim(4, 32, default=8)))
    model = wb.load(convert(traced, ct.TensorType(name="x", shape=shape)))
    for h, w in [(4, 4), (8, 8), (13, 7), (32, 17)]:
        torch_agrees(model, net, "x", RNG.random((1, 3, h, w), dtype=np.float32))
    rejects(model, (1, 3, 33, 8), r"\[4, 32\] x \[4, 32\]")
    rejects(model, (3, 8, 8), "4-D shapes")


def test_enumerated_shapes_conversion_agrees_with_torch(conv_net):
    import coremltools as ct
    net, traced = conv_net
    shapes = ct.EnumeratedShapes(shapes=[(1, 3, 8, 8), (1, 3, 16, 12), (1, 3, 5, 9)], default=(1, 3, 8, 8))
    model = wb.load(convert(traced, ct.TensorType(name="x", shape=shapes)))
    for h, w in [(8, 8), (16, 12), (5, 9)]:
        torch_agrees(model, net, "x", RNG.random((1, 3, h, w), dtype=np.float32))
    rejects(model, (1, 3, 12, 16), r"allows one of \(1, 3, 8, 8\), \(1, 3, 16, 12\), \(1, 3, 5, 9\)")


def test_flexible_image_conversion_agrees_with_torch(conv_net):
    import coremltools as ct
    net, traced = conv_net
    scale, bias = 1 / 255, [-0.5, 0.1, 0.2]
    image = ct.ImageType(name="img", shape=(1, 3, ct.RangeDim(4, 24, default=8), ct.RangeDim(4, 24, default=8)),
                         scale=scale, bias=bias, color_layout=ct.colorlayout.RGB)
    model = wb.load(convert(traced, image))
    for w, h in [(8, 8), (24, 5), (11, 16)]:
        pixels = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
        x = (pixels.transpose(2, 0, 1)[None] * scale + np.array(bias)[None, :, None, None]).astype(np.float32)
        got = list(model.predict({"img": Image.fromarray(pixels, "RGB")}).values())[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    image_rejects(model, 25, 8, r"outside the model's size range: width \[4, 24\], height \[4, 24\]")
