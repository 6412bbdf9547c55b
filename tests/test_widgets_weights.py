"""Weight view: decoded values and statistics against the values written into the file, quantized ones too.

The lookup-table tensor is built here by hand (2-bit codes packed most significant bit first, as
NeuralNetwork.proto documents), so the expected values are the table indexed by the codes.
"""
import numpy as np

import workbench as wb
from support import custom_only_model
from workbench import examples
from workbench.widgets import WeightView, Session, layers_with_weights, weight_tensors

TABLE = np.array([-1.5, -0.25, 0.5, 2.0], np.float32)
CODES = np.array([3, 0, 1, 2, 2, 1, 0, 3, 3, 3, 1, 0], np.int64)


class Passthrough(wb.CustomLayer):
    def evaluate(self, inputs, outputs):
        outputs[0][...] = inputs[0]


def quantized_model():
    spec = custom_only_model(["Passthrough"], weights=[np.arange(6, dtype=np.float32)])
    w = spec.neuralNetwork.layers[0].custom.weights.add()
    bits = np.unpackbits(CODES.astype(np.uint8)[:, None], axis=1)[:, -2:].ravel()   # 2 bits each, MSB first
    w.rawValue = np.packbits(bits).tobytes()
    w.quantization.numberOfBits = 2
    w.quantization.lookupTableQuantization.floatValue.extend(TABLE.tolist())
    return wb.load(spec, layers=[Passthrough])


def test_lookup_table_weights_are_shown_decoded_with_their_table():
    model = quantized_model()
    plain, lut = weight_tensors(model, "layer0")
    np.testing.assert_array_equal(plain.values, np.arange(6))
    assert plain.storage == "float32" and plain.lookup_table is None
    assert lut.storage == "lookup table" and lut.bits == 2
    np.testing.assert_array_equal(lut.lookup_table, TABLE)
    np.testing.assert_array_equal(lut.codes, CODES)
    np.testing.assert_array_equal(lut.values, TABLE[CODES])
    stats = lut.statistics()
    assert abs(stats["mean"] - TABLE[CODES].mean()) < 1e-6 and stats["min"] == TABLE.min()
    view = WeightView(Session(model))
    assert "lookup table (2 bits)" in view.stats.value and len(view.plots.children) == 2


def test_example_weights_match_the_file():
    model = wb.load(examples.example_path(), layers=examples.BUNDLED_LAYERS_DIR)
    layers = {l.name: l for l in model.spec.neuralNetwork.layers}
    assert layers_with_weights(model)[0] == "scaled_swish"             # custom layers first
    conv = next(name for name in layers_with_weights(model) if layers[name].WhichOneof("layer") == "convolution")
    params = layers[conv].convolution
    (weights, *rest) = weight_tensors(model, conv)
    expected = np.asarray(params.weights.floatValue, np.float32).reshape(
        params.outputChannels, params.kernelChannels, *params.kernelSize)
    np.testing.assert_array_equal(weights.values, expected)
    view = WeightView(Session(model))
    view.layer_choice.value = conv
    assert f"{expected.std():.4g}" in view.stats.value
    assert repr(view) == f"<workbench WeightView: layer '{conv}', {1 + len(rest)} tensor(s)>"
