"""The MLCustomLayer lifecycle and its guards, as Apple's article states them."""
import numpy as np
import pytest

import workbench as wb
from support import custom_only_model, set_shape_range


class Recorder(wb.CustomLayer):
    """Records every protocol call; doubles its input (so the output is checkable by formula)."""
    log = []

    def __init__(self, parameters):
        Recorder.log.append(("__init__", dict(parameters)))
        self.scale = parameters.get("scale", 2.0)

    def set_weight_data(self, weights):
        Recorder.log.append(("set_weight_data", [w.size for w in weights]))

    def output_shapes(self, input_shapes):
        Recorder.log.append(("output_shapes", [tuple(s) for s in input_shapes]))
        return list(input_shapes)

    def evaluate(self, inputs, outputs):
        Recorder.log.append(("evaluate", [x.shape for x in inputs]))
        outputs[0][...] = inputs[0] * self.scale


def test_call_sequence_across_loads_and_changing_shapes():
    Recorder.log.clear()
    spec = custom_only_model(["Recorder"], input_shape=(2, 3), parameters={"scale": 3.0}, weights=[[1, 2, 3, 4]])
    set_shape_range(spec, "x", [(1, 8), (3, 3)])
    model = wb.load(spec, layers=Recorder)
    assert Recorder.log == [("__init__", {"scale": 3.0}), ("set_weight_data", [4]), ("output_shapes", [(2, 3)])]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(model.predict({"x": x})["y"], 3 * x)          # same shape: evaluate only
    model.predict({"x": x})
    x5 = np.ones((5, 3), np.float32)
    model.predict({"x": x5})                                                   # new shape: output_shapes again
    model.predict({"x": x})                                                    # and back
    assert Recorder.log[3:] == [
        ("evaluate", [(2, 3)]), ("evaluate", [(2, 3)]),
        ("output_shapes", [(5, 3)]), ("evaluate", [(5, 3)]),
        ("output_shapes", [(2, 3)]), ("evaluate", [(2, 3)]),
    ]
    Recorder.log.clear()
    wb.load(spec, layers=Recorder)                                              # a second load starts over
    assert [c for c, _ in Recorder.log] == ["__init__", "set_weight_data", "output_shapes"]


def test_rank5_model_shows_seq_batch_c_h_w_shapes():
    Recorder.log.clear()
    spec = custom_only_model(["Recorder"], input_shape=(3,), exact=False)
    model = wb.load(spec, layers=Recorder)
    assert ("output_shapes", [(1, 1, 3, 1, 1)]) in Recorder.log
    out = model.predict({"x": np.array([1, 2, 3], np.float32)})["y"]
    np.testing.assert_allclose(out.ravel(), [2, 4, 6])


def test_parameters_decoded_by_type():
    seen = {}

    class Params(wb.CustomLayer):
        def __init__(self, parameters):
            seen.update(parameters)

        def evaluate(self, inputs, outputs):
            outputs[0][...] = inputs[0]

    spec = custom_only_model(["Params"], parameters={"d": 0.5, "i": 7, "b": True, "s": "text"})
    spec.neuralNetwork.layers[0].custom.parameters["l"].longValue = 2 ** 40
    wb.load(spec, layers=Params)
    assert seen == {"d": 0.5, "i": 7, "b": True, "s": "text", "l": 2 ** 40}
    assert [type(seen[k]) for k in "dibsl"] == [float, int, bool, str, int]


def test_weights_are_read_only_float_arrays_in_file_order():
    got = []

    class Weighted(wb.CustomLayer):
        def set_weight_data(self, weights):
            got.extend(weights)

        def evaluate(self, inputs, outputs):
            outputs[0][...] = inputs[0]

    spec = custom_only_model(["Weighted"], weights=[[1, 2], [3, 4, 5]])
    wb.load(spec, layers=Weighted)
    assert [w.tolist() for w in got] == [[1, 2], [3, 4, 5]]
    assert all(w.dtype == np.float32 and w.ndim == 1 and not w.flags.writeable for w in got)
    with pytest.raises(ValueError):
        got[0][0] = 9


def _layer(evaluate=None, output_shapes=None, init=None):
    ns = {}
    if evaluate:
        ns["evaluate"] = evaluate
    if output_shapes:
        ns["output_shapes"] = output_shapes
    if init:
        ns["__init__"] = init
    return type("Faulty", (wb.CustomLayer,), ns)


def _expect_layer_error(cls, method, fragment, at_load=False):
    spec = custom_only_model(["Faulty"])
    with pytest.raises(wb.LayerError) as info:
        model = wb.load(spec, layers=cls)
        assert not at_load
        model.predict({"x": np.ones((2, 3), np.float32)})
    message = str(info.value)
    assert "<spec>" in message and "layer0" in message and "'Faulty'" in message and f"in {method}" in message
    assert fragment in message
    assert info.value.method == method and info.value.class_name == "Faulty"
    return message


def test_layer_writing_its_input_fails_at_the_offending_line():
    def evaluate(self, inputs, outputs):
        inputs[0][0, 0] = 1.0                      # forbidden: Core ML's values are read-only
    message = _expect_layer_error(_layer(evaluate), "evaluate", "read-only")
    assert "test_protocol.py:" in message


def test_layer_that_raises_is_named():
    def evaluate(self, inputs, outputs):
        raise RuntimeError("boom")
    _expect_layer_error(_layer(evaluate), "evaluate", "RuntimeError: boom")


def test_init_that_raises_is_named_at_load():
    def init(self, parameters):
        raise KeyError("beta")
    _expect_layer_error(_layer(init=init), "__init__", "KeyError", at_load=True)


def test_wrong_number_of_shapes():
    _expect_layer_error(_layer(output_shapes=lambda self, s: [(2, 3), (2, 3)]), "output_shapes",
                        "returned 2 shape(s) for 1 output(s)", at_load=True)


def test_output_left_with_a_wrong_shape():
    def evaluate(self, inputs, outputs):
        outputs[0].resize((6,), refcheck=False)
    _expect_layer_error(_layer(evaluate), "evaluate", "declared (2, 3)")


def test_output_replaced_instead_of_filled():
    def evaluate(self, inputs, outputs):
        outputs[0] = inputs[0] * 2
    _expect_layer_error(_layer(evaluate), "evaluate", "fill the preallocated array in place")


def test_decorator_names_the_class_name():
    @wb.custom_layer("RenamedLayer")
    class Anything:
        def __init__(self, parameters):
            pass

        def set_weight_data(self, weights):
            pass

        def output_shapes(self, shapes):
            return shapes

        def evaluate(self, inputs, outputs):
            outputs[0][...] = -inputs[0]

    model = wb.load(custom_only_model(["RenamedLayer"]))       # found without layers=...
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(model.predict({"x": x})["y"], -x)
