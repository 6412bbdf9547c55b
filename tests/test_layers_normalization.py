"""Normalization kernels (batchnorm, mvn, softmax, softmaxND, l2normalize, lrn, layerNormalization)
run through wb.load(...).predict(...) and checked against torch or the proto's formulas."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder

import workbench as wb

RTOL, ATOL = 1e-5, 1e-6


def rand(*shape, scale=1.0, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def builder(in_shape, out_shape=None, exact=True):
    """A one-input builder: exact-rank (spec 4+) or rank-5 mapping (in_shape must be (C,H,W) or (C,))."""
    out = datatypes.Array(*(out_shape or in_shape))
    return NeuralNetworkBuilder([("data", datatypes.Array(*in_shape))], [("out", out)],
                                disable_rank5_shape_mapping=exact)


def run(b, x):
    return np.asarray(wb.load(b.spec).predict({"data": x})["out"])


def check(got, want, rtol=RTOL, atol=ATOL):
    want = np.asarray(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def as_nchw(x):
    """Fold every axis before C (-3) into one batch axis, for torch's (N, C, H, W) ops."""
    return torch.from_numpy(np.ascontiguousarray(x.reshape((-1,) + x.shape[-3:])))


# ---------------------------------------------------------------- batchnorm

def bn_params(c, seed=1):
    g = np.random.default_rng(seed)
    f32 = np.float32
    return dict(gamma=g.uniform(0.5, 2, c).astype(f32), beta=g.standard_normal(c).astype(f32),
                mean=g.standard_normal(c).astype(f32), variance=g.uniform(0.1, 2, c).astype(f32))


def torch_bn(x, p, eps):
    y = F.batch_norm(as_nchw(x), torch.from_numpy(p["mean"]), torch.from_numpy(p["variance"]),
                     torch.from_numpy(p["gamma"]), torch.from_numpy(p["beta"]), training=False, eps=eps)
    return y.numpy().reshape(x.shape)


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 5), (2, 2, 3, 4, 5)])
@pytest.mark.parametrize("eps", [1e-3, 0.5])
def test_batchnorm_fixed_stats_exact_rank(shape, eps):
    x, p = rand(*shape), bn_params(3)
    b = builder(shape)
    b.add_batchnorm("bn", 3, input_name="data", output_name="out", epsilon=eps, **p)
    check(run(b, x), torch_bn(x, p, eps))


def test_batchnorm_fixed_stats_rank5():
    x, p = rand(3, 4, 5), bn_params(3)
    b = builder((3, 4, 5), exact=False)
    b.add_batchnorm("bn", 3, input_name="data", output_name="out", epsilon=1e-3, **p)
    check(run(b, x), torch_bn(x, p, 1e-3))


def test_batchnorm_epsilon_zero_means_1e5():
    x, p = rand(2, 3, 4, 5), bn_params(3)
    p["variance"] = np.full(3, 1e-5, np.float32)      # so epsilon's value shows in the output
    b = builder(x.shape)
    b.add_batchnorm("bn", 3, input_name="data", output_name="out", epsilon=0.0, **p)
    check(run(b, x), torch_bn(x, p, 1e-5), rtol=1e-4)


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 5), (2, 2, 3, 4, 5)])
@pytest.mark.parametrize("eps", [1e-5, 0.3])
def test_batchnorm_instance_normalization(shape, eps):
    x, p = rand(*shape, scale=3.0) + 1, bn_params(3)
    b = builder(shape)
    b.add_batchnorm("bn", 3, p["gamma"], p["beta"], input_name="data", output_name="out",
                    compute_mean_var=True, instance_normalization=True, epsilon=eps)
    want = F.instance_norm(as_nchw(x), weight=torch.from_numpy(p["gamma"]),
                           bias=torch.from_numpy(p["beta"]), eps=eps).numpy().reshape(shape)
    check(run(b, x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exact, shape", [(True, (4, 3, 2, 5)), (True, (2, 2, 3, 4, 5)),
                                          (True, (3, 4, 5)), (False, (2, 3, 3, 4, 5))])
def test_batchnorm_compute_mean_var_over_batch(exact, shape):
    """Without instanceNormalization the statistics span every axis but C (the whole batch)."""
    x, p = rand(*shape, scale=2.0) - 1, bn_params(3)
    b = builder(shape if exact else shape[-3:], exact=exact)
    layer = b.add_batchnorm("bn", 3, p["gamma"], p["beta"], input_name="data", output_name="out",
                            compute_mean_var=True, instance_normalization=True, epsilon=1e-4)
    layer.batchnorm.instanceNormalization = False     # the builder refuses to write this case
    want = F.batch_norm(as_nchw(x), None, None, torch.from_numpy(p["gamma"]), torch.from_numpy(p["beta"]),
                        training=True, eps=1e-4).numpy().reshape(shape)
    check(run(b, x), want, rtol=1e-4, atol=1e-5)


def test_batchnorm_rank5_instance_with_seq_and_batch():
    """Rank-5 blobs [Seq, Batch, C, H, W]: each (seq, batch) item is its own instance."""
    x, p = rand(2, 3, 3, 4, 5), bn_params(3)
    b = builder((3, 4, 5), exact=False)
    b.add_batchnorm("bn", 3, p["gamma"], p["beta"], input_name="data", output_name="out",
                    compute_mean_var=True, instance_normalization=True, epsilon=1e-5)
    want = F.instance_norm(as_nchw(x), weight=torch.from_numpy(p["gamma"]),
                           bias=torch.from_numpy(p["beta"]), eps=1e-5).numpy().reshape(x.shape)
    check(run(b, x), want, rtol=1e-4, atol=1e-5)


def test_batchnorm_wrong_weight_count_is_a_format_error():
    p = bn_params(3)
    p["mean"] = p["mean"][:2]
    b = builder((3, 4, 5))
    b.add_batchnorm("bn", 3, input_name="data", output_name="out", **p)
    with pytest.raises(wb.WorkbenchError, match="bn"):
        wb.load(b.spec).predict({"data": rand(3, 4, 5)})


def test_batchnorm_channel_mismatch_names_the_layer():
    b = builder((4, 4, 5))
    b.add_batchnorm("bn_c", 3, input_name="data", output_name="out", **bn_params(3))
    with pytest.raises(wb.WorkbenchError, match="bn_c"):
        wb.load(b.spec).predict({"data": rand(4, 4, 5)})


# ---------------------------------------------------------------- mvn

def np_mvn(x, axes, normalize_variance, eps):
    """The proto's MVN: subtract the mean over ``axes``; divide by sqrt(var + eps) if asked."""
    x = x.astype(np.float64)
    c = x - x.mean(axis=axes, keepdims=True)
    return c / np.sqrt(c.var(axis=axes, keepdims=True) + eps) if normalize_variance else c


@pytest.mark.parametrize("exact, shape", [(True, (3, 4, 5)), (True, (2, 3, 4, 5)), (True, (2, 2, 3, 4, 5)),
                                          (False, (3, 4, 5))])
@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("normalize_variance", [True, False])
def test_mvn(exact, shape, across, normalize_variance):
    x = rand(*shape, scale=2.0) + 3
    b = builder(shape, exact=exact)
    b.add_mvn("mvn", "data", "out", across_channels=across, normalize_variance=normalize_variance,
              epsilon=1e-4)
    got = run(b, x)
    tail = shape[-3:] if across else shape[-2:]
    if normalize_variance:     # torch's layer_norm over the trailing axes is the same computation
        want = F.layer_norm(torch.from_numpy(x), tail, eps=1e-4).numpy()
    else:
        want = np_mvn(x, tuple(range(-len(tail), 0)), False, 0)
    check(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("eps, used", [(0.0, 1e-6), (0.25, 0.25)])
def test_mvn_epsilon_inside_the_square_root(eps, used):
    x = rand(2, 3, 4, 5, scale=1e-3)        # variance ~1e-6: epsilon shows
    b = builder(x.shape)
    b.add_mvn("mvn", "data", "out", across_channels=False, normalize_variance=True, epsilon=eps)
    check(run(b, x), np_mvn(x, (-2, -1), True, used), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- softmax

@pytest.mark.parametrize("exact, shape", [(True, (3, 4, 5)), (True, (2, 3, 4, 5)), (True, (2, 2, 3, 4, 5)),
                                          (False, (3, 4, 5)), (False, (6, 1, 1))])
def test_softmax_over_channels(exact, shape):
    x = rand(*shape, scale=30.0)     # large logits: the kernel must not overflow
    b = builder(shape, exact=exact)
    b.add_softmax("sm", "data", "out")
    check(run(b, x), torch.softmax(torch.from_numpy(x), dim=-3).numpy())


def test_softmax_rank5_vector_input():
    x = rand(7, scale=5.0)
    b = builder((7,), exact=False)
    b.add_softmax("sm", "data", "out")
    check(run(b, x).reshape(7), torch.softmax(torch.from_numpy(x), dim=0).numpy())


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (2, 3, 4, 5), (2, 1, 3, 2, 4)])
def test_softmax_nd_every_axis(shape):
    x = rand(*shape, scale=20.0)
    for axis in range(-len(shape), len(shape)):
        b = builder(shape)
        b.add_softmax_nd("sm", "data", "out", axis=axis)
        check(run(b, x), torch.softmax(torch.from_numpy(x), dim=axis).numpy())


@pytest.mark.parametrize("n", [8, 19, 128])
def test_softmax_nd_long_rows_max_anywhere_and_special_values(n):
    """Rows long enough for the interleaved running maxima: the largest logit at every position
    (each lane and the tail), and rows holding NaN (first or later), +inf or -inf, against torch."""
    rows = np.tile(rand(n, scale=3.0, seed=1), (n + 5, 1))
    for k in range(n):
        rows[k, k] = 200.0     # dominant by more than exp's range: a wrong maximum overflows to NaN
    rows[n, 0] = np.nan
    rows[n + 1, n - 1] = np.nan
    rows[n + 2, n // 2] = np.inf
    rows[n + 3, 1] = -np.inf
    rows[n + 4, :] = -np.inf                           # every logit -inf: 0/0, NaN in torch
    b = builder(rows.shape)
    b.add_softmax_nd("sm", "data", "out", axis=-1)
    got = run(b, rows)
    want = torch.softmax(torch.from_numpy(rows), dim=-1).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    check(np.nan_to_num(got), np.nan_to_num(want))


# ---------------------------------------------------------------- l2normalize

def np_l2(x, eps):
    """The proto: x / sqrt(sum(x^2) + eps), the sum over C, H, W per batch item."""
    x = x.astype(np.float64)
    return x / np.sqrt(np.sum(x * x, axis=(-3, -2, -1), keepdims=True) + eps)


@pytest.mark.parametrize("exact, shape", [(True, (3, 4, 5)), (True, (2, 3, 4, 5)), (True, (2, 2, 3, 2, 2)),
                                          (False, (3, 4, 5)), (False, (1, 2, 2))])
@pytest.mark.parametrize("eps, used", [(1e-3, 1e-3), (0.0, 1e-6)])
def test_l2_normalize(exact, shape, eps, used):
    x = rand(*shape, scale=1e-3)            # sum of squares comparable to epsilon
    b = builder(shape, exact=exact)
    b.add_l2_normalize("l2", "data", "out", epsilon=eps)
    check(run(b, x), np_l2(x, used), rtol=1e-4, atol=1e-6)


def test_l2_normalize_matches_torch_normalize_when_eps_is_negligible():
    x = rand(4, 3, 4, 5)
    b = builder(x.shape)
    b.add_l2_normalize("l2", "data", "out", epsilon=1e-12)
    want = F.normalize(torch.from_numpy(x).reshape(4, -1), dim=1).numpy().reshape(x.shape)
    check(run(b, x), want)


# ---------------------------------------------------------------- lrn

@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("alpha, beta, k", [(1e-2, 0.75, 1.0), (0.5, 1.0, 2.0), (2.0, 0.5, 0.0)])
def test_lrn_exact_rank4(size, alpha, beta, k):
    x = rand(2, 6, 3, 4, scale=2.0)
    b = builder(x.shape)
    b.add_lrn("lrn", "data", "out", alpha=alpha, beta=beta, local_size=size, k=k)
    want = F.local_response_norm(torch.from_numpy(x), size, alpha=alpha, beta=beta, k=k or 1.0).numpy()
    check(run(b, x), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("exact, shape", [(True, (6, 3, 4)), (True, (2, 2, 6, 3, 4)), (False, (6, 3, 4))])
@pytest.mark.parametrize("size", [2, 3])
def test_lrn_channels_on_axis_minus_3(exact, shape, size):
    x = rand(*shape, scale=2.0)
    b = builder(shape, exact=exact)
    b.add_lrn("lrn", "data", "out", alpha=0.3, beta=0.75, local_size=size, k=1.5)
    want = F.local_response_norm(as_nchw(x), size, alpha=0.3, beta=0.75, k=1.5).numpy().reshape(shape)
    check(run(b, x), want, rtol=1e-4, atol=1e-6)


def test_lrn_proto_formula_even_window():
    """localSize 4 around channel c covers c-2 .. c+1 (Metal's window), clipped at the edges."""
    x = rand(5, 1, 2)
    b = builder(x.shape)
    b.add_lrn("lrn", "data", "out", alpha=0.8, beta=0.6, local_size=4, k=1.2)
    x64 = x.astype(np.float64)
    want = np.empty_like(x64)
    for c in range(5):
        s = np.sum(x64[max(0, c - 2):c + 2] ** 2, axis=0)
        want[c] = x64[c] / (1.2 + 0.8 / 4 * s) ** 0.6
    check(run(b, x), want)


# ---------------------------------------------------------------- layerNormalization

@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (2, 3, 4, 5), (2, 1, 3, 2, 4)])
def test_layer_normalization_every_trailing_shape(shape):
    x = rand(*shape, scale=3.0) + 2
    for n in range(1, len(shape) + 1):
        normalized = shape[-n:]
        g = np.random.default_rng(n)
        gamma = g.uniform(0.5, 1.5, normalized).astype(np.float32)
        beta = g.standard_normal(normalized).astype(np.float32)
        b = builder(shape)
        b.add_layer_normalization("ln", "data", "out", list(normalized), gamma, beta, eps=1e-3)
        want = F.layer_norm(torch.from_numpy(x), normalized, torch.from_numpy(gamma),
                            torch.from_numpy(beta), eps=1e-3).numpy()
        check(run(b, x), want, rtol=1e-4, atol=1e-5)


def test_layer_normalization_large_eps():
    x = rand(4, 6, scale=0.1)
    gamma, beta = np.full(6, 2.0, np.float32), np.full(6, -1.0, np.float32)
    b = builder(x.shape)
    b.add_layer_normalization("ln", "data", "out", [6], gamma, beta, eps=0.5)
    x64 = x.astype(np.float64)
    c = x64 - x64.mean(-1, keepdims=True)
    check(run(b, x), 2.0 * c / np.sqrt(c.var(-1, keepdims=True) + 0.5) - 1.0)


def test_layer_normalization_without_gamma_beta_is_plain_normalization():
    x = rand(3, 8)
    b = builder(x.shape)
    layer = b.add_layer_normalization("ln", "data", "out", [8], np.ones(8), np.zeros(8), eps=1e-5)
    layer.layerNormalization.ClearField("gamma")
    layer.layerNormalization.ClearField("beta")
    check(run(b, x), F.layer_norm(torch.from_numpy(x), (8,), eps=1e-5).numpy(), rtol=1e-4, atol=1e-5)


def test_layer_normalization_shape_mismatch_names_the_layer():
    b = builder((3, 8))
    b.add_layer_normalization("ln_bad", "data", "out", [3], np.ones(3), np.zeros(3))
    with pytest.raises(wb.WorkbenchError, match="ln_bad"):
        wb.load(b.spec).predict({"data": rand(3, 8)})


def test_layer_normalization_wrong_gamma_count_is_a_format_error():
    b = builder((3, 8))
    layer = b.add_layer_normalization("ln_w", "data", "out", [8], np.ones(8), np.zeros(8))
    del layer.layerNormalization.gamma.floatValue[-1]
    with pytest.raises(wb.WorkbenchError, match="ln_w"):
        wb.load(b.spec).predict({"data": rand(3, 8)})


# ---------------------------------------------------------------- read-only inputs

def test_kernels_never_write_their_input():
    """Every kernel reads the same input blob; none may change it (or fail on a read-only array)."""
    x = rand(2, 3, 4, 5)
    names = "abcdefg"
    b = NeuralNetworkBuilder([("data", datatypes.Array(*x.shape))],
                             [(n, datatypes.Array(*x.shape)) for n in names],
                             disable_rank5_shape_mapping=True)
    b.add_batchnorm("bn", 3, input_name="data", output_name="a", **bn_params(3))
    b.add_mvn("mvn", "data", "b")
    b.add_softmax("sm", "data", "c")
    b.add_softmax_nd("smnd", "data", "d", axis=1)
    b.add_l2_normalize("l2", "data", "e")
    b.add_lrn("lrn", "data", "f", alpha=1e-2, beta=0.75, local_size=3)
    b.add_layer_normalization("ln", "data", "g", [5], np.ones(5), np.zeros(5))
    keep = x.copy()
    out = wb.load(b.spec).predict({"data": x})
    for n in names:
        assert out[n].shape == x.shape and np.all(np.isfinite(out[n]))
    np.testing.assert_array_equal(x, keep)
