"""Shared test helpers: the corpus beside the checkout, and small models built with coremltools.

A plain module (not conftest.py) so that tests import it by name without colliding with the
conftest.py files of sub-folders such as tests/conformance.
"""
import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
LAYERS = ROOT / "layers"

with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
    import coremltools  # noqa: F401  (silence its import-time messages once)


def corpus(name):
    """Path of a corpus model; skips (visibly) where ../shared/corpus is absent, as in a user's clone."""
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"../shared/corpus/{name} not found (the corpus exists beside the project checkout and in CI)")
    return path


def custom_only_model(class_names, input_shape=(2, 3), exact=True, outputs_per_layer=1, parameters=None,
                      weights=None):
    """A chain of custom layers x -> L0 -> L1 ... -> y, built with coremltools' NeuralNetworkBuilder."""
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    from coremltools.proto import NeuralNetwork_pb2

    builder = NeuralNetworkBuilder([("x", datatypes.Array(*input_shape))], [("y", None)],
                                   disable_rank5_shape_mapping=exact)
    previous = "x"
    for i, name in enumerate(class_names):
        params = NeuralNetwork_pb2.CustomLayerParams()
        params.className = name
        params.description = f"test layer {i}"
        for key, value in (parameters or {}).items():
            field = {bool: "boolValue", int: "intValue", float: "doubleValue", str: "stringValue"}[type(value)]
            setattr(params.parameters[key], field, value)
        for w in (weights or []):
            params.weights.add().floatValue.extend(np.asarray(w, np.float32).ravel().tolist())
        out = "y" if i == len(class_names) - 1 else f"t{i}"
        builder.add_custom(name=f"layer{i}", input_names=[previous], output_names=[out], custom_proto_spec=params)
        previous = out
    return builder.spec


def set_shape_range(spec, name, ranges):
    """Make input ``name`` flexible: ranges is a list of (lower, upper) per dimension."""
    from coremltools.models.neural_network import flexible_shape_utils
    flexible_shape_utils.set_multiarray_ndshape_range(
        spec, name, lower_bounds=[lo for lo, _ in ranges], upper_bounds=[hi for _, hi in ranges])


def exact_rank_builder(inputs, exact=True, outputs=("output",)):
    """A NeuralNetworkBuilder whose inputs are {name: declared shape}: exact-rank, or rank-5 mapping."""
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    features = [(name, datatypes.Array(*shape)) for name, shape in inputs.items()]
    return NeuralNetworkBuilder(features, [(name, None) for name in outputs], disable_rank5_shape_mapping=exact)


def predict_builder(builder, inputs):
    """Load the builder's spec with the workbench runtime and predict on float32 copies of ``inputs``."""
    import workbench as wb
    feeds = {name: np.asarray(value, dtype=np.float32) for name, value in inputs.items()}
    return wb.load(builder.spec).predict(feeds)


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    """Same shape, and equal within float32 tolerances; ``expected`` may be a torch tensor."""
    if hasattr(expected, "detach"):
        expected = expected.detach().numpy()
    expected = np.asarray(expected, dtype=np.float32)
    assert np.asarray(actual).shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


import workbench as wb  # noqa: E402  (after coremltools' messages are silenced)


class Double(wb.CustomLayer):
    """A custom layer whose output is checkable by formula: 2x."""

    def evaluate(self, inputs, outputs):
        outputs[0][...] = 2 * inputs[0]


class Negate(wb.CustomLayer):
    """A custom layer whose output is checkable by formula: -x."""

    def evaluate(self, inputs, outputs):
        outputs[0][...] = -inputs[0]
