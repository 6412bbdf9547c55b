"""wb.export_swift: the Swift parses, reads each parameter as its protobuf type, and the vectors round-trip.

Oracles: tree-sitter-swift (a Swift grammar) for syntax; the model files' protobuf, read directly,
for the parameter types and weight sizes; the test cases themselves for the JSON vectors.
"""
import json
import math

import numpy as np
import pytest

import workbench as wb
from support import LAYERS, corpus, custom_only_model
from workbench import examples
from workbench.export import ExportError, read_vectors

# The Swift type each CustomLayerParamValue field must be read as (NeuralNetwork.proto: double,
# int32, int64, bool, string).
SWIFT_TYPES = {"doubleValue": "Double", "intValue": "Int", "longValue": "Int64", "boolValue": "Bool",
               "stringValue": "String"}
ACCESSORS = {"doubleValue": "?.doubleValue", "intValue": "?.intValue", "longValue": "?.int64Value",
             "boolValue": "?.boolValue", "stringValue": "as? String"}


@pytest.fixture(scope="module")
def swift_parser():
    ts = pytest.importorskip("tree_sitter", reason="the Swift grammar check needs the test extra (tree-sitter)")
    swift = pytest.importorskip("tree_sitter_swift", reason="needs the test extra (tree-sitter-swift)")
    return ts.Parser(ts.Language(swift.language()))


def parse_clean(parser, path):
    """The syntax tree of a Swift file, after asserting it has no ERROR or MISSING node."""
    source = path.read_bytes()
    tree = parser.parse(source)
    bad = []

    def walk(node):
        if node.is_error or node.is_missing:
            line = source.splitlines()[node.start_point[0]].decode()
            bad.append(f"{path.name}:{node.start_point[0] + 1}: {node.type}: {line.strip()}")
        for child in node.children:
            walk(child)
    walk(tree.root_node)
    assert not bad, "\n".join(bad)
    return tree, source


def class_members(tree, source):
    """(class name, @objc name, inherited types, {property: type}, {method name: declaration text})."""
    (cls,) = [n for n in tree.root_node.children if n.type == "class_declaration"]
    text = lambda n: source[n.start_byte:n.end_byte].decode()              # noqa: E731
    modifiers = [n for n in cls.children if n.type == "modifiers"]
    objc = [text(a) for m in modifiers for a in m.children if a.type == "attribute"]
    inherits = [text(n.child_by_field_name("inherits_from")) for n in cls.children if n.type == "inheritance_specifier"]
    properties, methods = {}, {}
    for member in cls.child_by_field_name("body").named_children:
        if member.type == "property_declaration":
            name = text(member.child_by_field_name("name"))
            annotation = next(c for c in member.children if c.type == "type_annotation")
            properties[name] = text(annotation).lstrip(":").strip()
        elif member.type in ("function_declaration", "init_declaration"):
            methods[text(member.child_by_field_name("name"))] = text(member)
    return text(cls.child_by_field_name("name")), objc, inherits, properties, methods


def proto_custom_layers(path):
    from coremltools.proto import Model_pb2
    spec = Model_pb2.Model()
    spec.ParseFromString(path.read_bytes())
    return [layer for layer in spec.neuralNetwork.layers if layer.WhichOneof("layer") == "custom"]


def check_class_file(parser, path, custom):
    """The Swift class for one CustomLayerParams: name, protocol, every parameter typed and read as stored."""
    tree, source = parse_clean(parser, path)
    name, objc, inherits, properties, methods = class_members(tree, source)
    assert name == custom.className and objc == [f"@objc({custom.className})"]
    assert inherits == ["NSObject", "MLCustomLayer"]
    assert methods["init"].startswith("required init(parameters: [String : Any]) throws")
    assert methods["setWeightData"].startswith("func setWeightData(_ weights: [Data]) throws")
    assert methods["outputShapes"].startswith(
        "func outputShapes(forInputShapes inputShapes: [[NSNumber]]) throws -> [[NSNumber]]")
    assert methods["evaluate"].startswith("func evaluate(inputs: [MLMultiArray], outputs: [MLMultiArray]) throws")
    init = methods["init"]
    for key, value in custom.parameters.items():
        field = value.WhichOneof("value")
        assert properties[key] == SWIFT_TYPES[field], key
        (statement,) = [s for s in init.split("guard ")[1:] if f'parameters["{key}"]' in s]
        assert ACCESSORS[field] in statement.split("else")[0] and "throw" in statement, key
    assert "weights.count == %d" % len(custom.weights) in methods["setWeightData"]
    return properties, methods


# ---------------------------------------------------------------- Swift files

@pytest.fixture(scope="module")
def example_export(tmp_path_factory):
    model = wb.load(examples.example_path(), layers=examples.BUNDLED_LAYERS_DIR)
    out = tmp_path_factory.mktemp("example_swift")
    paths = wb.export_swift(model, out, cases=examples.example_cases(include_intermediates=True))
    return model, out, paths


def test_example_exports_one_class_per_class_name_plus_test_files(example_export):
    _, out, paths = example_export
    assert sorted(p.name for p in paths) == sorted([
        "ScaledSwish.swift", "PixelNorm.swift", "example.mlmodel", "example_vectors.json",
        "ExampleCustomLayerTests.swift"])
    assert (out / "example.mlmodel").read_bytes() == examples.example_path().read_bytes()


def test_example_swift_parses_with_the_right_parameter_types(example_export, swift_parser):
    _, out, _ = example_export
    for layer in proto_custom_layers(examples.example_path()):
        check_class_file(swift_parser, out / f"{layer.custom.className}.swift", layer.custom)
    swish = (out / "ScaledSwish.swift").read_text()
    assert swish.count("8 values stored as floatValue (float32) -> 32 bytes") == 2      # beta, gain
    assert "scaled_swish: [1, 8, 32, 32] -> [1, 8, 32, 32]" in swish                   # observed shapes
    assert "np.tanh(y, out=y)" in swish                  # the verified Python evaluate, as a comment
    parse_clean(swift_parser, out / "ExampleCustomLayerTests.swift")


def test_corpus_model_with_string_int_bool_parameters(tmp_path, swift_parser):
    path = corpus("dneprDroid_DeformConv2d_test-model.mlmodel")
    model = wb.load(path, layers=LAYERS)
    paths = wb.export_swift(model, tmp_path)
    assert sorted(p.name for p in paths) == ["dneprDroid_addmm.swift", "dneprDroid_deform_conv2d.swift"]
    kinds = set()
    for layer in proto_custom_layers(path):
        properties, _ = check_class_file(swift_parser, tmp_path / f"{layer.custom.className}.swift", layer.custom)
        kinds |= {v.WhichOneof("value") for v in layer.custom.parameters.values()}
    assert {"stringValue", "intValue", "boolValue"} <= kinds


def test_every_parameter_type_keywords_and_clashing_names(tmp_path, swift_parser):
    spec = custom_only_model(["Odd"], parameters={"ratio": 0.5, "count": 3, "flag": True, "label": "x\"y\\z",
                                                  "class": 1, "description": "d", "2d-size": 4})
    spec.neuralNetwork.layers[0].custom.parameters["big"].longValue = 2 ** 40
    spec.neuralNetwork.layers[0].custom.weights.add().float16Value = b"\x00\x3c" * 5
    (path,) = wb.export_swift(wb.load(spec), tmp_path)
    tree, source = parse_clean(swift_parser, path)
    _, _, _, properties, methods = class_members(tree, source)
    assert properties == {"ratio": "Double", "count": "Int", "flag": "Bool", "label": "String", "big": "Int64",
                          "classParameter": "Int", "descriptionParameter": "String", "_2d_size": "Int",
                          "weights": "[Data]"}
    assert 'parameters["label"] as? String' in methods["init"]
    assert 'parameters["2d-size"]' in methods["init"]
    assert 'Parameter "label" (stringValue): "x\\"y\\\\z"' in source.decode()
    assert "weights[0]: float16Value (float16) -> 10 bytes" in source.decode()


def test_parameter_absent_in_some_layers_is_optional(tmp_path, swift_parser):
    spec = custom_only_model(["Pair", "Pair"], parameters={"k": 2})
    del spec.neuralNetwork.layers[1].custom.parameters["k"]
    (path,) = wb.export_swift(wb.load(spec), tmp_path)
    tree, source = parse_clean(swift_parser, path)
    _, _, _, properties, methods = class_members(tree, source)
    assert properties["k"] == "Int?"
    assert "guard" not in methods["init"]


def test_unexportable_models_raise_export_errors(tmp_path):
    with pytest.raises(ExportError, match="className 'my.Layer' is not a Swift"):
        wb.export_swift(wb.load(custom_only_model(["my.Layer"])), tmp_path)
    spec = custom_only_model(["A", "A"])
    spec.neuralNetwork.layers[0].custom.parameters["k"].intValue = 1
    spec.neuralNetwork.layers[1].custom.parameters["k"].stringValue = "1"
    with pytest.raises(ExportError, match="parameter 'k' is intValue in one layer and stringValue"):
        wb.export_swift(wb.load(spec), tmp_path)
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    builder = NeuralNetworkBuilder([("x", datatypes.Array(3))], [("y", None)], disable_rank5_shape_mapping=True)
    builder.add_activation("relu", "RELU", "x", "y")
    with pytest.raises(ExportError, match="no custom layers"):
        wb.export_swift(wb.load(builder.spec), tmp_path)


# ---------------------------------------------------------------- JSON vectors

def test_vectors_round_trip_to_the_cases_exactly(example_export):
    _, out, _ = example_export
    text = (out / "example_vectors.json").read_text()
    document = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert document["model"] == "example.mlmodel" and document["version"] == 1
    cases = read_vectors(out / "example_vectors.json")
    original = examples.example_cases()
    assert [c.name for c in cases] == [name for name, _, _ in original]
    for case, (name, inputs, expected) in zip(cases, original):
        assert set(case.inputs) == set(inputs) and set(case.expected) == set(expected) == {"logits"}
        for key, value in inputs.items():
            assert case.inputs[key].dtype == value.dtype and case.inputs[key].shape == value.shape
            np.testing.assert_array_equal(case.inputs[key], value)
        np.testing.assert_array_equal(case.expected["logits"], expected["logits"])
        assert case.tolerance("logits") == wb.TestCase(name, inputs, expected).tolerance("logits")
    entry = document["cases"][0]["expected"]["logits"]
    assert entry["shape"] == [1, 10] and entry["dataType"] == "float32" and len(entry["data"]) == 10


def test_vectors_keep_special_values_images_labels_and_tolerances(tmp_path):
    from PIL import Image
    spec = custom_only_model(["A"], input_shape=(2, 3))
    model = wb.load(spec)
    special = np.array([[np.nan, np.inf, -np.inf], [0.1, -1e-30, 3.4e38]], np.float32)
    image = Image.fromarray(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3), mode="RGB")
    case = wb.TestCase("odd", {"x": special}, {"y": special / 2, "label": "cat", "index": 7,
                                               "probs": {"cat": 0.75, "dog": 0.25}},
                       rtol={"y": 1e-3}, atol=0.5, description="edge values")
    from workbench.export import write_vectors
    path = write_vectors(tmp_path / "v.json", [case], "m.mlmodel", ["y", "label", "index", "probs"])
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    (back,) = read_vectors(path)
    np.testing.assert_array_equal(back.inputs["x"], special)
    np.testing.assert_array_equal(back.expected["y"], special / 2)
    assert back.expected["label"] == "cat" and back.expected["index"] == 7
    assert back.expected["probs"] == {"cat": 0.75, "dog": 0.25}
    assert back.tolerance("y") == (1e-3, 0.5) and back.tolerance("probs") == (1e-4, 0.5)
    assert back.description == "edge values"
    image_case = wb.TestCase("img", {"x": image}, {"y": image})
    (img_back,) = read_vectors(write_vectors(tmp_path / "i.json", [image_case], "m.mlmodel", ["y"]))
    assert img_back.inputs["x"].mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img_back.inputs["x"]), np.asarray(image))
    with pytest.raises(ExportError, match="expects none of the model's outputs"):
        wb.export_swift(model, tmp_path / "none", cases=[wb.TestCase("c", {"x": special}, {"z": special})])
    assert math.isnan(back.expected["y"][0, 0])


# ---------------------------------------------------------------- CLI

def test_cli_export_swift_with_a_case_file(tmp_path, swift_parser, capsys):
    from workbench.cli import main
    out = tmp_path / "swift"
    cases = examples.HERE / "example_cases.npz"
    assert main(["export-swift", str(examples.example_path()), str(out), "--cases", str(cases),
                 "--layers", str(examples.BUNDLED_LAYERS_DIR)]) == 0
    printed = capsys.readouterr().out
    for name in ("ScaledSwish.swift", "PixelNorm.swift", "example_vectors.json", "ExampleCustomLayerTests.swift"):
        assert f"wrote {out / name}" in printed
        if name.endswith(".swift"):
            parse_clean(swift_parser, out / name)
    assert [c.name for c in read_vectors(out / "example_vectors.json")] == ["noise", "waves", "checker"]
    assert main(["export-swift", str(tmp_path / "missing.mlmodel"), str(out)]) == 2
    assert "error:" in capsys.readouterr().err
