"""Random kernels: shapes of Like/Static/Dynamic, moments of large draws, seeding, categorical frequencies.

Draws are numpy's, so values never match Core ML's; like coremltools' own tests, the checks are on
the distribution (mean, std, probabilities on large samples), plus the seed contract: a seed >= 0
gives the same draws on every predict, seed -1 gives fresh ones.
"""
import numpy as np
import pytest
import torch
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder

import workbench as wb
import workbench.runtime.layers.sampling  # noqa: F401  (registers the kernels before the lead lists it)

BIG = (200, 1000)          # 200k draws: moments within ~1% at 4+ sigma


def build(variant, family, shape, seed, **params):
    """One random layer of ``family`` (normal/uniform/bernoulli) in its Like/Static/Dynamic form."""
    inputs = {"Like": [("like", datatypes.Array(*shape))], "Static": [("unused", datatypes.Array(1))],
              "Dynamic": [("shape", datatypes.Array(len(shape)))]}[variant]
    b = NeuralNetworkBuilder(inputs, [("output", None)], disable_rank5_shape_mapping=True)
    add = getattr(b, f"add_random_{family}_{variant.lower()}")
    if variant == "Like":
        add("rand", "like", "output", seed=seed, **params)
    elif variant == "Static":
        add("rand", "output", output_shape=list(shape), seed=seed, **params)
    else:
        add("rand", ["shape"], "output", seed=seed, **params)
    feeds = {"Like": {"like": np.zeros(shape, np.float32)}, "Static": {"unused": np.zeros(1, np.float32)},
             "Dynamic": {"shape": np.array(shape, np.float32)}}[variant]
    return wb.load(b.spec), feeds


def draw(variant, family, shape, seed=42, **params):
    model, feeds = build(variant, family, shape, seed, **params)
    return model.predict(feeds)["output"]


VARIANTS = ["Like", "Static", "Dynamic"]
SHAPES = [(7,), (3, 4), (2, 3, 4), (2, 1, 3, 2, 2)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family,params", [("normal", dict(mean=1.0, stddev=2.0)),
                                           ("uniform", dict(minval=-1.0, maxval=3.0)),
                                           ("bernoulli", dict(prob=0.3))])
@pytest.mark.parametrize("shape", SHAPES)
def test_output_shape_and_dtype(variant, family, params, shape):
    out = draw(variant, family, shape, **params)
    assert out.shape == shape
    assert np.issubdtype(out.dtype, np.floating)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mean,stddev", [(0.0, 1.0), (3.0, 0.5), (-2.0, 4.0)])
def test_normal_moments(variant, mean, stddev):
    out = draw(variant, "normal", BIG, mean=mean, stddev=stddev).astype(np.float64)
    assert abs(out.mean() - mean) < 0.01 * stddev * 2
    assert abs(out.std() - stddev) < 0.01 * stddev
    z = (out - mean) / stddev                   # higher moments of the standard normal: skew 0, kurtosis 3
    assert abs((z ** 3).mean()) < 0.03
    assert abs((z ** 4).mean() - 3) < 0.1


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("low,high", [(0.0, 1.0), (-3.0, 5.0), (10.0, 10.5)])
def test_uniform_bounds_and_moments(variant, low, high):
    out = draw(variant, "uniform", BIG, minval=low, maxval=high).astype(np.float64)
    width = high - low
    assert out.min() >= low and out.max() <= high
    assert abs(out.mean() - (low + high) / 2) < 0.01 * width
    assert abs(out.var() - width ** 2 / 12) < 0.02 * width ** 2 / 12
    counts = np.histogram(out, bins=10, range=(low, high))[0] / out.size
    np.testing.assert_allclose(counts, 0.1, atol=0.005)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("prob", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_bernoulli_values_and_probability(variant, prob):
    out = draw(variant, "bernoulli", BIG, prob=prob)
    assert set(np.unique(out)) <= {0.0, 1.0}
    assert abs(out.mean() - prob) < 0.005


@pytest.mark.parametrize("family,params", [("normal", dict(mean=0.0, stddev=1.0)),
                                           ("uniform", dict(minval=0.0, maxval=1.0)),
                                           ("bernoulli", dict(prob=0.5))])
def test_seed_gives_the_same_draws_on_every_predict_and_minus_one_fresh_ones(family, params):
    shape = (50, 40)
    model, feeds = build("Like", family, shape, 7, **params)
    first, second = model.predict(feeds)["output"], model.predict(feeds)["output"]
    np.testing.assert_array_equal(first, second)
    again = build("Static", family, shape, 7, **params)[0].predict({"unused": np.zeros(1, np.float32)})
    np.testing.assert_array_equal(first, again["output"])       # the seed, not the variant, decides
    other = build("Like", family, shape, 8, **params)[0].predict(feeds)["output"]
    assert not np.array_equal(first, other)
    unseeded, feeds = build("Like", family, shape, -1, **params)
    assert not np.array_equal(unseeded.predict(feeds)["output"], unseeded.predict(feeds)["output"])


def test_dynamic_shape_follows_the_input_values_on_each_call():
    model, _ = build("Dynamic", "uniform", (2, 3), 1, minval=0.0, maxval=1.0)
    for shape in [(2, 3), (4, 1), (5, 2)]:
        assert model.predict({"shape": np.array(shape, np.float32)})["output"].shape == shape


# ------------------------------------------------------------------ categoricalDistribution

def categorical(x, samples, is_logits, temperature=1.0, seed=42):
    b = NeuralNetworkBuilder([("data", datatypes.Array(*x.shape))], [("output", None)],
                             disable_rank5_shape_mapping=True)
    b.add_categorical_distribution("cat", "data", "output", num_samples=samples, is_logits=is_logits,
                                   temperature=temperature, seed=seed)
    return wb.load(b.spec).predict({"data": x.astype(np.float32)})["output"]


@pytest.mark.parametrize("shape", [(6,), (2, 5), (2, 1, 4), (1, 2, 2, 3), (2, 1, 1, 2, 3)])
def test_categorical_output_shape_and_values_are_class_indices(shape):
    out = categorical(np.random.default_rng(0).random(shape), 37, is_logits=True)
    assert out.shape == shape[:-1] + (37,)
    assert np.all((out >= 0) & (out < shape[-1]) & (out == np.floor(out)))


def frequencies(samples, classes):
    rows = samples.reshape(-1, samples.shape[-1]).astype(np.int64)
    return np.stack([np.bincount(r, minlength=classes) / r.size for r in rows])


@pytest.mark.parametrize("shape", [(2, 10), (1, 2, 10), (2, 1, 1, 10)])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_categorical_logits_frequencies_match_softmax(shape, temperature):
    logits = np.random.default_rng(1).normal(0, 1.5, size=shape)
    out = categorical(logits, 50000, is_logits=True, temperature=temperature)
    expected = torch.softmax(torch.from_numpy(logits.reshape(-1, 10)) / temperature, dim=-1).numpy()
    np.testing.assert_allclose(frequencies(out, 10), expected, atol=1e-2)


@pytest.mark.parametrize("shape", [(2, 10), (2, 1, 10)])
def test_categorical_probabilities_frequencies_match(shape):
    probs = np.random.default_rng(2).random(shape)
    probs[..., 3] = 0                                        # an impossible class is never drawn
    probs /= probs.sum(axis=-1, keepdims=True)
    out = categorical(probs, 50000, is_logits=False)
    freq = frequencies(out, 10)
    np.testing.assert_allclose(freq, probs.reshape(-1, 10), atol=1e-2)
    assert np.all(freq[:, 3] == 0)


def test_categorical_seed_reproducible_and_minus_one_fresh():
    logits = np.zeros((3, 5))
    np.testing.assert_array_equal(categorical(logits, 100, True, seed=3), categorical(logits, 100, True, seed=3))
    assert not np.array_equal(categorical(logits, 100, True, seed=-1), categorical(logits, 100, True, seed=-1))
