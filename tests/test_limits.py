"""Resource limits (wb.load(..., limits=...)): checked before allocating, each with its own error.

References: the sizes are arithmetic (elements x 4 bytes of float32); the values computed when a
limit allows them are numpy formulas (np.full, np.tile, np.repeat) written independently here.
"""
import time

import numpy as np
import pytest
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder
from coremltools.proto import NeuralNetwork_pb2

import workbench as wb
from workbench.runtime.limits import DEFAULT_LIMITS

HUGE = 2 ** 40             # elements: 4 TiB of float32


def builder(shape=(2, 3), exact=True):
    return NeuralNetworkBuilder([("x", datatypes.Array(*shape))], [("y", None)],
                                disable_rank5_shape_mapping=exact)


def assert_fails_fast(fn, layer, limit="max_blob_bytes"):
    start = time.perf_counter()
    with pytest.raises(wb.ResourceLimitError) as info:
        fn()
    assert time.perf_counter() - start < 2.0, "the limit must be checked before allocating"
    message = str(info.value)
    assert f"'{layer}'" in message and limit in message and "limits={" in message, message
    assert info.value.limit == limit
    return message


# ---------------------------------------------------------------- 2^40-element shapes

def fill_static(shape):
    b = builder()
    b.add_fill_static("fill", "y", output_shape=list(shape), value=3.0)
    return b.spec


def test_fill_static_with_a_huge_shape_fails_at_load_before_allocating():
    message = assert_fails_fast(lambda: wb.load(fill_static((1024, 1024, 1024, 1024))), "fill")
    assert "4.0 TiB" in message


def test_fill_dynamic_with_a_huge_shape_in_the_data_fails_at_predict():
    b = builder((4,))
    b.add_fill_dynamic("fill", "x", "y", value=1.0)
    model = wb.load(b.spec)
    np.testing.assert_array_equal(model.predict({"x": np.array([2, 1, 3, 1], np.float32)})["y"],
                                  np.ones((2, 1, 3, 1), np.float32))
    assert_fails_fast(lambda: model.predict({"x": np.array([1024] * 4, np.float32)}), "fill")


def test_broadcast_to_static_with_a_huge_target_fails_fast():
    b = builder((1, 1))
    b.add_broadcast_to_static("bcast", "x", "y", output_shape=[HUGE, 1])
    assert_fails_fast(lambda: wb.load(b.spec).predict({"x": np.ones((1, 1), np.float32)}), "bcast")


def test_load_constant_nd_with_a_huge_shape_names_the_limit_not_a_weight_count():
    b = builder()
    layer = b.add_load_constant_nd("const", "y", constant_value=np.zeros(4, np.float32), shape=[4])
    layer.loadConstantND.shape[:] = [HUGE]
    assert_fails_fast(lambda: wb.load(b.spec), "const")


def test_tile_with_huge_reps_fails_fast():
    b = builder()
    b.add_tile("tile", "x", "y", reps=[2 ** 20, 2 ** 20])
    assert_fails_fast(lambda: wb.load(b.spec).predict({"x": np.ones((2, 3), np.float32)}), "tile")


def test_upsample_with_a_huge_factor_fails_fast():
    b = builder((1, 4, 4), exact=False)
    b.add_upsample("up", 2 ** 18, 2 ** 18, "x", "y")
    assert_fails_fast(lambda: wb.load(b.spec).predict({"x": np.ones((1, 4, 4), np.float32)}), "up")


def test_range_static_with_a_huge_count_fails_at_load():
    b = builder()
    b.add_range_static("range", "y", input_names=None, end=1e15, start=0, step=1)
    assert_fails_fast(lambda: wb.load(b.spec), "range")


def test_a_huge_input_shape_fails_at_load_naming_the_input():
    b = builder()
    b.add_activation("relu", "RELU", "x", "y")
    b.spec.description.input[0].type.multiArrayType.shape[:] = [HUGE, 2]
    message = assert_fails_fast(lambda: wb.load(b.spec), "x")
    assert "input 'x'" in message


def test_a_negative_input_shape_is_a_format_error_naming_the_input():
    b = builder()
    b.add_activation("relu", "RELU", "x", "y")
    b.spec.description.input[0].type.multiArrayType.shape[:] = [-3, 2]
    with pytest.raises(wb.ModelFormatError, match=r"input 'x'.*negative dimension"):
        wb.load(b.spec)


def test_custom_output_shapes_with_a_huge_shape_fails_before_evaluate_allocates():
    class Huge(wb.CustomLayer):
        def output_shapes(self, input_shapes):
            return [(HUGE,)]

        def evaluate(self, inputs, outputs):
            raise AssertionError("evaluate must not be reached")

    b = builder()
    params = NeuralNetwork_pb2.CustomLayerParams(className="Huge")
    b.add_custom("huge", ["x"], ["y"], custom_proto_spec=params)
    model = wb.load(b.spec, layers=[Huge])
    message = assert_fails_fast(lambda: model.predict({"x": np.ones((2, 3), np.float32)}), "huge")
    assert "className 'Huge'" in message and "output_shapes" in message


# ---------------------------------------------------------------- raising and lowering limits

def test_a_limit_can_be_raised_and_lowered_per_model():
    spec = fill_static((256, 1024))                       # 1 MiB
    with pytest.raises(wb.ResourceLimitError, match="1.0 MiB, more than the max_blob_bytes limit of 512.0 KiB"):
        wb.load(spec, limits={"max_blob_bytes": 512 << 10})
    model = wb.load(spec, limits={"max_blob_bytes": 1 << 20})
    np.testing.assert_array_equal(model.predict({"x": np.zeros((2, 3), np.float32)})["y"],
                                  np.full((256, 1024), 3.0, np.float32))
    assert model.limits == dict(DEFAULT_LIMITS, max_blob_bytes=1 << 20)


def test_an_unknown_limit_name_is_refused():
    with pytest.raises(wb.WorkbenchError, match="unknown limit.*max_blob_byte.*the limits are"):
        wb.load(fill_static((2,)), limits={"max_blob_byte": 10})


def test_a_blob_growing_in_a_loop_stops_at_the_limit():
    """A loop concatenating a blob onto itself doubles it each time: the output check stops it."""
    b = builder((4,))
    b.add_copy("init", "x", "state")
    loop = b.add_loop("grow", max_iterations=100)
    body = NeuralNetworkBuilder(nn_spec=loop.loop.bodyNetwork, disable_rank5_shape_mapping=True)
    body.add_concat_nd("double", ["state", "state"], "bigger", axis=0)
    body.add_copy("carry", "bigger", "state")
    b.add_copy("out", "state", "y")
    model = wb.load(b.spec, limits={"max_blob_bytes": 1 << 20})
    message = assert_fails_fast(lambda: model.predict({"x": np.ones(4, np.float32)}), "double")
    assert "1.0 MiB" in message                       # 4 * 2^16 elements * 4 bytes: the first over


def test_loop_iterations_limit_counts_body_runs():
    b = builder((1,))
    b.add_copy("init", "x", "state")
    loop = b.add_loop("loop", max_iterations=7)
    body = NeuralNetworkBuilder(nn_spec=loop.loop.bodyNetwork, disable_rank5_shape_mapping=True)
    body.add_elementwise("inc", ["state"], "next", mode="ADD", alpha=1.0)
    body.add_copy("carry", "next", "state")
    b.add_copy("out", "state", "y")
    assert wb.load(b.spec, limits={"max_loop_iterations": 7}).predict({"x": np.zeros(1, np.float32)})["y"][0] == 7
    assert_fails_fast(lambda: wb.load(b.spec, limits={"max_loop_iterations": 6}).predict(
        {"x": np.zeros(1, np.float32)}), "loop", "max_loop_iterations")


def test_nesting_depth_limit_can_be_raised():
    """70 nested branches (the default allows 64) with a ReLU inside: runs once the limit allows it."""
    b = NeuralNetworkBuilder([("x", datatypes.Array(3)), ("c", datatypes.Array(1))], [("y", None)],
                             disable_rank5_shape_mapping=True)
    inner = b.spec.neuralNetwork
    for level in range(70):
        layer = inner.layers.add()
        layer.name, layer.input[:] = f"branch{level}", ["c"]
        inner = layer.branch.ifBranch
    NeuralNetworkBuilder(nn_spec=inner, disable_rank5_shape_mapping=True).add_activation("relu", "RELU", "x", "y")
    with pytest.raises(wb.ModelFormatError, match=r"'branch64' is nested 65 networks deep.*max_nesting_depth"):
        wb.load(b.spec)
    x = np.array([-1, 0.5, 2], np.float32)
    y = wb.load(b.spec, limits={"max_nesting_depth": 80}).predict({"x": x, "c": np.ones(1, np.float32)})["y"]
    np.testing.assert_array_equal(y, np.maximum(x, 0))


# ---------------------------------------------------------------- outputs that outgrow their inputs
# (found by the fuzzer: a gather inserted into a model, indices of an image's shape -> 6 GiB)

def two_inputs(a, b):
    return NeuralNetworkBuilder([("a", datatypes.Array(*a)), ("b", datatypes.Array(*b))], [("y", None)],
                                disable_rank5_shape_mapping=True)


def test_gather_with_large_indices_fails_before_allocating_the_product():
    b = two_inputs((2, 65536), (256, 256))
    b.add_gather("gather", ["a", "b"], "y", axis=0)            # output (256, 256, 65536)
    model = wb.load(b.spec)
    inputs = {"a": np.ones((2, 65536), np.float32), "b": np.zeros((256, 256), np.float32)}
    assert "16.0 GiB" in assert_fails_fast(lambda: model.predict(inputs), "gather")
    small = {"a": np.arange(8, dtype=np.float32).reshape(2, 4), "b": np.array([[3, 0]], np.float32)}
    b2 = two_inputs((2, 4), (1, 2))
    b2.add_gather("gather", ["a", "b"], "y", axis=1)
    np.testing.assert_array_equal(wb.load(b2.spec).predict(small)["y"], np.take(small["a"], [[3, 0]], axis=1))


def test_broadcasting_a_column_with_a_row_fails_before_allocating_the_square():
    b = two_inputs((65536, 1), (1, 65536))
    b.add_add_broadcastable("sum", ["a", "b"], "y")
    model = wb.load(b.spec)
    inputs = {"a": np.ones((65536, 1), np.float32), "b": np.ones((1, 65536), np.float32)}
    assert "16.0 GiB" in assert_fails_fast(lambda: model.predict(inputs), "sum")
