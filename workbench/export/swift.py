"""Swift MLCustomLayer skeletons, one file per className, from what the workbench knows of a model.

Why: the layer proven in Python must be rewritten in Swift for the app, and everything but the
arithmetic follows from the model file: the @objc name Core ML looks the class up by, each parameter
with its Swift type (and the error when it is missing), the weight blobs with their sizes, the
shapes the layer saw. The skeleton gets those right and leaves ``evaluate`` to the author, with the
verified Python ``evaluate`` beside it in a comment; until then it throws, so nothing pretends to work.
"""
import inspect
import os
import textwrap
from collections import OrderedDict

from .vectors import ExportError

# CustomLayerParamValue field -> (Swift type, how to read it from the [String: Any] Core ML hands over)
PARAMETER_READERS = {
    "doubleValue": ("Double", '(parameters[{key}] as? NSNumber)?.doubleValue'),
    "intValue": ("Int", '(parameters[{key}] as? NSNumber)?.intValue'),
    "longValue": ("Int64", '(parameters[{key}] as? NSNumber)?.int64Value'),
    "boolValue": ("Bool", '(parameters[{key}] as? NSNumber)?.boolValue'),
    "stringValue": ("String", 'parameters[{key}] as? String'),
}
# WeightParams field -> bytes per value as stored (None: the stored bytes themselves)
WEIGHT_STORAGE = {"floatValue": ("float32", 4), "float16Value": ("float16", None), "rawValue": ("raw bytes", None),
                  "int8RawValue": ("int8", None)}

SWIFT_KEYWORDS = set("""associatedtype class deinit enum extension fileprivate func import init inout internal let
open operator private precedencegroup protocol public rethrows static struct subscript typealias var break case
catch continue default defer do else fallthrough for guard if in repeat return throw switch where while Any as
await false is nil self Self super throws true try async some any""".split())
# Names a property of an NSObject / MLCustomLayer class must not take.
TAKEN = {"description", "debugDescription", "hash", "hashValue", "superclass", "isProxy", "classForCoder",
         "weights", "parameters", "evaluate", "encode", "outputShapes", "setWeightData", "layerError", "copy",
         "zone", "perform", "isEqual", "self", "Type", "Protocol"}


def swift_string(text):
    """A Swift string literal for ``text``."""
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def swift_identifier(name, taken):
    """A Swift property name for a parameter key: invalid characters -> '_', keywords and clashes renamed."""
    ident = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name) or "parameter"
    if ident[0].isdigit():
        ident = "_" + ident
    if ident in SWIFT_KEYWORDS or ident in TAKEN:
        ident += "Parameter"
    base, k = ident, 2
    while ident in taken:
        ident, k = f"{base}{k}", k + 1
    taken.add(ident)
    return ident


def check_class_name(class_name):
    """Core ML finds the class with NSClassFromString(className): it must be a plain identifier."""
    if not (class_name.isidentifier() and class_name.isascii()) or class_name in SWIFT_KEYWORDS:
        raise ExportError(f"custom layer className '{class_name}' is not a Swift/Objective-C identifier, so no "
                          f"Swift class can carry it; rename it in the model (CustomLayerParams.className)")


def swift_value(value):
    """A parameter value as Swift would write it (for comments)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return swift_string(value) if isinstance(value, str) else repr(value)


def _comment(text, indent=""):
    return [f"{indent}//{(' ' + line) if line else ''}" for line in str(text).splitlines()]


def custom_layer_params(spec):
    """{layer name: CustomLayerParams} of every custom layer anywhere in a Model spec (nested networks too)."""
    found = {}

    def walk(message):
        for field, value in message.ListFields():
            if field.message_type is None or field.message_type.GetOptions().map_entry:
                continue
            items = [value] if hasattr(value, "ListFields") else list(value)
            for item in items:
                if field.message_type.name == "NeuralNetworkLayer" and item.WhichOneof("layer") == "custom":
                    found.setdefault(item.name, item.custom)
                walk(item)
    walk(spec)
    return found


def _weight_line(index, weights):
    form = next((f for f in WEIGHT_STORAGE if len(getattr(weights, f))), None)
    if form is None:
        return f"weights[{index}]: empty"
    stored = getattr(weights, form)
    kind, size = WEIGHT_STORAGE[form]
    count = len(stored)
    if form == "floatValue":
        return f"weights[{index}]: {count} values stored as floatValue ({kind}) -> {count * size} bytes"
    quantized = " (quantized: see WeightParams.quantization)" if weights.HasField("quantization") else ""
    return f"weights[{index}]: {form} ({kind}){quantized} -> {count} bytes"


def _shape_text(shapes):
    return ", ".join("[" + ", ".join(str(d) for d in s) + "]" for s in shapes) if shapes else "?"


class LayerClass:
    """Everything one className's Swift file needs, gathered over the model's layers of that class."""

    def __init__(self, class_name, records, params_by_layer, blob_shapes):
        check_class_name(class_name)
        self.class_name, self.records = class_name, records
        self.params_by_layer = params_by_layer
        self.blob_shapes = blob_shapes
        self.parameters = self._parameters()

    def _parameters(self):
        """OrderedDict key -> (proto field, Swift name, required, example values by layer)."""
        fields, values = OrderedDict(), {}
        for r in self.records:
            for key, field in r.parameter_types.items():
                if field is None:
                    continue
                seen = fields.setdefault(key, field)
                if seen != field:
                    raise ExportError(f"className '{self.class_name}': parameter '{key}' is {seen} in one layer and "
                                      f"{field} in layer '{r.name}'; one Swift class cannot read both")
                values.setdefault(key, []).append((r.name, r.parameters[key]))
        taken = set()
        out = OrderedDict()
        for key, field in fields.items():
            required = len(values[key]) == len(self.records)
            out[key] = (field, swift_identifier(key, taken), required, values[key])
        return out

    def weight_comments(self):
        lines = []
        for r in self.records:
            params = self.params_by_layer.get(r.name)
            lines.append(f"layer '{r.name}':")
            if params is None:
                lines += [f"  weights[{i}]: {w.size} values" for i, w in enumerate(r.weights)]
            else:
                lines += ["  " + _weight_line(i, w) for i, w in enumerate(params.weights)]
            if not r.weights:
                lines.append("  no weights")
        return lines

    def shape_comments(self):
        lines = []
        for r in self.records:
            ins = r.input_shapes or [self.blob_shapes.get(n) for n in r.inputs]
            outs = r.output_shapes or [self.blob_shapes.get(n) for n in r.outputs]
            ins = None if any(s is None for s in ins) else ins
            outs = None if any(s is None for s in outs) else outs
            lines.append(f"{r.name}: {_shape_text(ins)} -> {_shape_text(outs)}")
        return lines

    def python_evaluate(self):
        """The verified Python evaluate, as comment lines (empty when there is none to show)."""
        impl = next((r.implementation for r in self.records if r.implementation is not None), None)
        evaluate = getattr(impl, "evaluate", None)
        if evaluate is None or getattr(evaluate, "__qualname__", "").startswith("CustomLayer."):
            return []
        try:
            source = textwrap.dedent(inspect.getsource(evaluate)).rstrip()
            where = os.path.basename(evaluate.__code__.co_filename)
        except (OSError, TypeError, AttributeError):
            return []
        return [f"The Python implementation the workbench ran ({where}, {impl.__name__}.evaluate):", ""] + \
            ["    " + line for line in source.splitlines()]


def layer_class_source(layer, model_file):
    """The Swift source of one MLCustomLayer class."""
    name = layer.class_name
    first = layer.records[0]
    lines = [f"//  {name}.swift", f"//  Core ML custom layer className \"{name}\" of {model_file}, generated by "
             f"coreml-workbench.", "//"]
    if first.description:
        lines += ["//  " + line for line in first.description.splitlines()] + ["//"]
    lines += ["//  Core ML creates one instance per layer at load: init(parameters:), then setWeightData(_:),",
              "//  outputShapes(forInputShapes:) at load and whenever input shapes change, and",
              "//  evaluate(inputs:outputs:) on every prediction (on the CPU; encode is the optional GPU path).",
              "", "import Foundation", "import CoreML", "",
              f"@objc({name})", f"class {name}: NSObject, MLCustomLayer {{", ""]
    for key, (field, ident, required, values) in layer.parameters.items():
        swift_type = PARAMETER_READERS[field][0]
        shown = ", ".join(f"{swift_value(v)} in '{n}'" for n, v in values[:3]) + (", ..." if len(values) > 3 else "")
        lines.append(f"    /// Parameter {swift_string(key)} ({field}): {shown}"
                     + ("" if required else "; absent in some layers"))
        lines.append(f"    let {ident}: {swift_type}{'' if required else '?'}")
    lines += ["    /// The weight blobs, in file order, as Core ML hands them over.",
              "    private(set) var weights: [Data] = []", "",
              "    required init(parameters: [String : Any]) throws {"]
    for key, (field, ident, required, _) in layer.parameters.items():
        reader = PARAMETER_READERS[field][1].format(key=swift_string(key))
        if required:
            message = swift_string(f"missing or mistyped parameter '{key}' ({field})")
            lines += [f"        guard let {ident} = {reader} else {{",
                      f"            throw {name}.layerError(\"init(parameters:)\", {message})", "        }",
                      f"        self.{ident} = {ident}"]
        else:
            lines.append(f"        self.{ident} = {reader}")
    lines += ["        super.init()", "    }", "",
              "    func setWeightData(_ weights: [Data]) throws {",
              "        // Expected, as stored in the model file:"]
    lines += ["        //   " + line for line in layer.weight_comments()]
    counts = {len(r.weights) for r in layer.records}
    if len(counts) == 1:
        (count,) = counts
        lines += [f"        guard weights.count == {count} else {{",
                  f"            throw {name}.layerError(\"setWeightData(_:)\", \"expected {count} weight blobs, "
                  f"got \\(weights.count)\")", "        }"]
    lines += ["        self.weights = weights", "    }", "",
              "    func outputShapes(forInputShapes inputShapes: [[NSNumber]]) throws -> [[NSNumber]] {",
              "        // Shapes the workbench observed (inputs -> outputs):"]
    lines += ["        //   " + line for line in layer.shape_comments()]
    n_in, n_out = len(first.inputs), len(first.outputs)
    if n_in == n_out:
        lines += ["        // Skeleton: every output has the shape of the input at its index. Change it if the layer",
                  "        // changes shapes.", "        return inputShapes"]
    else:
        lines += [f"        // Skeleton: each of the {n_out} outputs has the shape of the first input. Change it if the",
                  "        // layer changes shapes.", f"        return Array(repeating: inputShapes[0], count: {n_out})"]
    lines += ["    }", "",
              "    func evaluate(inputs: [MLMultiArray], outputs: [MLMultiArray]) throws {",
              f"        // inputs: {', '.join(first.inputs)}; outputs: {', '.join(first.outputs)} (layer '{first.name}').",
              "        // Fill each outputs[i] in place: Core ML allocates it with the shape from outputShapes.",
              "        // Float32 access, for example:",
              "        //   let x = inputs[0].dataPointer.bindMemory(to: Float.self, capacity: inputs[0].count)",
              "        //   let y = outputs[0].dataPointer.bindMemory(to: Float.self, capacity: outputs[0].count)",
              "        //   for i in 0..<outputs[0].count { y[i] = x[i] }"]
    python = layer.python_evaluate()
    if python:
        lines += ["        //"] + _comment("\n".join(python), "        ")
    lines += [f"        throw {name}.layerError(\"evaluate(inputs:outputs:)\", \"not implemented yet\")", "    }", "",
              "    private static func layerError(_ method: String, _ message: String) -> NSError {",
              f"        return NSError(domain: {swift_string(name)}, code: 1,",
              f"                       userInfo: [NSLocalizedDescriptionKey: \"{name}.\\(method): \\(message)\"])",
              "    }", "}", ""]
    return "\n".join(lines)


def layer_classes(model):
    """One LayerClass per className of ``model``, in order of first appearance."""
    grouped = OrderedDict()
    for record in model.custom_layers:
        grouped.setdefault(record.class_name, []).append(record)
    params = custom_layer_params(model.spec)
    shapes = getattr(model, "blob_shapes", {}) or {}
    return [LayerClass(name, records, params, shapes) for name, records in grouped.items()]
