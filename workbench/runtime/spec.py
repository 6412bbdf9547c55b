"""Read a Core ML model: the protobuf, its features, weights in every WeightParams form, custom parameters.

Model files are data: nothing here imports, evaluates or unpickles anything named in a file.
"""
import os

import numpy as np
from google.protobuf.message import DecodeError

from ..errors import ModelFormatError
from . import _proto

NEURAL_NETWORK_TYPES = ("neuralNetwork", "neuralNetworkClassifier", "neuralNetworkRegressor")


def read_spec(source):
    """Return ``(spec, name, path)`` for a path, bytes, a Model spec or a coremltools MLModel."""
    Model = _proto.Model_pb2.Model
    if isinstance(source, Model):
        return source, "<spec>", None
    if hasattr(source, "get_spec") and callable(source.get_spec):      # coremltools MLModel
        return source.get_spec(), "<MLModel>", None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _parse(bytes(source), "<bytes>"), "<bytes>", None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            raise ModelFormatError(f"{path}: is a directory; .mlpackage (ML Program) models cannot hold "
                                   f"custom layers and are not run by this runtime: give a .mlmodel file")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ModelFormatError(f"{path}: cannot read the model file ({e.strerror})") from None
        return _parse(data, path), os.path.basename(path), path
    raise ModelFormatError(f"cannot load a model from {type(source).__name__}: give a .mlmodel path, "
                           f"bytes, a Model_pb2.Model spec or a coremltools MLModel")


def _parse(data, name):
    if not data:
        raise ModelFormatError(f"{name}: the file is empty")
    spec = _proto.Model_pb2.Model()
    try:
        spec.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        if any(w in str(e) for w in ("MaxDepth", "levels of nesting", "recursion")):
            raise ModelFormatError(f"{name}: the protobuf nests messages deeper than protobuf's recursion "
                                   f"limit (100 levels: about 30 loop/branch networks inside each other), "
                                   f"so neither protobuf nor Core ML reads it ({e})") from None
        raise ModelFormatError(f"{name}: not a Core ML model (the protobuf does not parse: {e}); "
                               f"the file may be truncated or of another format") from None
    if spec.specificationVersion == 0 or spec.WhichOneof("Type") is None:
        raise ModelFormatError(f"{name}: not a Core ML model (no specification version or model type "
                               f"in the protobuf)")
    return spec


# ---------------------------------------------------------------- weights

def decode_weights(w, where="weights", count=None, channels_axis_size=None):
    """Decode a WeightParams message to a read-only float32 1-D array.

    Handles floatValue, float16Value, rawValue with linear or lookup-table quantization of
    1..8 bits (bits packed most significant first, as coremltools writes them), and
    int8RawValue (scale only). ``count``, when known, is the number of weights the layer needs;
    a mismatch is a ModelFormatError naming ``where``.
    """
    q = w.quantization if w.HasField("quantization") else None
    if len(w.floatValue):
        out = np.asarray(w.floatValue, dtype=np.float32)
    elif len(w.float16Value):
        if len(w.float16Value) % 2:
            raise ModelFormatError(f"{where}: float16Value has an odd number of bytes")
        out = np.frombuffer(w.float16Value, dtype="<f2").astype(np.float32)
    elif len(w.int8RawValue):
        raw = np.frombuffer(w.int8RawValue, dtype=np.int8).astype(np.float32)
        scale = _linear_params(q, where)[0] if q is not None else np.ones(1, np.float32)
        out = _per_channel(raw, scale, np.zeros(1, np.float32), where)
    elif len(w.rawValue):
        if q is None or q.WhichOneof("QuantizationType") is None:
            raise ModelFormatError(f"{where}: rawValue without quantization parameters")
        bits = int(q.numberOfBits)
        if not 1 <= bits <= 8:
            raise ModelFormatError(f"{where}: quantization numberOfBits={bits}, must be 1..8")
        n = count if count is not None else (len(w.rawValue) * 8) // bits
        codes = unpack_bits(w.rawValue, bits, n, where)
        if q.WhichOneof("QuantizationType") == "lookupTableQuantization":
            lut = np.asarray(q.lookupTableQuantization.floatValue, dtype=np.float32)
            if len(lut) != 2 ** bits:
                raise ModelFormatError(f"{where}: lookup table has {len(lut)} entries, "
                                       f"{bits}-bit quantization needs {2 ** bits}")
            out = lut[codes]
        else:
            scale, bias = _linear_params(q, where)
            out = _per_channel(codes.astype(np.float32), scale, bias, where)
    else:
        out = np.zeros(0, dtype=np.float32)
    if count is not None and out.size != count:
        raise ModelFormatError(f"{where}: has {out.size} values, the layer needs {count}")
    out = np.ascontiguousarray(out, dtype=np.float32)
    out.flags.writeable = False
    return out


def unpack_bits(raw, bits, count, where="weights"):
    data = np.frombuffer(raw, dtype=np.uint8)
    if bits == 8:
        codes = data
    else:
        if len(data) * 8 < count * bits:
            raise ModelFormatError(f"{where}: rawValue holds {len(data) * 8 // bits} {bits}-bit values, "
                                   f"the layer needs {count}")
        b = np.unpackbits(data, bitorder="big")[: count * bits].reshape(count, bits)
        codes = b.dot(1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    if len(codes) < count:
        raise ModelFormatError(f"{where}: rawValue holds {len(codes)} values, the layer needs {count}")
    return np.asarray(codes[:count], dtype=np.int64)


def _linear_params(q, where):
    lin = q.linearQuantization
    scale = np.asarray(lin.scale, dtype=np.float32)
    bias = np.asarray(lin.bias, dtype=np.float32) if len(lin.bias) else np.zeros(1, np.float32)
    if scale.size == 0:
        raise ModelFormatError(f"{where}: linear quantization without a scale")
    return scale, bias


def _per_channel(values, scale, bias, where):
    """Apply per-output-channel scale/bias: channels are the leading axis of the weights."""
    channels = max(scale.size, bias.size)
    if channels == 1:
        return values * scale[0] + bias[0]
    if values.size % channels:
        raise ModelFormatError(f"{where}: {values.size} quantized values do not split into "
                               f"{channels} channels")
    scale = np.broadcast_to(scale, (channels,)) if scale.size == 1 else scale
    bias = np.broadcast_to(bias, (channels,)) if bias.size == 1 else bias
    v = values.reshape(channels, -1)
    return (v * scale[:, None] + bias[:, None]).reshape(-1)


# ---------------------------------------------------------------- custom layer parameters

def custom_parameters(params):
    """CustomLayerParams.parameters as a plain dict of str -> float | int | bool | str."""
    out = {}
    for key in sorted(params.parameters):
        value = params.parameters[key]
        which = value.WhichOneof("value")
        if which is None:
            out[key] = None
        else:
            out[key] = getattr(value, which)
    return out


def custom_parameter_types(params):
    """The protobuf type of each custom parameter (doubleValue, intValue, ...), for inspectors and export."""
    return {key: params.parameters[key].WhichOneof("value") for key in sorted(params.parameters)}


# ---------------------------------------------------------------- features

def feature_kind(feature):
    return feature.type.WhichOneof("Type")


def array_shape(feature):
    """Default shape of a multiArray feature (the first enumerated or the lower bounds when flexible)."""
    t = feature.type.multiArrayType
    if len(t.shape):
        return tuple(int(s) for s in t.shape)
    which = t.WhichOneof("ShapeFlexibility")
    if which == "enumeratedShapes" and len(t.enumeratedShapes.shapes):
        return tuple(int(s) for s in t.enumeratedShapes.shapes[0].shape)
    if which == "shapeRange":
        return tuple(int(r.lowerBound) for r in t.shapeRange.sizeRanges)
    return None


def image_size(feature):
    """(width, height) of an image feature's default size."""
    t = feature.type.imageType
    if t.width and t.height:
        return int(t.width), int(t.height)
    which = t.WhichOneof("SizeFlexibility")
    if which == "enumeratedSizes" and len(t.enumeratedSizes.sizes):
        s = t.enumeratedSizes.sizes[0]
        return int(s.width), int(s.height)
    if which == "imageSizeRange":
        r = t.imageSizeRange
        return int(r.widthRange.lowerBound), int(r.heightRange.lowerBound)
    return None


def describe_type(feature):
    """One short human description of a feature's type, e.g. 'MultiArray float32 (3, 224, 224)'."""
    kind = feature_kind(feature)
    t = feature.type
    if kind == "multiArrayType":
        dtype = _proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(t.multiArrayType.dataType)
        shape = array_shape(feature)
        return f"MultiArray {dtype.lower()} {shape if shape else '(any shape)'}"
    if kind == "imageType":
        space = _proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(t.imageType.colorSpace)
        size = image_size(feature)
        return f"Image {space} {size[0]}x{size[1]}" if size else f"Image {space}"
    if kind == "dictionaryType":
        return f"Dictionary ({t.dictionaryType.WhichOneof('KeyType')} -> double)"
    return {"int64Type": "Int64", "doubleType": "Double", "stringType": "String"}.get(kind, str(kind))
