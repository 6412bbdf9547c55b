"""Inspector: lists what the model file declares (read here straight from the protobuf), custom layers first."""
import shutil

import numpy as np
import pytest
from coremltools.proto import Model_pb2

import workbench as wb
from workbench import examples
from workbench.widgets import Inspector, Session, layer_details, layer_rows


@pytest.fixture
def model(tmp_path):
    shutil.copytree(examples.BUNDLED_LAYERS_DIR, tmp_path / "layers")
    return wb.load(examples.example_path(), layers=tmp_path / "layers")


def file_spec():
    spec = Model_pb2.Model()
    spec.ParseFromString(examples.example_path().read_bytes())
    return spec


def test_lists_the_two_custom_layers_first_with_parameter_types(model):
    spec = file_spec()
    declared = [(l.name, l.custom.className) for l in spec.neuralNetwork.layers if l.WhichOneof("layer") == "custom"]
    assert [c for _, c in declared] == ["ScaledSwish", "PixelNorm"]
    view = Inspector(Session(model))
    rows = view.rows
    assert [(r.name, r.class_name) for r in rows[:2]] == declared
    assert all(r.kind != "custom" for r in rows[2:]) and len(rows) == len(spec.neuralNetwork.layers)
    assert view.layer_list.value == declared[0][0]                   # the first custom layer is selected
    for name, class_name in declared:
        view.select(name)
        layer = next(l for l in spec.neuralNetwork.layers if l.name == name)
        details = view.selected_details
        assert details["class_name"] == class_name
        assert details["description"] == layer.custom.description
        expected_types = {k: v.WhichOneof("value") for k, v in layer.custom.parameters.items()}
        assert {k: t for k, _, t in details["parameters"]} == expected_types
        assert class_name in view.details.value and "intValue" in view.details.value
        assert details["implementation"] and f"{class_name}.py" in details["implementation"]


def test_weights_shapes_and_statistics_match_the_file(model):
    spec = file_spec()
    layer = next(l for l in spec.neuralNetwork.layers if l.WhichOneof("layer") == "custom" and len(l.custom.weights))
    details = layer_details(model, layer.name)
    for i, w in enumerate(layer.custom.weights):
        values = np.asarray(w.floatValue, np.float64)
        summary = details["weights"][i]
        assert summary["shape"] == (values.size,)
        assert summary["min"] == pytest.approx(values.min()) and summary["max"] == pytest.approx(values.max())
        assert summary["mean"] == pytest.approx(values.mean()) and summary["std"] == pytest.approx(values.std())


def test_missing_implementation_is_shown(tmp_path):
    model = wb.load(examples.example_path(), layers=[])
    view = Inspector(Session(model, layers_dir=tmp_path))
    assert "MISSING" in str(view.layer_list.options) and "missing implementations" in view.features.value
    assert view.selected_details["implementation"] is None
    assert not [r for r in layer_rows(model) if r.kind == "custom" and r.implemented]


def test_repr_is_stable(model):
    view = Inspector(Session(model))
    assert repr(view) == "<workbench Inspector 'example.mlmodel': 8 layers, selected 'scaled_swish'>"
    assert "0x" not in repr(view.errors)
