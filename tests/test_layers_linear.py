"""innerProduct, batchedMatmul and embedding, run through wb.load(...).predict on NeuralNetworkBuilder models.

References are torch ops (F.linear, torch.matmul, F.embedding) or numpy formulas from NeuralNetwork.proto.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder

import workbench as wb

RNG = np.random.default_rng(11)


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def close(got, want, rtol=1e-5, atol=1e-5):
    want = want.numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def predict(builder, **inputs):
    return wb.load(builder.spec).predict(inputs)


def builder(inputs, exact):
    return NeuralNetworkBuilder([(n, datatypes.Array(*s)) for n, s in inputs], [("out", None)],
                                disable_rank5_shape_mapping=exact)


# ---------------------------------------------------------------- innerProduct

@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("x_shape", [(6,), (3, 2, 6, 1, 1), (2, 3, 1), (4, 2, 2, 3, 1)])
def test_inner_product_rank5(has_bias, x_shape):
    """Rank-5 model: C*H*W is flattened (channel-major) into C_in; output [S, B, C_out, 1, 1]."""
    declared = x_shape[-3:] if len(x_shape) == 5 else x_shape
    cin, cout = int(np.prod(declared)), 5
    w, b = rand(cout, cin), rand(cout)
    bld = builder([("x", declared)], exact=False)
    bld.add_inner_product("ip", w, b if has_bias else None, cin, cout, has_bias, "x", "out")
    x = rand(*x_shape)
    got = predict(bld, x=x)["out"]
    lead = x.shape[:-3] if x.ndim == 5 else ()
    want = F.linear(t(x).reshape(-1, cin), t(w), t(b) if has_bias else None)
    assert got.size == want.numel()
    close(got.reshape(lead + (cout,)), want.reshape(lead + (cout,)))
    if x.ndim == 5:
        assert got.shape == lead + (cout, 1, 1)


# exact rank: (input shape, how the proto reshapes it to a matrix, output shape)
EXACT_RANK_CASES = [
    ((24,), lambda x: x[None], lambda y, x: y[0]),
    ((5, 24), lambda x: x, lambda y, x: y),
    ((2, 3, 24), lambda x: x.reshape(6, 24), lambda y, x: y.reshape(2, 3, -1)),
    ((5, 2, 3, 4), lambda x: x.reshape(5, 24), lambda y, x: y.reshape(5, -1, 1, 1)),
    ((5, 6, 2, 3, 4), lambda x: x.reshape(30, 24), lambda y, x: y.reshape(5, 6, -1, 1, 1)),
]


@pytest.mark.parametrize("x_shape,to_matrix,from_matrix", EXACT_RANK_CASES)
@pytest.mark.parametrize("has_bias", [True, False])
def test_inner_product_exact_rank(x_shape, to_matrix, from_matrix, has_bias):
    cin, cout = 24, 7
    w, b = rand(cout, cin), rand(cout)
    bld = builder([("x", x_shape)], exact=True)
    bld.add_inner_product("ip", w, b if has_bias else None, cin, cout, has_bias, "x", "out")
    x = rand(*x_shape)
    want = F.linear(t(to_matrix(x)), t(w), t(b) if has_bias else None).numpy()
    close(predict(bld, x=x)["out"], from_matrix(want, x))


def _int8_weights(w):
    """Symmetric int8 weights and their scale, as coremltools' dynamic-quantization tests make them."""
    scale = np.abs(w).max() / 127.0
    return np.round(w / scale).astype(np.int8), np.float32(scale)


def _int8_input(x):
    """The proto's runtime input quantization: symmetric per-blob int8, scale max|x| / 127."""
    scale = np.float32(np.abs(x).max() / 127.0)
    return np.clip(np.round(x / scale), -127, 127).astype(np.float32) * scale


@pytest.mark.parametrize("x_shape", [(24,), (5, 24), (2, 3, 24), (5, 2, 3, 4)])
def test_inner_product_int8_dynamic_quantize(x_shape):
    cin, cout = 24, 9
    wq, scale = _int8_weights(rand(cout, cin))
    bld = builder([("x", x_shape)], exact=True)
    bld.add_inner_product("ip", wq.tobytes(), None, cin, cout, False, "x", "out",
                          int_8_dynamic_quantize=True, is_quantized_weight=True, quantization_type="linear",
                          nbits=8, quant_scale=np.array([scale]))
    x = rand(*x_shape, scale=3)
    got = predict(bld, x=x)["out"]
    w = wq.astype(np.float32) * scale
    flat = x.reshape(-1, cin) if x.ndim != 4 else x.reshape(x.shape[0], -1)
    want = F.linear(t(_int8_input(flat)), t(w)).numpy()
    close(got.reshape(want.shape), want, rtol=1e-4, atol=1e-4)
    # and the result stays within int8 noise of the float product (coremltools asks 40 dB over many rows)
    exact = flat @ w.T
    snr = 10 * np.log10(np.sum(exact ** 2) / np.sum((got.reshape(exact.shape) - exact) ** 2))
    assert snr > 30


def test_inner_product_wrong_weight_count_is_a_format_error():
    bld = builder([("x", (4,))], exact=True)
    bld.add_inner_product("ip", rand(3, 4), None, 4, 3, False, "x", "out")
    del bld.spec.neuralNetwork.layers[0].innerProduct.weights.floatValue[-1]
    with pytest.raises(wb.ModelFormatError, match="ip"):
        wb.load(bld.spec)


# ---------------------------------------------------------------- batchedMatmul, two inputs

def _promoted_matmul(a, b, ta, tb):
    """The proto's rules: 1-D a -> (1, D), 1-D b -> (D, 1), kept in the output; then numpy broadcasting."""
    a = a[None] if a.ndim == 1 else a
    b = b[:, None] if b.ndim == 1 else b
    a = a.swapaxes(-1, -2) if ta else a
    b = b.swapaxes(-1, -2) if tb else b
    return torch.matmul(t(a), t(b))


MATMUL_CASES = [
    ((3, 4), (4, 5), False, False),
    ((2, 3, 4), (2, 4, 5), False, False),
    ((2, 1, 3, 4), (3, 4, 5), False, False),       # batch broadcasting
    ((3, 4), (6, 2, 4, 5), False, False),          # rank 2 against rank 4
    ((4, 3), (4, 5), True, False),
    ((3, 4), (5, 4), False, True),
    ((2, 4, 3), (1, 5, 4), True, True),
    ((4,), (4, 5), False, False),                  # 1-D a -> output (1, 5)
    ((3, 4), (4,), False, False),                  # 1-D b -> output (3, 1)
    ((4,), (4,), False, False),                    # -> (1, 1)
    ((3, 16, 45000), (3, 4, 16), True, True),      # a over 8 MB: read transposed, not copied
]


@pytest.mark.parametrize("a_shape,b_shape,ta,tb", MATMUL_CASES)
def test_batched_matmul_two_inputs(a_shape, b_shape, ta, tb):
    bld = builder([("a", a_shape), ("b", b_shape)], exact=True)
    bld.add_batched_mat_mul("bmm", ["a", "b"], "out", transpose_a=ta, transpose_b=tb)
    a, b = rand(*a_shape), rand(*b_shape)
    want = _promoted_matmul(a, b, ta, tb)
    got = predict(bld, a=a, b=b)["out"]
    assert got.ndim == max(2, len(a_shape), len(b_shape))
    close(got, want)


@pytest.mark.parametrize("x_shape", [(6,), (5, 6), (2, 3, 6), (2, 1, 3, 6)])
@pytest.mark.parametrize("has_bias", [True, False])
def test_batched_matmul_weights(x_shape, has_bias):
    w, b = rand(6, 4), rand(4)
    bld = builder([("x", x_shape)], exact=True)
    bld.add_batched_mat_mul("bmm", ["x"], "out", weight_matrix_rows=6, weight_matrix_columns=4, W=w,
                            bias=b if has_bias else None)
    x = rand(*x_shape)
    want = torch.matmul(t(x), t(w)) + (t(b) if has_bias else 0)
    close(predict(bld, x=x)["out"], want)


@pytest.mark.parametrize("x_shape", [(11,), (5, 11), (2, 3, 11)])
def test_batched_matmul_int8_dynamic_quantize(x_shape):
    wq, scale = _int8_weights(rand(11, 23, scale=10))
    b = rand(23)
    bld = builder([("x", x_shape)], exact=True)
    bld.add_batched_mat_mul("bmm", ["x"], "out", weight_matrix_rows=11, weight_matrix_columns=23,
                            W=wq.tobytes(), bias=b, int_8_dynamic_quantize=True, is_quantized_weight=True,
                            quantization_type="linear", nbits=8, quant_scale=np.array([scale]))
    x = rand(*x_shape, scale=5)
    w = wq.astype(np.float32) * scale
    want = torch.matmul(t(_int8_input(x)), t(w)) + t(b)
    close(predict(bld, x=x)["out"], want, rtol=1e-4, atol=1e-3)


def test_batched_matmul_shape_mismatch_names_the_layer():
    bld = builder([("a", (3, 4)), ("b", (5, 6))], exact=True)
    bld.add_batched_mat_mul("bmm", ["a", "b"], "out")
    with pytest.raises(wb.LayerError, match="bmm"):
        predict(bld, a=rand(3, 4), b=rand(5, 6))


# ---------------------------------------------------------------- embedding

@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("lead", [(), (4, 1), (3, 2)])
def test_embedding_rank5(has_bias, lead):
    vocab, cout = 10, 6
    w, b = rand(cout, vocab), rand(cout)
    bld = builder([("x", (1,))], exact=False)
    bld.add_embedding("emb", w, b if has_bias else None, vocab, cout, has_bias, "x", "out")
    idx = RNG.integers(0, vocab, size=lead or (1,))
    x = idx.astype(np.float32).reshape(lead + (1, 1, 1)) if lead else idx.astype(np.float32)
    got = predict(bld, x=x)["out"]
    want = F.embedding(t(idx), t(w.T)) + (t(b) if has_bias else 0)
    if lead:
        assert got.shape == lead + (cout, 1, 1)
    close(got.reshape(want.shape), want)


def test_embedding_exact_rank4():
    vocab, cout = 7, 3
    w, b = rand(cout, vocab), rand(cout)
    bld = builder([("x", (5, 1, 1, 1))], exact=True)
    bld.add_embedding("emb", w, b, vocab, cout, True, "x", "out")
    idx = np.array([0, 6, 3, 3, 1])
    got = predict(bld, x=idx.astype(np.float32).reshape(5, 1, 1, 1))["out"]
    want = (F.embedding(t(idx), t(w.T)) + t(b)).reshape(5, cout, 1, 1)
    close(got, want)


def test_embedding_index_out_of_range_names_the_layer():
    bld = builder([("x", (1,))], exact=False)
    bld.add_embedding("emb", rand(3, 4), None, 4, 3, False, "x", "out")
    with pytest.raises(wb.LayerError, match="emb.*outside"):
        predict(bld, x=np.array([4], np.float32))
