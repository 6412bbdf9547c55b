"""What the widgets show, as plain data: layer details, weights, blob shapes, input shape choices.

The widgets draw these; a script or a test calls them directly. Every value comes from the runtime
(``model.custom_layers``, ``model.trace``, ``model.blob_shapes``, the spec's WeightParams decoded by
``runtime.spec.decode_weights``): nothing here computes a layer.
"""
from dataclasses import dataclass, field

import numpy as np

from ..runtime import spec as specmod
from ..testing.divergence import layer_producers


# ------------------------------------------------------------------ layers

@dataclass
class LayerRow:
    """One top-level layer as the inspector lists it (custom layers first)."""
    name: str
    kind: str
    class_name: str = None
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    implemented: bool = True


def layer_rows(model):
    """Every top-level layer, custom layers first (in network order), then the built-in ones."""
    records = {r.name: r for r in model.custom_layers}
    rows = []
    for layer in model.nn.layers:
        kind = layer.WhichOneof("layer")
        record = records.get(layer.name) if kind == "custom" else None
        rows.append(LayerRow(layer.name, kind, record.class_name if record else None, list(layer.input),
                             list(layer.output), record is None or record.implementation is not None))
    return [r for r in rows if r.kind == "custom"] + [r for r in rows if r.kind != "custom"]


def implementation_file(record):
    """The file a custom layer's implementation was compiled from (its methods' code says), or None."""
    cls = record.implementation
    for value in vars(cls).values() if cls is not None else ():
        code = getattr(value, "__code__", None)
        if code is not None:
            return code.co_filename
    return None


def implementation_source(record):
    """'module.Class (file)' of what implements a custom layer, or None when it is missing."""
    cls = record.implementation
    if cls is None:
        return None
    where = implementation_file(record)
    return f"{cls.__module__}.{cls.__qualname__}" + (f" ({where})" if where else "")


def layer_details(model, name):
    """Everything the inspector shows about one layer, as a dict (custom layers in full)."""
    layer = next((l for l in model.nn.layers if l.name == name), None)
    if layer is None:
        raise KeyError(f"{model.name}: no top-level layer named {name!r}")
    shapes = model.blob_shapes
    details = {
        "name": name, "kind": layer.WhichOneof("layer"),
        "inputs": [(b, shapes.get(b)) for b in layer.input],
        "outputs": [(b, shapes.get(b)) for b in layer.output],
        "weights": [w.summary() for w in weight_tensors(model, name)],
    }
    record = next((r for r in model.custom_layers if r.name == name), None)
    if record is not None:
        details.update(
            class_name=record.class_name, description=record.description,
            parameters=[(k, v, record.parameter_types.get(k)) for k, v in record.parameters.items()],
            implementation=implementation_source(record),
            calls=dict(record.calls))
    return details


# ------------------------------------------------------------------ weights

@dataclass
class WeightTensor:
    """One decoded weight tensor of a layer, with how the file stores it."""
    layer: str
    name: str
    values: np.ndarray                 # decoded float32, shaped when the layer kind says how
    storage: str                       # float32 | float16 | int8 | linear quantized | lookup table
    bits: int = None
    lookup_table: np.ndarray = None    # lookup-table quantization: the table
    codes: np.ndarray = None           # lookup-table quantization: the index of each value

    def statistics(self):
        v = self.values.astype(np.float64).ravel()
        if v.size == 0:
            return {"count": 0}
        return {"count": int(v.size), "min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()),
                "std": float(v.std()), "zeros": int(np.count_nonzero(v == 0))}

    def summary(self):
        out = {"name": self.name, "shape": tuple(self.values.shape), "storage": self.storage}
        out.update(self.statistics())
        if self.lookup_table is not None:
            out["lookup_table"] = self.lookup_table.tolist()
        return out


# Shapes of the weight fields of common built-in kinds, from NeuralNetwork.proto's documentation.
def _weight_shape(kind, params, field_name, size):
    if kind == "convolution" and field_name == "weights":
        k = list(params.kernelSize) or [3, 3]
        out = params.outputChannels
        if out and size % (out * k[0] * k[1]) == 0:
            return (out, size // (out * k[0] * k[1]), k[0], k[1])
    if kind == "innerProduct" and field_name == "weights" and params.outputChannels and params.inputChannels:
        return (params.outputChannels, params.inputChannels)
    return (size,)


def _storage(w):
    if len(w.floatValue):
        return "float32", None
    if len(w.float16Value):
        return "float16", 16
    if len(w.int8RawValue):
        return "int8", 8
    if len(w.rawValue) and w.HasField("quantization"):
        q = w.quantization
        kind = "lookup table" if q.WhichOneof("QuantizationType") == "lookupTableQuantization" else "linear quantized"
        return kind, int(q.numberOfBits)
    return "empty", None


def _weight_fields(layer):
    """(field name, WeightParams) of one layer, in file order (custom layers: weights[i])."""
    kind = layer.WhichOneof("layer")
    params = getattr(layer, kind)
    if kind == "custom":
        return [(f"weights[{i}]", w) for i, w in enumerate(params.weights)]
    out = []
    for descriptor, value in params.ListFields():
        if descriptor.message_type is not None and descriptor.message_type.name == "WeightParams":
            if isinstance(value, (list, tuple)) or hasattr(value, "add"):     # a repeated field
                out += [(f"{descriptor.name}[{i}]", w) for i, w in enumerate(value)]
            else:
                out.append((descriptor.name, value))
    return out


def weight_tensors(model, layer_name):
    """Each weight tensor of a top-level layer, decoded (quantized ones with their lookup table)."""
    layer = next((l for l in model.nn.layers if l.name == layer_name), None)
    if layer is None:
        raise KeyError(f"{model.name}: no top-level layer named {layer_name!r}")
    kind = layer.WhichOneof("layer")
    params = getattr(layer, kind)
    tensors = []
    for field_name, w in _weight_fields(layer):
        where = f"{model.name}: layer '{layer_name}' {field_name}"
        values = specmod.decode_weights(w, where)
        storage, bits = _storage(w)
        table = codes = None
        if storage == "lookup table":
            table = np.asarray(w.quantization.lookupTableQuantization.floatValue, np.float32)
            codes = specmod.unpack_bits(w.rawValue, bits, values.size, where)
        shape = _weight_shape(kind, params, field_name, values.size)
        tensors.append(WeightTensor(layer_name, field_name, values.reshape(shape), storage, bits, table, codes))
    return tensors


def layers_with_weights(model):
    """Names of the top-level layers that hold weights, custom layers first."""
    return [r.name for r in layer_rows(model)
            if _weight_fields(next(l for l in model.nn.layers if l.name == r.name))]


# ------------------------------------------------------------------ shapes

@dataclass
class InputShapeChoice:
    """The shapes one input allows: fixed, a list (enumerated), or per-dimension ranges."""
    name: str
    kind: str                          # fixed | enumerated | range | image | other
    default: tuple
    shapes: list = field(default_factory=list)      # enumerated
    ranges: list = field(default_factory=list)      # range: (lower, upper or -1 for unbounded)

    @property
    def flexible(self):
        return self.kind in ("enumerated", "range") or (self.kind == "image" and bool(self.shapes or self.ranges))


def input_shape_choices(model):
    """For each input, which shapes it takes (what the shape view offers)."""
    choices = []
    for f in model.io.inputs:
        kind = specmod.feature_kind(f)
        if kind == "multiArrayType":
            t = f.type.multiArrayType
            which = t.WhichOneof("ShapeFlexibility")
            default = specmod.array_shape(f)
            if which == "enumeratedShapes":
                shapes = [tuple(int(d) for d in s.shape) for s in t.enumeratedShapes.shapes]
                if len(t.shape) and tuple(t.shape) not in shapes:
                    shapes.insert(0, tuple(int(d) for d in t.shape))
                choices.append(InputShapeChoice(f.name, "enumerated", default, shapes=shapes))
            elif which == "shapeRange":
                ranges = [(int(r.lowerBound), int(r.upperBound)) for r in t.shapeRange.sizeRanges]
                choices.append(InputShapeChoice(f.name, "range", default, ranges=ranges))
            else:
                choices.append(InputShapeChoice(f.name, "fixed", default))
        elif kind == "imageType":
            size = specmod.image_size(f)
            t = f.type.imageType
            which = t.WhichOneof("SizeFlexibility")
            shapes, ranges = [], []
            if which == "enumeratedSizes":
                shapes = [(int(s.height), int(s.width)) for s in t.enumeratedSizes.sizes]
            elif which == "imageSizeRange":
                r = t.imageSizeRange
                ranges = [(int(r.heightRange.lowerBound), int(r.heightRange.upperBound)),
                          (int(r.widthRange.lowerBound), int(r.widthRange.upperBound))]
            default = (size[1], size[0]) if size else None
            choices.append(InputShapeChoice(f.name, "image", default, shapes=shapes, ranges=ranges))
        else:
            choices.append(InputShapeChoice(f.name, "other", None))
    return choices


def _zero_input(model, name, shape):
    feature = next(f for f in model.io.inputs if f.name == name)
    if specmod.feature_kind(feature) == "imageType":
        from PIL import Image
        space = feature.type.imageType.colorSpace
        mode = "L" if space in (10, 40) else "RGB"
        height, width = shape[-2], shape[-1]
        return Image.new(mode, (int(width), int(height)))
    if specmod.feature_kind(feature) in ("int64Type", "doubleType"):
        return np.zeros((1,), np.float32)
    return np.zeros(tuple(int(d) for d in shape), np.float32)


def shapes_at(model, input_shapes):
    """Every blob's shape when the model runs on zeros of ``input_shapes`` ({input: shape}).

    Runs ``model.trace``, so each custom layer's ``output_shapes`` is called again for the new
    shapes, as Core ML does when input shapes change. Images take (height, width).
    Raises the runtime's InputError when a shape is not one the model allows.
    """
    inputs = {}
    for choice in input_shape_choices(model):
        shape = input_shapes.get(choice.name, choice.default)
        if shape is None:
            raise KeyError(f"{model.name}: input '{choice.name}' has no default shape; give one")
        inputs[choice.name] = _zero_input(model, choice.name, shape)
    scope = model.trace(inputs)
    return {name: tuple(v.shape) for name, v in scope.items()}


@dataclass
class BlobRow:
    blob: str
    shape: tuple
    layer: str = None                  # the layer that writes it (None for a model input)
    kind: str = None
    class_name: str = None


def blob_rows(model, blob_shapes=None):
    """Each blob with its shape and the layer that writes it, in the order the shapes were recorded."""
    shapes = model.blob_shapes if blob_shapes is None else blob_shapes
    producers = layer_producers(model)
    rows = []
    for blob, shape in shapes.items():
        info = producers.get(blob)
        rows.append(BlobRow(blob, tuple(shape), info.name if info else None, info.kind if info else "input",
                            info.class_name if info else None))
    return rows
