"""Weights in every WeightParams form decode to what was quantized (coremltools' quantizer as the writer)."""
import contextlib
import io

import numpy as np
import pytest

import workbench as wb
from workbench.runtime.spec import decode_weights

W = np.random.RandomState(0).randn(8, 5).astype(np.float32)      # innerProduct weights [C_out, C_in]


def quantized_weight_params(nbits, mode):
    import coremltools as ct
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    from coremltools.models.neural_network import quantization_utils as qu
    builder = NeuralNetworkBuilder([("x", datatypes.Array(5))], [("y", None)])
    builder.add_inner_product("ip", W, None, 5, 8, False, "x", "y")
    with contextlib.redirect_stdout(io.StringIO()):
        quantized = qu.quantize_weights(ct.models.MLModel(builder.spec, skip_model_load=True), nbits, mode)
    spec = quantized if hasattr(quantized, "neuralNetwork") else quantized.get_spec()
    return spec.neuralNetwork.layers[0].innerProduct.weights


@pytest.mark.parametrize("nbits", range(1, 9))
def test_linear_quantization_per_channel(nbits):
    wp = quantized_weight_params(nbits, "linear")
    assert wp.quantization.WhichOneof("QuantizationType") == "linearQuantization"
    decoded = decode_weights(wp, count=W.size).reshape(W.shape)
    step = (W.max(axis=1) - W.min(axis=1)) / (2 ** nbits - 1)      # per output channel
    assert np.all(np.abs(decoded - W) <= step[:, None] / 2 + 1e-5)


@pytest.mark.parametrize("nbits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_lookup_table_quantization(nbits):
    wp = quantized_weight_params(nbits, "linear_lut")
    lut = np.asarray(wp.quantization.lookupTableQuantization.floatValue, np.float32)
    decoded = decode_weights(wp, count=W.size).reshape(W.shape)
    assert set(np.unique(decoded)) <= set(lut)
    nearest = lut[np.abs(W[..., None] - lut).argmin(axis=-1)]       # each weight maps to its nearest entry
    np.testing.assert_allclose(decoded, nearest, atol=1e-6)


def test_float16():
    wp = quantized_weight_params(16, "linear")
    assert len(wp.float16Value) == 2 * W.size
    np.testing.assert_array_equal(decode_weights(wp), W.astype(np.float16).astype(np.float32).ravel())


def test_int8_raw_value_with_scale():
    from coremltools.proto import NeuralNetwork_pb2
    wp = NeuralNetwork_pb2.WeightParams()
    q = np.array([-128, -1, 0, 1, 127], np.int8)
    wp.int8RawValue = q.tobytes()
    wp.quantization.numberOfBits = 8
    wp.quantization.linearQuantization.scale.append(0.5)
    np.testing.assert_array_equal(decode_weights(wp), q.astype(np.float32) * 0.5)


def test_wrong_count_is_named():
    from coremltools.proto import NeuralNetwork_pb2
    wp = NeuralNetwork_pb2.WeightParams()
    wp.floatValue.extend([1.0, 2.0, 3.0])
    with pytest.raises(wb.ModelFormatError, match="conv1.weights: has 3 values, the layer needs 4"):
        decode_weights(wp, "conv1.weights", count=4)


def test_decoded_weights_are_read_only():
    from coremltools.proto import NeuralNetwork_pb2
    wp = NeuralNetwork_pb2.WeightParams()
    wp.floatValue.extend([1.0, 2.0])
    assert not decode_weights(wp).flags.writeable
