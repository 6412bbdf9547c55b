"""Planted hazards, each answered by its clear error, and custom layer faults at predict time.

Hostile or broken model files (a 2^40-element shape, a loop that never ends, networks nested
10,000 deep, a weight array one element short, a custom parameter of the wrong type) and faulty
implementations (an evaluate that never returns, wrong return types, failures while swapping):
every one ends in the package's own error naming the model, layer, className and method, and
leaves the model usable. References: numpy formulas for the values computed afterwards.
"""
import _thread
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder
from coremltools.proto import Model_pb2, NeuralNetwork_pb2

import workbench as wb

EXAMPLE = Path(wb.__file__).parent / "examples"


def builder(shape=(2, 3), inputs=None):
    inputs = inputs or [("x", shape)]
    return NeuralNetworkBuilder([(n, datatypes.Array(*s)) for n, s in inputs], [("y", None)],
                                disable_rank5_shape_mapping=True)


def custom_spec(class_name, n_layers=1, shape=(2, 3)):
    b = builder(shape)
    for i in range(n_layers):
        params = NeuralNetwork_pb2.CustomLayerParams(className=class_name)
        b.add_custom(f"layer{i}", ["x" if i == 0 else f"t{i - 1}"], ["y" if i == n_layers - 1 else f"t{i}"],
                     custom_proto_spec=params)
    return b.spec


def x23(value=1.0):
    return np.full((2, 3), value, np.float32)


# ---------------------------------------------------------------- hostile model files

def test_a_2_to_the_40_element_shape_fails_fast_with_the_limit():
    b = builder()
    b.add_fill_static("fill", "y", output_shape=[2 ** 20, 2 ** 20], value=0.0)
    start = time.perf_counter()
    with pytest.raises(wb.ResourceLimitError, match=r"<spec>: layer 'fill'.*4\.0 TiB.*max_blob_bytes"):
        wb.load(b.spec)
    assert time.perf_counter() - start < 2


def test_a_loop_that_never_ends_stops_at_max_loop_iterations():
    b = builder((1,))
    loop = b.add_loop("forever", max_iterations=0)
    cond = NeuralNetworkBuilder(nn_spec=loop.loop.conditionNetwork, disable_rank5_shape_mapping=True)
    cond.add_load_constant_nd("true", "always", constant_value=np.ones(1, np.float32), shape=[1])
    loop.loop.conditionVar = "always"
    body = NeuralNetworkBuilder(nn_spec=loop.loop.bodyNetwork, disable_rank5_shape_mapping=True)
    body.add_copy("spin", "x", "state")
    b.add_copy("out", "x", "y")
    model = wb.load(b.spec, limits={"max_loop_iterations": 2000})
    with pytest.raises(wb.ResourceLimitError, match=r"layer 'forever'.*2000 iterations.*max_loop_iterations"):
        model.predict({"x": np.ones(1, np.float32)})


def deep_spec(depth):
    b = builder((1,))
    b.add_activation("relu", "RELU", "x", "y")
    outer = b.spec.neuralNetwork.layers.add()
    outer.name, outer.input[:], outer.output[:] = "nest0", ["x"], ["z"]
    inner = outer.branch.ifBranch
    for level in range(1, depth):
        layer = inner.layers.add()
        layer.name, layer.input[:] = f"nest{level}", ["x"]
        inner = layer.branch.ifBranch
    return b.spec


def test_a_10000_deep_nested_file_is_a_format_error_naming_the_file(tmp_path):
    path = tmp_path / "deep.mlmodel"
    path.write_bytes(deep_spec(10_000).SerializeToString())
    with pytest.raises(wb.ModelFormatError, match=r"deep\.mlmodel: the protobuf nests messages deeper"):
        wb.load(path)


def test_a_10000_deep_nested_spec_object_is_a_format_error_not_a_recursion_error():
    with pytest.raises(wb.ModelFormatError, match=r"<spec>: layer 'nest64' is nested 65 networks deep"):
        wb.load(deep_spec(10_000))


def test_a_weight_array_one_element_short_names_the_layer():
    b = builder((4,))
    b.add_inner_product("fc", W=np.ones((3, 4), np.float32), b=None, input_channels=4, output_channels=3,
                        has_bias=False, input_name="x", output_name="y")
    del b.spec.neuralNetwork.layers[0].innerProduct.weights.floatValue[-1]
    with pytest.raises(wb.ModelFormatError, match=r"<spec>: fc\.weights: has 11 values, the layer needs 12"):
        wb.load(b.spec)


def test_a_custom_parameter_of_the_wrong_type_names_layer_class_and_method():
    """ScaledSwish (the bundled example) reads an int parameter 'channels'; the file gives a string."""
    spec = Model_pb2.Model()
    spec.ParseFromString((EXAMPLE / "example.mlmodel").read_bytes())
    layer = next(l for l in spec.neuralNetwork.layers if l.custom.className == "ScaledSwish")
    assert layer.custom.parameters["channels"].WhichOneof("value") == "intValue"
    layer.custom.parameters["channels"].stringValue = "eight"
    with pytest.raises(wb.LayerError) as info:
        wb.load(spec.SerializeToString(), layers=EXAMPLE / "layers")
    e = info.value
    assert (e.layer_name, e.class_name, e.method) == (layer.name, "ScaledSwish", "__init__")
    assert "'eight'" in str(e) and "ScaledSwish.py" in str(e)


# ---------------------------------------------------------------- faulty implementations

class Doubler(wb.CustomLayer):
    """y = 2x, unless told to spin forever (an evaluate stuck in a loop)."""
    spin = False

    def evaluate(self, inputs, outputs):
        while type(self).spin:
            pass
        outputs[0][...] = 2 * inputs[0]


def test_keyboard_interrupt_during_evaluate_propagates_and_the_model_stays_usable():
    model = wb.load(custom_spec("Doubler"), layers=[Doubler])
    Doubler.spin = True
    timer = threading.Timer(0.3, _thread.interrupt_main)      # what Jupyter's interrupt button does
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            model.predict({"x": x23(1.5)})
    finally:
        Doubler.spin = False
        timer.cancel()
    record = model.custom_layers[0]
    assert record.input_shapes == [(2, 3)] and record.output_shapes == [(2, 3)]
    np.testing.assert_array_equal(model.predict({"x": x23(1.5)})["y"], x23(3.0))


@pytest.mark.parametrize("answer, expected", [
    (None, "returned None"),
    ("(2, 3)", "returned '\\(2, 3\\)'"),
    ([(2, 3), (2, 3)], "returned 2 shape\\(s\\) for 1 output"),
    ([(2.5, 3)], "tuples of ints"),
    ([(2, -3)], "negative dimension"),
])
def test_output_shapes_returning_the_wrong_thing_is_named(answer, expected):
    class Wrong(wb.CustomLayer):
        def output_shapes(self, input_shapes):
            return answer

        def evaluate(self, inputs, outputs):
            outputs[0][...] = 0

    with pytest.raises(wb.LayerError, match=expected) as info:
        wb.load(custom_spec("Wrong"), layers=[Wrong]).predict({"x": x23()})
    assert (info.value.class_name, info.value.method) == ("Wrong", "output_shapes")


def test_an_implementation_without_evaluate_is_named_not_an_attribute_error():
    @wb.custom_layer("NoEvaluate")
    class NoEvaluate:
        def __init__(self, parameters):
            pass

        def set_weight_data(self, weights):
            pass

        def output_shapes(self, input_shapes):
            return input_shapes

    model = wb.load(custom_spec("NoEvaluate"), layers={"NoEvaluate": NoEvaluate})
    with pytest.raises(wb.LayerError, match="no attribute 'evaluate'") as info:
        model.predict({"x": x23()})
    assert info.value.method == "evaluate"


def test_evaluate_replacing_an_output_with_a_list_is_named():
    class ListOut(wb.CustomLayer):
        def evaluate(self, inputs, outputs):
            outputs[0] = inputs[0].tolist()

    with pytest.raises(wb.LayerError, match=r"outputs\[0\] was replaced") as info:
        wb.load(custom_spec("ListOut"), layers=[ListOut]).predict({"x": x23()})
    assert info.value.method == "evaluate"


def test_a_failing_output_shapes_leaves_the_record_as_it_was():
    """Flexible input: the first shape succeeds, a second shape makes output_shapes fail."""
    from coremltools.models.neural_network import flexible_shape_utils

    class PickyShapes(wb.CustomLayer):
        def output_shapes(self, input_shapes):
            if input_shapes[0][1] > 3:
                raise ValueError("at most 3 columns")
            return list(input_shapes)

        def evaluate(self, inputs, outputs):
            outputs[0][...] = inputs[0] + 1

    spec = custom_spec("PickyShapes")
    flexible_shape_utils.set_multiarray_ndshape_range(spec, "x", lower_bounds=[2, 1], upper_bounds=[2, 8])
    model = wb.load(spec, layers=[PickyShapes])
    model.predict({"x": x23()})
    record = model.custom_layers[0]
    before = (record.input_shapes, record.output_shapes, dict(record.calls))
    with pytest.raises(wb.LayerError, match="at most 3 columns"):
        model.predict({"x": np.ones((2, 5), np.float32)})
    assert (record.input_shapes, record.output_shapes, dict(record.calls)) == before
    np.testing.assert_array_equal(model.predict({"x": x23(2)})["y"], x23(3))


class Tripler(wb.CustomLayer):
    instances = 0
    interrupt_at = None

    def __init__(self, parameters):
        type(self).instances += 1
        if type(self).instances == type(self).interrupt_at:
            raise KeyboardInterrupt                    # the user interrupts a slow __init__
        if type(self).instances == -type(self).interrupt_at:
            raise ValueError("cannot build the second layer")

    def evaluate(self, inputs, outputs):
        outputs[0][...] = 3 * inputs[0]


@pytest.mark.parametrize("interrupt_at, error", [(2, KeyboardInterrupt), (-2, wb.LayerError)])
def test_a_failed_use_keeps_the_old_implementation_in_every_layer(interrupt_at, error):
    model = wb.load(custom_spec("Tripler", n_layers=2), layers={"Tripler": Doubler})
    np.testing.assert_array_equal(model.predict({"x": x23(1)})["y"], x23(4))
    Tripler.instances, Tripler.interrupt_at = 0, interrupt_at
    with pytest.raises(error):
        model.use({"Tripler": Tripler})
    assert [r.implementation for r in model.custom_layers] == [Doubler, Doubler]
    np.testing.assert_array_equal(model.predict({"x": x23(1)})["y"], x23(4))
