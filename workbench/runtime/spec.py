"""Read a Core ML model: the protobuf, its features, weights in every WeightParams form, custom parameters.

Model files are data: nothing here imports, evaluates or unpickles anything named in a file.
"""
import os

import numpy as np
from google.protobuf.message import DecodeError

from ..errors import ModelFormatError
from . import _proto, _wire

NEURAL_NETWORK_TYPES = ("neuralNetwork", "neuralNetworkClassifier", "neuralNetworkRegressor")


def read_spec(source):
    """Return ``(spec, name, path)`` for a path, bytes, a Model spec or a coremltools MLModel."""
    spec, name, path, data = _read(source)
    return (spec if data is None else _parse(data, name)), name, path


def open_model(source):
    """``(structure, name, path, payloads, whole)`` for ``wb.load``: what planning needs, fast.

    From a path or bytes, ``structure`` is the spec without its weight payloads, ``payloads``
    reads them as views of the file's bytes (see _wire.py) and ``whole()`` parses the whole spec
    when something asks for it. From a spec, an MLModel, or a file the split does not handle,
    ``structure`` is the whole spec and ``payloads`` and ``whole`` are None.
    """
    spec, name, path, data = _read(source)
    if data is None:
        return spec, name, path, None, None
    split = _wire.split_weights(data, _proto.Model_pb2.Model.DESCRIPTOR)
    if split is not None:
        structure, table = split
        try:
            parsed = _parse(structure, name)
        except ModelFormatError:
            parsed = None                         # the whole file's parse names the fault
        if parsed is not None:
            payloads = _wire.Payloads(data, table)
            return parsed, name, path, payloads, WholeSpec(payloads.original, name)
    return _parse(data, name), name, path, None, None


class WholeSpecMixin:
    """``spec`` is the whole Model_pb2.Model; a model planned from its structure alone (weights
    cut out, see _wire.py) parses it at its first use, which predict never needs."""

    def _hold_spec(self, structure, payloads=None, whole=None):
        self._structure, self._payloads, self._whole = structure, payloads, whole
        self._spec = structure if whole is None else None

    @property
    def spec(self):
        if self._spec is None:
            self._spec = self._whole()
        return self._spec

    @spec.setter
    def spec(self, value):              # an attribute before: assigning it stays possible
        self._spec, self._whole = value, None


class WholeSpec:
    """The whole spec of a model planned from its structure: the file (``read()`` gives its
    bytes) parsed in full at the first call, once, shared with a pipeline's stages (``stage``)."""

    def __init__(self, read, name):
        self.read, self.name, self._spec = read, name, None

    def __call__(self):
        if self._spec is None:
            self._spec = _parse(self.read(), self.name)
        return self._spec

    def stage(self, index):
        return _StageSpec(self, index)


class _StageSpec:
    def __init__(self, pipeline, index):
        self.pipeline, self.index = pipeline, index

    def __call__(self):
        from .pipeline import pipeline_message
        return pipeline_message(self.pipeline()).models[self.index]

    def stage(self, index):
        return _StageSpec(self, index)


def _read(source):
    """``(spec, name, path, None)`` for a spec or an MLModel, ``(None, name, path, bytes)`` for a
    path or bytes."""
    Model = _proto.Model_pb2.Model
    if isinstance(source, Model):
        return source, "<spec>", None, None
    if hasattr(source, "get_spec") and callable(source.get_spec):      # coremltools MLModel
        return source.get_spec(), "<MLModel>", None, None
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ModelFormatError("<bytes>: the file is empty")
        if isinstance(source, memoryview) and not source.c_contiguous:
            source = source.tobytes()
        # a copy: the caller's bytes stay theirs, and the loader aligns weights inside its buffer
        return None, "<bytes>", None, np.frombuffer(source, np.uint8).copy()
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            raise ModelFormatError(f"{path}: is a directory; .mlpackage (ML Program) models cannot hold "
                                   f"custom layers and are not run by this runtime: give a .mlmodel file")
        try:
            with open(path, "rb") as f:
                data = _read_file(f)
        except OSError as e:
            raise ModelFormatError(f"{path}: cannot read the model file ({e.strerror})") from None
        if not len(data):
            raise ModelFormatError(f"{path}: the file is empty")
        return None, os.path.basename(path), path, data
    raise ModelFormatError(f"cannot load a model from {type(source).__name__}: give a .mlmodel path, "
                           f"bytes, a Model_pb2.Model spec or a coremltools MLModel")


def _read_file(f):
    """A file's bytes as a numpy buffer. Why not ``f.read()``: the buffer outlives the load
    (weights are views of it, aligned in place, see _wire.py), and numpy asks the kernel for
    huge pages for a large one, so a 45 MB model is paged in with tens of faults, not 11,000."""
    data = np.empty(os.fstat(f.fileno()).st_size, np.uint8)
    got = f.readinto(data)
    rest = f.read()                               # a file that grew or shrank since fstat
    if rest or got < len(data):                   # a new array: the buffer must own its memory, or
        data = np.concatenate([data[:got], np.frombuffer(rest, np.uint8)])   # views of it can be made
    return data                                   # writable again through the base


def _parse(data, name):
    if not len(data):
        raise ModelFormatError(f"{name}: the file is empty")
    spec = _proto.Model_pb2.Model()
    try:
        spec.ParseFromString(memoryview(data))
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

def decode_weights(w, where="weights", count=None, payloads=None):
    """Decode a WeightParams message to a read-only float32 1-D array.

    Handles floatValue, float16Value, rawValue with linear or lookup-table quantization of
    1..8 bits (bits packed most significant first, as coremltools writes them), and
    int8RawValue (scale only). ``count``, when known, is the number of weights the layer needs;
    a mismatch is a ModelFormatError naming ``where``. ``payloads`` (a model loaded from a file)
    holds the values cut from the structure the model was planned from.
    """
    q = w.quantization if w.HasField("quantization") else None
    float_value, float16_value, int8_value, raw_value = _storage(w, payloads)
    if len(float_value):
        out = np.asarray(float_value, dtype=np.float32)
    elif len(float16_value):
        if len(float16_value) % 2:
            raise ModelFormatError(f"{where}: float16Value has an odd number of bytes")
        out = np.frombuffer(float16_value, dtype="<f2").astype(np.float32)
    elif len(int8_value):
        raw = np.frombuffer(int8_value, dtype=np.int8).astype(np.float32)
        scale = _linear_params(q, where)[0] if q is not None else np.ones(1, np.float32)
        out = _per_channel(raw, scale, np.zeros(1, np.float32), where)
    elif len(raw_value):
        if q is None or q.WhichOneof("QuantizationType") is None:
            raise ModelFormatError(f"{where}: rawValue without quantization parameters")
        bits = int(q.numberOfBits)
        if not 1 <= bits <= 8:
            raise ModelFormatError(f"{where}: quantization numberOfBits={bits}, must be 1..8")
        n = count if count is not None else (len(raw_value) * 8) // bits
        codes = unpack_bits(raw_value, bits, n, where)
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


def has_weights(w, payloads=None):
    """Whether a WeightParams holds any values (an empty one means "absent" to some layers)."""
    return any(len(v) for v in _storage(w, payloads))


_STORAGE = ("floatValue", "float16Value", "int8RawValue", "rawValue")


def _storage(w, payloads):
    """(floatValue, float16Value, int8RawValue, rawValue), a payload cut from the file in its place."""
    found = payloads.find(w) if payloads is not None else None
    if not found:
        return [w.floatValue, w.float16Value, w.int8RawValue, w.rawValue]
    return [found[name] if name in found else getattr(w, name) for name in _STORAGE]


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
