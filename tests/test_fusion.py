"""Chains of element-wise layers fused into one pass (fusion.fuse_pointwise_chains).

References: torch (batch_norm, relu6, hardtanh) and the unfused run of the same layers, which
``trace`` computes layer by layer; each of those layers is tested against its own reference in
test_layers_*.py. A fused chain must equal the unfused layers bit for bit, zero signs included,
and give NaN where they do. (The convolution's fused activation is tested in test_layers_conv.py.)
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder
from coremltools.models.neural_network import flexible_shape_utils as fsu

import workbench as wb
from workbench.errors import WorkbenchError
from support import assert_close as close  # noqa: E402

RNG = np.random.default_rng(11)


def bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def tf_relu6(b, source, target, name):
    """The four layers TensorFlow converters write for ReLU6: ReLU, x(-1), THRESHOLD -6, x(-1)."""
    b.add_activation(f"{name}_relu", "RELU", source, f"{name}_r")
    b.add_activation(f"{name}_neg", "LINEAR", f"{name}_r", f"{name}_n", params=[-1.0, 0.0])
    b.add_unary(f"{name}_clip", f"{name}_n", f"{name}_c", "threshold", alpha=-6.0)
    b.add_activation(f"{name}_back", "LINEAR", f"{name}_c", target, params=[-1.0, 0.0])


def bn_params(channels):
    gamma = RNG.uniform(0.5, 3, channels).astype(np.float32)
    beta = RNG.standard_normal(channels).astype(np.float32)
    mean = RNG.standard_normal(channels).astype(np.float32)
    var = RNG.uniform(0.2, 2, channels).astype(np.float32)
    return gamma, beta, mean, var


def bn_relu6_model(shape, outputs=(("out", None),), extra=None):
    """data -> batchnorm -> TF ReLU6 -> ReLU -> "out"; ``extra(builder)`` adds more layers."""
    channels = shape[-3]
    params = bn_params(channels)
    b = NeuralNetworkBuilder([("data", datatypes.Array(*shape))], list(outputs), disable_rank5_shape_mapping=True)
    gamma, beta, mean, var = params
    b.add_batchnorm("bn", channels, gamma, beta, mean=mean, variance=var, input_name="data",
                    output_name="bn_out", epsilon=1e-3)
    tf_relu6(b, "bn_out", "six", "r6")
    b.add_activation("relu_again", "RELU", "six", "out")
    if extra:
        extra(b)
    return wb.load(b.spec), params


def torch_bn_relu6(x, params):
    gamma, beta, mean, var = (torch.from_numpy(p) for p in params)
    y = F.batch_norm(torch.from_numpy(x), mean, var, gamma, beta, eps=1e-3)
    return F.relu6(y).numpy()


@pytest.mark.parametrize("shape", [(1, 8, 5, 7), (3, 4, 50, 50), (2, 16, 1, 1)])   # batch, past a block, 1x1
def test_batchnorm_and_tensorflow_relu6_are_one_pass_equal_to_torch_and_to_the_layers(shape):
    model, params = bn_relu6_model(shape)
    assert model.fused_chain_layers == 6
    x = (RNG.standard_normal(shape) * 4).astype(np.float32)
    for _ in range(2):                                       # reused arrays: the second run too
        got = model.predict({"data": x})["out"]
        close(got, torch_bn_relu6(x, params))
    np.testing.assert_array_equal(bits(got), bits(model.trace({"data": x})["out"]))


def test_special_values_match_the_unfused_layers_bit_for_bit():
    """NaN, infinities, signed zeros, subnormals and the bounds themselves, through every kind a
    chain takes: linear, ReLU, THRESHOLD (with its scale and shift), clip (low > high too)."""
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 6.0, -6.0, 5.999999,
                         6.000001, 1.0, -1.0, 3.4e38, -3.4e38, 0.5, -0.5], np.float32)
    x = np.concatenate([specials, (RNG.standard_normal(4096 - specials.size) * 8).astype(np.float32)])
    chains = {
        "linear, ReLU, threshold, clip": lambda b: (
            b.add_activation("a", "LINEAR", "data", "a_out", params=[-1.0, 0.0]),
            b.add_activation("b", "RELU", "a_out", "b_out"),
            b.add_unary("c", "b_out", "c_out", "threshold", alpha=0.25, shift=-0.5, scale=2.0),
            b.add_clip("d", "c_out", "out", -0.0, 3.0)),
        "a clip whose low is above its high, then linear": lambda b: (
            b.add_clip("a", "data", "a_out", 1.0, -1.0),
            b.add_activation("b", "LINEAR", "a_out", "out", params=[1.0, 0.0])),    # -0 + 0 is +0
        "threshold at -0, clip at +0": lambda b: (
            b.add_unary("a", "data", "a_out", "threshold", alpha=-0.0),
            b.add_clip("b", "a_out", "out", 0.0, 0.0)),
        "TensorFlow's ReLU6": lambda b: tf_relu6(b, "data", "out", "r6"),
    }
    for what, add in chains.items():
        b = NeuralNetworkBuilder([("data", datatypes.Array(x.size))], [("out", None)],
                                 disable_rank5_shape_mapping=True)
        add(b)
        model = wb.load(b.spec)
        assert model.fused_chain_layers >= 2, what
        got, unfused = model.predict({"data": x})["out"], model.trace({"data": x})["out"]
        np.testing.assert_array_equal(bits(got), bits(unfused), err_msg=what)
    close(got, F.relu6(torch.from_numpy(x)).numpy())               # and the last one as torch has it


def test_chains_stop_where_a_blob_is_read_twice_or_is_an_output():
    def extra(b):
        b.add_elementwise("twice", ["r6_n", "out"], "sum", "ADD")      # r6_n: a second reader
    shape = (1, 4, 3, 3)
    model, params = bn_relu6_model(shape, outputs=[("out", None), ("sum", None), ("r6_r", None)], extra=extra)
    # bn -> r6_relu ends at r6_r (an output); r6_neg reads r6_r (alone: no chain); r6_clip ->
    # r6_back -> relu_again after r6_n, which the add reads too
    assert model.fused_chain_layers == 2 + 3
    x = (RNG.standard_normal(shape) * 4).astype(np.float32)
    got, traced = model.predict({"data": x}), model.trace({"data": x})
    for name in ("out", "sum", "r6_r"):
        np.testing.assert_array_equal(bits(got[name]), bits(traced[name]), err_msg=name)
    close(got["out"], torch_bn_relu6(x, params))


def test_a_chain_ends_before_a_batchnorm_of_another_channel_count():
    """Two batchnorms of 4 channels on a [1, 4, 2, 2] blob, then one of 2 channels whose own error
    must still name it in predict."""
    b = NeuralNetworkBuilder([("data", datatypes.Array(1, 4, 2, 2))], [("out", None)],
                             disable_rank5_shape_mapping=True)
    for name, source, target, channels in (("bn1", "data", "a", 4), ("bn2", "a", "b", 4), ("bn3", "b", "out", 2)):
        gamma, beta, mean, var = bn_params(channels)
        b.add_batchnorm(name, channels, gamma, beta, mean=mean, variance=var, input_name=source,
                        output_name=target)
    model = wb.load(b.spec)
    assert model.fused_chain_layers == 2
    with pytest.raises(WorkbenchError, match="bn3"):
        model.predict({"data": np.ones((1, 4, 2, 2), np.float32)})


@pytest.mark.parametrize("where", ["first", "second"])
def test_a_batchnorm_in_a_chain_given_the_wrong_channels_fails_naming_it(where):
    """The chain is planned for 4 channels; a 3-channel input (a flexible shape) runs the layers
    as written, so the batchnorm's own error names it."""
    b = NeuralNetworkBuilder([("data", datatypes.Array(1, 4, 2, 2))], [("out", None)],
                             disable_rank5_shape_mapping=True)
    gamma, beta, mean, var = bn_params(4)
    if where == "first":
        b.add_batchnorm("the_bn", 4, gamma, beta, mean=mean, variance=var, input_name="data", output_name="a")
        b.add_activation("relu", "RELU", "a", "out")
    else:
        b.add_activation("relu", "RELU", "data", "a")
        b.add_batchnorm("the_bn", 4, gamma, beta, mean=mean, variance=var, input_name="a", output_name="out")
    fsu.set_multiarray_ndshape_range(b.spec, "data", lower_bounds=[1, 1, 2, 2], upper_bounds=[1, 8, 2, 2])
    model = wb.load(b.spec)
    assert model.fused_chain_layers == 2
    with pytest.raises(WorkbenchError, match="the_bn"):
        model.predict({"data": np.ones((1, 3, 2, 2), np.float32)})
    x = RNG.standard_normal((1, 4, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(bits(model.predict({"data": x})["out"]), bits(model.trace({"data": x})["out"]))


def test_rank5_blobs_take_their_channels_from_axis_minus_3():
    """A rank-5 model ([Seq, Batch, C, H, W] blobs): rows of every (seq, batch, channel)."""
    channels = 3
    gamma, beta, mean, var = bn_params(channels)
    b = NeuralNetworkBuilder([("data", datatypes.Array(channels, 4, 5))], [("out", None)])
    b.add_batchnorm("bn", channels, gamma, beta, mean=mean, variance=var, input_name="data",
                    output_name="bn_out", epsilon=1e-3)
    b.add_clip("clip", "bn_out", "out", -1.0, 1.0)
    model = wb.load(b.spec)
    assert model.fused_chain_layers == 2
    x = (RNG.standard_normal((2, 3, channels, 4, 5)) * 3).astype(np.float32)
    y = F.batch_norm(torch.from_numpy(x.reshape(6, channels, 4, 5)), *(torch.from_numpy(p) for p in
                     (mean, var, gamma, beta)), eps=1e-3)
    got = model.predict({"data": x})["out"]
    close(got, F.hardtanh(y).numpy().reshape(x.shape))
    np.testing.assert_array_equal(bits(got), bits(model.trace({"data": x})["out"]))


def test_nothing_fuses_in_a_network_with_control_flow():
    """A loop body reads blobs by name: such networks run as written."""
    b = NeuralNetworkBuilder([("data", datatypes.Array(4))], [("out", None)], disable_rank5_shape_mapping=True)
    b.add_activation("relu", "RELU", "data", "a")
    b.add_activation("neg", "LINEAR", "a", "out", params=[-1.0, 0.0])
    loop = b.add_loop("loop", max_iterations=1)
    body = NeuralNetworkBuilder(nn_spec=loop.loop.bodyNetwork, disable_rank5_shape_mapping=True)
    body.add_activation("inner", "RELU", "out", "inner_out")
    model = wb.load(b.spec)
    assert model.fused_chain_layers == 0
    x = np.array([-1, 2, -3, 4], np.float32)
    np.testing.assert_array_equal(model.predict({"data": x})["out"], -np.maximum(x, 0))


# ---------------------------------------------------------------- a chain after a convolution

def conv_chain_model(x_shape, w, bias, stride, pads, second_reader=False):
    """data -> convolution "conv_out" -> batchnorm -> TF ReLU6 -> "out" (``second_reader``: an add
    also reads conv_out, so the chain stays a layer of its own)."""
    c_out, kc, kh, kw = w.shape
    params = bn_params(c_out)
    b = NeuralNetworkBuilder([("data", datatypes.Array(*x_shape))], [("out", None)], disable_rank5_shape_mapping=True)
    b.add_convolution(name="conv", kernel_channels=kc, output_channels=c_out, height=kh, width=kw,
                      stride_height=stride, stride_width=stride, border_mode="valid", groups=x_shape[1] // kc,
                      W=w.transpose(2, 3, 1, 0), b=bias, has_bias=bias is not None, input_name="data",
                      output_name="conv_out", padding_top=pads, padding_bottom=pads, padding_left=pads,
                      padding_right=pads)
    gamma, beta, mean, var = params
    b.add_batchnorm("bn", c_out, gamma, beta, mean=mean, variance=var, input_name="conv_out",
                    output_name="bn_out", epsilon=1e-3)
    tf_relu6(b, "bn_out", "six" if second_reader else "out", "r6")
    if second_reader:
        b.add_elementwise("sum", ["six", "conv_out"], "out", "ADD")
    return wb.load(b.spec), params


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("c_in, c_out, groups, kernel, size, stride, pads, path", [
    (6, 24, 1, 1, 9, 1, 0, "1x1"),
    (5, 20, 1, 3, 11, 2, 1, "im2col"),
    (4, 8, 1, 3, 12, 1, 1, "shifted"),
    (32, 32, 1, 3, 16, 1, 1, "winograd"),
    (8, 8, 8, 3, 10, 1, 1, "depthwise"),
])
def test_a_chain_after_a_convolution_runs_in_place_on_its_output(with_bias, c_in, c_out, groups, kernel, size,
                                                                 stride, pads, path):
    """The convolution's bias is the chain's first operation where the convolution does not add
    it in its own loops; the result is torch's, and the unfused layers' bit for bit."""
    w = RNG.standard_normal((c_out, c_in // groups, kernel, kernel)).astype(np.float32)
    bias = RNG.standard_normal(c_out).astype(np.float32) if with_bias else None
    x = (RNG.standard_normal((2, c_in, size, size)) * 2).astype(np.float32)
    model, params = conv_chain_model(x.shape, w, bias, stride, pads)
    assert model.chains_in_convolutions == 1 and model.fused_activations == 0
    conv = next(s.kernel for s in model.network.steps if s.kind == "convolution")
    assert conv.depthwise == (path == "depthwise") and (conv.winograd is not None) == (path == "winograd")
    assert (conv.shifted is not None) == (path == "shifted")
    y = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None if bias is None else torch.from_numpy(bias),
                 stride=stride, padding=pads, groups=groups)
    expected = torch_bn_relu6(y.numpy(), params)
    # sums of up to 288 products of size ~30, times a batchnorm scale of up to 7: float32's
    # rounding (Winograd's most) reaches 1e-4 in absolute terms
    for _ in range(2):
        got = model.predict({"data": x})["out"]
        close(got, expected, atol=2e-4)
    np.testing.assert_array_equal(bits(got), bits(model.trace({"data": x})["out"]))


def test_every_layer_of_a_chain_in_a_convolution_runs_once():
    """Layers whose second application would show: affine maps, a threshold above zero."""
    w = RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)
    bias = RNG.standard_normal(6).astype(np.float32)
    x = RNG.standard_normal((1, 4, 9, 9)).astype(np.float32)
    b = NeuralNetworkBuilder([("data", datatypes.Array(*x.shape))], [("out", None)], disable_rank5_shape_mapping=True)
    b.add_convolution(name="conv", kernel_channels=4, output_channels=6, height=3, width=3, stride_height=1,
                      stride_width=1, border_mode="valid", groups=1, W=w.transpose(2, 3, 1, 0), b=bias,
                      has_bias=True, input_name="data", output_name="conv_out")
    b.add_activation("double", "LINEAR", "conv_out", "a", params=[2.0, 1.0])
    b.add_unary("floor", "a", "c", "threshold", alpha=0.5)
    b.add_activation("half", "LINEAR", "c", "out", params=[0.5, -3.0])
    model = wb.load(b.spec)
    assert model.chains_in_convolutions == 1 and model.fused_chain_layers == 3
    y = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias))
    expected = torch.clamp(y * 2 + 1, min=0.5) * 0.5 - 3
    for _ in range(2):
        got = model.predict({"data": x})["out"]
        close(got, expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(bits(got), bits(model.trace({"data": x})["out"]))


def test_a_chain_stays_a_layer_where_the_convolution_output_is_read_elsewhere():
    w = RNG.standard_normal((4, 4, 3, 3)).astype(np.float32)
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    model, params = conv_chain_model(x.shape, w, None, 1, 1, second_reader=True)
    assert model.chains_in_convolutions == 0 and model.fused_chain_layers == 5
    y = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    close(model.predict({"data": x})["out"], torch_bn_relu6(y, params) + y)


def test_a_batchnorm_after_a_3d_convolution_keeps_its_channels_on_axis_minus_3():
    """A batchnorm reads channels on axis -3, which after a 3-D convolution is its depth; with
    depth equal to the output channels, the chain must not run per output channel."""
    c, depth = 4, 4
    w = RNG.standard_normal((c, c, 1, 1, 1)).astype(np.float32)
    b = NeuralNetworkBuilder([("data", datatypes.Array(1, c, depth, 3, 3))], [("out", None)],
                             disable_rank5_shape_mapping=True)
    b.add_convolution3d("conv", c, c, 1, 1, 1, w, None, False, input_name="data", output_name="conv_out")
    gamma, beta, mean, var = bn_params(depth)
    b.add_batchnorm("bn", depth, gamma, beta, mean=mean, variance=var, input_name="conv_out", output_name="bn_out",
                    epsilon=1e-3)
    b.add_activation("relu", "RELU", "bn_out", "out")
    model = wb.load(b.spec)
    assert model.chains_in_convolutions == 0 and model.fused_chain_layers == 2
    x = RNG.standard_normal((1, c, depth, 3, 3)).astype(np.float32)
    y = F.conv3d(torch.from_numpy(x), torch.from_numpy(w)).numpy()
    # the batchnorm per depth index: torch's channels are axis 1, so move depth there and back
    per_depth = F.batch_norm(torch.from_numpy(np.moveaxis(y, 2, 1).copy()), torch.from_numpy(mean),
                             torch.from_numpy(var), torch.from_numpy(gamma), torch.from_numpy(beta), eps=1e-3)
    got = model.predict({"data": x})["out"]
    close(got, np.moveaxis(F.relu(per_depth).numpy(), 1, 2), atol=1e-5)
    np.testing.assert_array_equal(bits(got), bits(model.trace({"data": x})["out"]))


def test_a_clip_with_a_nan_bound_stays_a_layer():
    """np.clip with a NaN bound gives NaN everywhere, which no chain operation reproduces."""
    x = np.array([-1, 0.5, 3, 9], np.float32)
    for low, high in ((np.nan, 6.0), (0.0, np.nan)):
        b = NeuralNetworkBuilder([("data", datatypes.Array(4))], [("out", None)], disable_rank5_shape_mapping=True)
        b.add_activation("relu", "RELU", "data", "a")
        b.add_clip("clip", "a", "out", low, high)
        model = wb.load(b.spec)
        assert model.fused_chain_layers == 0
        assert np.isnan(model.predict({"data": x})["out"]).all()


def test_a_layer_reading_a_blob_before_it_is_rewritten_is_not_chained_to_its_writer():
    """"relu" reads the model input "b"; "bn", after it, writes a blob named "b" too. The two are
    no chain (relu must see the input), and a layer writing the blob it reads is no chain with
    itself (planning it once looped forever)."""
    b = NeuralNetworkBuilder([("data", datatypes.Array(1, 2, 2, 2)), ("b", datatypes.Array(1, 2, 2, 2))],
                             [("out", None), ("data2", None)], disable_rank5_shape_mapping=True)
    b.add_activation("relu", "RELU", "b", "out")
    b.add_batchnorm("bn", 2, np.ones(2), np.zeros(2), mean=np.zeros(2), variance=np.ones(2), input_name="data",
                    output_name="b")
    b.add_activation("self", "RELU", "data", "data")
    b.add_activation("neg", "LINEAR", "data", "data2", params=[-1.0, 0.0])
    model = wb.load(b.spec)
    x, input_b = np.ones((1, 2, 2, 2), np.float32), -np.ones((1, 2, 2, 2), np.float32)
    got = model.predict({"data": x, "b": input_b})
    np.testing.assert_array_equal(got["out"], np.zeros_like(x))
    np.testing.assert_array_equal(got["data2"], -x)


def test_special_values_through_a_batchnorm_and_a_strided_input_match_the_layers():
    """Per-channel parameters with infinities and NaN around them, on a non-contiguous input
    (a transposed blob), against the layers one by one: equal bits, or NaN where they give NaN
    (which NaN numpy returns depends on its loop, so only NaN-ness is compared)."""
    channels = 5
    b = NeuralNetworkBuilder([("data", datatypes.Array(1, 7, channels, 9))], [("out", None)],
                             disable_rank5_shape_mapping=True)
    b.add_transpose("t", (0, 2, 1, 3), "data", "moved")              # [1, C, 7, 9], not contiguous
    gamma = np.array([1, -2, 0, 3e38, 0.5], np.float32)
    beta = np.array([0, np.inf, -1, 1, -0.0], np.float32)
    b.add_batchnorm("bn", channels, gamma, beta, mean=np.zeros(channels), variance=np.ones(channels),
                    input_name="moved", output_name="bn_out", epsilon=1e-5)
    tf_relu6(b, "bn_out", "out", "r6")
    model = wb.load(b.spec)
    assert model.fused_chain_layers == 5
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 6.0, -6.0], np.float32)
    x = RNG.standard_normal((1, 7, channels, 9)).astype(np.float32) * 5
    x[0, :, :, :] = np.where(RNG.random(x.shape[1:]) < 0.3, RNG.choice(specials, x.shape[1:]), x[0])
    got, unfused = model.predict({"data": x})["out"], model.trace({"data": x})["out"]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(unfused))
    numbers = ~np.isnan(unfused)
    np.testing.assert_array_equal(bits(got[numbers]), bits(unfused[numbers]))


# ---------------------------------------------------------------- MVN and scale (a LayerNorm)

def mvn_scale_model(shape, across, variance, scale_shape, bias_shape, outputs=(("out", None),), extra=None):
    c, h, w = shape[-3:]
    full = {"1": (1,), "C": (c,), "1HW": (1, h, w), "CHW": (c, h, w)}
    scale = RNG.uniform(0.5, 2, full[scale_shape]).astype(np.float32)
    bias = None if bias_shape is None else RNG.standard_normal(full[bias_shape]).astype(np.float32)
    b = NeuralNetworkBuilder([("data", datatypes.Array(*shape))], list(outputs), disable_rank5_shape_mapping=True)
    b.add_mvn("norm", "data", "normed", across_channels=across, normalize_variance=variance, epsilon=1e-5)
    b.add_scale("affine", scale, bias, bias is not None, "normed", "out", shape_scale=full[scale_shape],
                shape_bias=full[bias_shape or "1"])
    if extra:
        extra(b)
    return wb.load(b.spec), scale, bias


def torch_mvn_scale(x, across, variance, scale, bias):
    t = torch.from_numpy(x)
    axes = (-3, -2, -1) if across else (-2, -1)
    centered = t - t.mean(dim=axes, keepdim=True)
    if variance:
        centered = F.layer_norm(t, t.shape[-len(axes):], eps=1e-5)
    y = centered * torch.from_numpy(scale.reshape(scale.shape if scale.ndim == 3 else (-1, 1, 1)))
    if bias is not None:
        y = y + torch.from_numpy(bias.reshape(bias.shape if bias.ndim == 3 else (-1, 1, 1)))
    return y.numpy()


@pytest.mark.parametrize("across", [False, True])
@pytest.mark.parametrize("variance", [True, False])
@pytest.mark.parametrize("scale_shape, bias_shape", [("1HW", "1HW"), ("C", "C"), ("CHW", None), ("1", "CHW")])
def test_mvn_and_scale_are_one_pass_equal_to_torch_and_to_the_layers(across, variance, scale_shape, bias_shape):
    shape = (2, 3, 4, 50)
    model, scale, bias = mvn_scale_model(shape, across, variance, scale_shape, bias_shape)
    assert model.fused_layer_norms == 1
    x = (RNG.standard_normal(shape) * 3 + 1).astype(np.float32)
    for _ in range(2):
        got = model.predict({"data": x})["out"]
        close(got, torch_mvn_scale(x, across, variance, scale, bias), atol=1e-5)
    np.testing.assert_array_equal(bits(got), bits(model.trace({"data": x})["out"]))


def test_the_transformer_layer_norm_shape_and_special_rows():
    """[1, T, 1, D] as converters reshape a LayerNorm's input: rows of D positions, one scale per
    position; a row with an inf or NaN, and a constant row (variance 0), as the layers give them."""
    shape = (1, 6, 1, 16)
    model, scale, bias = mvn_scale_model(shape, False, True, "1HW", "1HW")
    x = RNG.standard_normal(shape).astype(np.float32)
    x[0, 1, 0, 3], x[0, 2, 0, 5], x[0, 3] = np.inf, np.nan, 2.5
    got, unfused = model.predict({"data": x})["out"], model.trace({"data": x})["out"]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(unfused))
    np.testing.assert_array_equal(bits(got[~np.isnan(got)]), bits(unfused[~np.isnan(unfused)]))
    close(got[0, [0, 4, 5]], torch_mvn_scale(x, False, True, scale, bias)[0, [0, 4, 5]], atol=1e-5)


def test_mvn_and_scale_stay_apart_where_the_normalized_blob_is_read_twice():
    def extra(b):
        b.add_elementwise("twice", ["normed", "out"], "sum", "ADD")
    model, scale, bias = mvn_scale_model((1, 2, 3, 4), False, True, "C", "C", [("out", None), ("sum", None)], extra)
    assert model.fused_layer_norms == 0


def test_a_scale_the_input_does_not_fit_fails_naming_the_scale_layer():
    """A flexible input whose channels no longer match the scale's [C] parameters runs both layers
    as written: the scale layer's own error names it."""
    model_spec_shape = (1, 3, 2, 2)
    model, scale, bias = mvn_scale_model(model_spec_shape, False, True, "C", "C")
    spec = model.spec
    fsu.set_multiarray_ndshape_range(spec, "data", lower_bounds=[1, 1, 2, 2], upper_bounds=[1, 8, 2, 2])
    model = wb.load(spec)
    assert model.fused_layer_norms == 1
    with pytest.raises(WorkbenchError, match="affine"):
        model.predict({"data": np.ones((1, 4, 2, 2), np.float32)})
    x = RNG.standard_normal(model_spec_shape).astype(np.float32)
    np.testing.assert_array_equal(bits(model.predict({"data": x})["out"]), bits(model.trace({"data": x})["out"]))


def test_an_input_the_fused_pair_cannot_take_runs_both_layers_each_in_its_turn():
    """A rank-2 blob: the MVN takes it (per row), the scale layer's one number too, the fused
    pass does not; both run as written and the scale's output is its own, not the MVN's."""
    b = NeuralNetworkBuilder([("data", datatypes.Array(4, 10))], [("out", None)], disable_rank5_shape_mapping=True)
    b.add_mvn("norm", "data", "normed", across_channels=False, normalize_variance=True, epsilon=1e-5)
    b.add_scale("affine", np.array([2.0], np.float32), np.array([1.0], np.float32), True, "normed", "out",
                shape_scale=[1], shape_bias=[1])
    model = wb.load(b.spec)
    assert model.fused_layer_norms == 1
    x = RNG.standard_normal((4, 10)).astype(np.float32)
    t = torch.from_numpy(x)
    expected = (F.layer_norm(t.reshape(1, -1), (40,), eps=1e-5) * 2 + 1).reshape(4, 10)   # rank 2: one plane
    for _ in range(2):
        got = model.predict({"data": x})["out"]
        close(got, expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(bits(got), bits(model.trace({"data": x})["out"]))


@pytest.mark.parametrize("fusion", ["chain", "layer norm"])
def test_an_optional_input_left_out_fails_naming_the_first_layer_of_a_fusion(fusion):
    b = NeuralNetworkBuilder([("data", datatypes.Array(1, 3, 4, 5)), ("opt", datatypes.Array(1, 3, 4, 5))],
                             [("out", None), ("d2", None)], disable_rank5_shape_mapping=True)
    if fusion == "chain":
        b.add_activation("first", "RELU", "opt", "a")
        b.add_clip("second", "a", "out", 0.0, 6.0)
    else:
        b.add_mvn("first", "opt", "a", across_channels=False, normalize_variance=True, epsilon=1e-5)
        b.add_scale("second", np.array([2.0], np.float32), None, False, "a", "out", shape_scale=[1])
    b.add_activation("other", "RELU", "data", "d2")
    b.spec.description.input[1].type.isOptional = True
    model = wb.load(b.spec)
    assert model.fused_chain_layers + model.fused_layer_norms >= 1
    with pytest.raises(WorkbenchError, match="layer 'first'"):
        model.predict({"data": np.ones((1, 3, 4, 5), np.float32)})
