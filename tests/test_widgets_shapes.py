"""Shape view: blob shapes as the runtime traces them, and again at other shapes of a flexible input.

The reference is a formula: the test's custom layer repeats its input along the last axis, so
its output has shape (..., 2 * last), and each new input shape must call its output_shapes again.
"""
import numpy as np

import workbench as wb
from support import custom_only_model, set_shape_range
from workbench import examples
from workbench.widgets import ShapeView, Session, blob_rows, input_shape_choices, shapes_at
from workbench.widgets._shapes import parse_shape


class Repeat(wb.CustomLayer):
    def output_shapes(self, input_shapes):
        *lead, last = input_shapes[0]
        return [(*lead, 2 * last)]

    def evaluate(self, inputs, outputs):
        outputs[0][...] = np.concatenate([inputs[0], inputs[0]], axis=-1)


def flexible_model():
    spec = custom_only_model(["Repeat"], input_shape=(2, 3))
    set_shape_range(spec, "x", [(1, 4), (1, 8)])
    return wb.load(spec, layers=[Repeat])


def test_example_blob_shapes_match_a_trace():
    model = wb.load(examples.example_path(), layers=examples.BUNDLED_LAYERS_DIR)
    view = ShapeView(Session(model))
    name, inputs, _ = examples.example_cases()[0]
    traced = {k: v.shape for k, v in model.trace(inputs).items()}
    assert {r.blob: r.shape for r in view.rows} == traced
    row = next(r for r in view.rows if r.blob == "pixel_norm")
    assert (row.layer, row.kind, row.class_name) == ("pixel_norm", "custom", "PixelNorm")
    assert "the model's input shapes are fixed" in view.children[0].value
    assert view.diagram.children and "pixel_norm" in view.table.value


def test_another_input_shape_calls_output_shapes_again():
    model = flexible_model()
    choice = input_shape_choices(model)[0]
    assert choice.kind == "range" and choice.ranges == [(1, 4), (1, 8)] and choice.flexible
    view = ShapeView(Session(model))
    record = model.custom_layers[0]
    calls = record.calls["output_shapes"]
    assert view.fields["x"].value == "2, 3"                          # the declared shape is the default
    view.fields["x"].value = "3, 5"
    view.apply_button.click()
    assert view.errors.last_error is None
    assert {r.blob: r.shape for r in view.rows} == {"x": (3, 5), "y": (3, 10)}
    assert record.calls["output_shapes"] == calls + 1 and record.output_shapes == [(3, 10)]
    assert "(3, 10)" in view.table.value


def test_a_shape_the_model_refuses_is_shown_in_the_widget():
    view = ShapeView(Session(flexible_model()))
    view.fields["x"].value = "5, 5"
    view.apply_button.click()
    assert "InputError" in view.errors.value and "the model allows" in view.errors.value
    view.fields["x"].value = "two, 5"
    view.apply_button.click()
    assert "whole numbers" in view.errors.value


def test_shapes_without_a_widget():
    model = flexible_model()
    assert shapes_at(model, {"x": (4, 8)})["y"] == (4, 16)
    assert [r.blob for r in blob_rows(model)] == ["x", "y"]
    assert parse_shape("(1, 3,64, 64)") == (1, 3, 64, 64)
