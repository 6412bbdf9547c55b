"""Model inputs and outputs: user values -> network blobs (with image preprocessing), blobs -> answers.

This is where Core ML's feature semantics live: rank-5 mapping of arrays and images,
image scaler and mean-image preprocessing, colour spaces, image outputs, classifier answers.
"""
import numpy as np

from ..errors import InputError, ModelFormatError
from . import spec as specmod

GRAYSCALE, RGB, BGR, GRAYSCALE_FLOAT16 = 10, 20, 30, 40          # ImageFeatureType.ColorSpace
_DTYPES = {65568: np.float32, 65600: np.float64, 131104: np.int32, 65552: np.float16}   # ArrayDataType


class FeatureIO:
    """Converts predict's inputs to blobs and final blobs to predict's answer, for one model."""

    def __init__(self, spec, nn, kind, rank5, model_name):
        self.spec, self.nn, self.kind, self.rank5, self.model_name = spec, nn, kind, rank5, model_name
        self.inputs = list(spec.description.input)
        self.outputs = list(spec.description.output)
        self.rank4_images = nn.imageInputShapeMapping == 1
        self.preprocessing = self._preprocessing()

    # ------------------------------------------------------------ inputs
    def _preprocessing(self):
        images = [f.name for f in self.inputs if specmod.feature_kind(f) == "imageType"]
        out = {}
        for p in self.nn.preprocessing:
            name = p.featureName or (images[0] if len(images) == 1 else "")
            if name not in images:
                raise ModelFormatError(f"{self.model_name}: preprocessing names feature '{p.featureName}', "
                                       f"which is not an image input")
            if name in out:
                raise ModelFormatError(f"{self.model_name}: image input '{name}' has two preprocessing "
                                       f"entries; Core ML takes one (a scaler or a mean image) per image")
            out[name] = p
        return out

    def default_inputs(self, limits=None):
        """Zero-valued inputs of each feature's default shape (for the load-time shape pass).

        The shapes come from the file, so they are checked against ``limits`` before allocating.
        """
        from .limits import check_shape
        out = {}
        for f in self.inputs:
            kind = specmod.feature_kind(f)
            where = f"input '{f.name}'"
            if kind == "multiArrayType":
                shape = specmod.array_shape(f)
                if shape is None:
                    return None
                out[f.name] = np.zeros(check_shape(limits, self.model_name, where, shape, "default"), np.float32)
            elif kind == "imageType":
                size = specmod.image_size(f)
                if size is None:
                    return None
                shape = (self._image_channels(f), size[1], size[0])
                out[f.name] = np.zeros(check_shape(limits, self.model_name, where, shape, "default"), np.float32)
            elif kind in ("int64Type", "doubleType"):
                out[f.name] = np.zeros((1,), np.float32)
            else:
                return None
        return out

    def to_blobs(self, values, raw_images=False, copy=True):
        """Map predict's inputs to network blobs; ``raw_images`` accepts [C,H,W] arrays for images.
        ``copy=False`` only for arrays the caller made for this (the load-time shape pass's zeros,
        which stay untouched lazy pages when no layer computes on them)."""
        if not isinstance(values, dict):
            raise InputError(f"{self.model_name}: predict takes a dict of input name -> value, "
                             f"got {type(values).__name__}")
        names = {f.name for f in self.inputs}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"{self.model_name}: unknown input(s) {', '.join(unknown)}; "
                             f"the model's inputs are {', '.join(sorted(names))}")
        blobs = {}
        for f in self.inputs:
            if f.name not in values:
                if f.type.isOptional:
                    continue
                raise InputError(f"{self.model_name}: missing input '{f.name}' ({specmod.describe_type(f)})")
            kind = specmod.feature_kind(f)
            if kind == "imageType":
                blobs[f.name] = self._image_blob(f, values[f.name], raw_images)
            elif kind == "multiArrayType":
                blobs[f.name] = self._array_blob(f, values[f.name], copy)
            elif kind in ("int64Type", "doubleType"):
                blobs[f.name] = self._array_blob(f, np.asarray(values[f.name], np.float32).reshape(1))
            else:
                raise InputError(f"{self.model_name}: input '{f.name}' of type {kind} cannot feed a neural network")
        return blobs

    def _array_blob(self, f, value, copy=True):
        try:
            # a copy: no layer can reach the caller's array
            arr = np.array(value, dtype=np.float32) if copy else np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InputError(f"{self.model_name}: input '{f.name}' is not numeric: {e}") from None
        declared = specmod.array_shape(f)
        check_array_shape(self.model_name, f, arr.shape, self.rank5)
        if not self.rank5:
            return np.ascontiguousarray(arr)
        rank = len(declared) if declared else arr.ndim
        if arr.ndim == 5:
            return np.ascontiguousarray(arr)
        if arr.ndim == rank == 1:
            return arr.reshape(1, 1, arr.shape[0], 1, 1)
        if arr.ndim == rank == 3:
            return arr.reshape((1, 1) + arr.shape)
        raise InputError(f"{self.model_name}: input '{f.name}' has shape {arr.shape}; this rank-5 model "
                         f"takes [C], [C, H, W] or [Seq, Batch, C, H, W] arrays (declared {declared})")

    def _image_channels(self, f):
        return 1 if f.type.imageType.colorSpace in (GRAYSCALE, GRAYSCALE_FLOAT16) else 3

    def _image_blob(self, f, value, raw):
        space = f.type.imageType.colorSpace
        channels = self._image_channels(f)
        if hasattr(value, "convert") and hasattr(value, "size"):        # PIL image
            check_image_size(self.model_name, f, value.size)
            mode = "F" if space == GRAYSCALE_FLOAT16 else "L" if channels == 1 else "RGB"
            try:
                img = value.convert(mode)
            except OSError as e:                                      # PIL decodes lazily
                raise InputError(f"{self.model_name}: image input '{f.name}' cannot be decoded: {e}") from None
            arr = np.asarray(img, dtype=np.float32)
            arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
            if space == BGR:
                arr = arr[::-1]
        elif raw:
            arr = np.asarray(value, dtype=np.float32)
            if arr.ndim != 3 or arr.shape[0] != channels:
                raise InputError(f"{self.model_name}: image input '{f.name}' as an array must be "
                                 f"[{channels}, H, W], got {arr.shape}")
        else:
            raise InputError(f"{self.model_name}: input '{f.name}' is an image: pass a PIL.Image "
                             f"(got {type(value).__name__})")
        arr = self._preprocess(f.name, np.ascontiguousarray(arr), space)
        if self.rank5 or not self.rank4_images:
            return arr[None, None]
        return arr[None]

    def _preprocess(self, name, arr, space):
        p = self.preprocessing.get(name)
        if p is None:
            return arr
        which = p.WhichOneof("preprocessor")
        if which == "scaler":
            s = p.scaler
            if arr.shape[0] == 1:
                bias = np.array([s.grayBias], np.float32)
            elif space == BGR:
                bias = np.array([s.blueBias, s.greenBias, s.redBias], np.float32)
            else:
                bias = np.array([s.redBias, s.greenBias, s.blueBias], np.float32)
            scale = s.channelScale if s.channelScale != 0 else 1.0
            return arr * np.float32(scale) + bias[:, None, None]
        if which == "meanImage":
            mean = np.asarray(p.meanImage.meanImage, np.float32)
            if mean.size != arr.size:
                raise ModelFormatError(f"{self.model_name}: mean image of '{name}' has {mean.size} values, "
                                       f"the image has {arr.size}")
            return arr - mean.reshape(arr.shape)
        return arr

    # ------------------------------------------------------------ outputs
    def answer(self, scope, output_blob_for):
        """predict's answer: one value per output feature, as coremltools' MLModel.predict gives it."""
        result = {}
        for f in self.outputs:
            kind = specmod.feature_kind(f)
            if self.kind == "neuralNetworkClassifier" and f.name in self._classifier_names():
                continue
            arr = scope[output_blob_for(f.name)]
            if kind == "imageType":
                result[f.name] = self._image_out(f, arr)
            elif kind == "multiArrayType":
                result[f.name] = self._array_out(f, arr)
            elif kind in ("doubleType", "int64Type"):
                result[f.name] = float(arr.reshape(-1)[0]) if kind == "doubleType" else int(arr.reshape(-1)[0])
            else:                        # a copy: the blob's array is reused by the next prediction
                result[f.name] = np.array(arr)
        if self.kind == "neuralNetworkClassifier":
            result.update(self._classify(scope, output_blob_for))
        return result

    def _array_out(self, f, arr):
        declared = specmod.array_shape(f)
        dtype = _DTYPES.get(f.type.multiArrayType.dataType, np.float32)
        if self.rank5 and declared and int(np.prod(declared)) == arr.size:
            arr = arr.reshape(declared)
        elif self.rank5 and arr.ndim == 5 and arr.shape[0] == arr.shape[1] == 1:
            arr = arr.reshape(arr.shape[2:])
        return np.array(arr, dtype=dtype)

    def _image_out(self, f, arr):
        from PIL import Image
        chw = arr.reshape(arr.shape[-3:])
        if f.type.imageType.colorSpace == GRAYSCALE_FLOAT16:      # a float image: no clipping, no rounding
            return Image.fromarray(np.ascontiguousarray(chw[0], dtype=np.float32), mode="F")
        pixels = np.clip(np.rint(chw), 0, 255).astype(np.uint8)
        if pixels.shape[0] == 1:
            return Image.fromarray(pixels[0], mode="L")
        if f.type.imageType.colorSpace == BGR:
            pixels = pixels[::-1]
        return Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), mode="RGB")

    def _classifier_names(self):
        d = self.spec.description
        return {d.predictedFeatureName, d.predictedProbabilitiesName} - {""}

    def class_labels(self):
        c = self.nn
        which = c.WhichOneof("ClassLabels")
        if which == "stringClassLabels":
            return list(c.stringClassLabels.vector)
        if which == "int64ClassLabels":
            return [int(v) for v in c.int64ClassLabels.vector]
        raise ModelFormatError(f"{self.model_name}: classifier without class labels")

    def probability_blob(self, last_output):
        return self.nn.labelProbabilityLayerName or last_output

    def _classify(self, scope, output_blob_for):
        labels = self.class_labels()
        probs = scope[output_blob_for(None)].reshape(-1).astype(np.float64)
        if probs.size != len(labels):
            raise ModelFormatError(f"{self.model_name}: the probability blob has {probs.size} values for "
                                   f"{len(labels)} class labels")
        d = self.spec.description
        out = {}
        if d.predictedFeatureName:
            out[d.predictedFeatureName] = labels[int(np.argmax(probs))]
        if d.predictedProbabilitiesName:
            out[d.predictedProbabilitiesName] = {label: float(p) for label, p in zip(labels, probs)}
        return out


def check_array_shape(model_name, f, shape, rank5=False):
    """Raise InputError when ``shape`` is not one the feature allows (fixed, enumerated or ranged).

    An exact-rank model takes arrays of exactly the declared rank. A rank-5 model also takes
    [Seq, Batch, C, H, W] arrays whose [C, H, W] is the declared shape ([C, 1, 1] for a declared [C]).
    """
    t = f.type.multiArrayType
    which = t.WhichOneof("ShapeFlexibility")
    shape = tuple(int(d) for d in shape)
    allowed = None
    if which == "enumeratedShapes":
        options = [tuple(int(d) for d in s.shape) for s in t.enumeratedShapes.shapes]
        if not any(_declared_part(shape, len(o), rank5) == o for o in options):
            allowed = "one of " + ", ".join(str(o) for o in options)
    elif which == "shapeRange":
        ranges = [(int(r.lowerBound), int(r.upperBound)) for r in t.shapeRange.sizeRanges]
        core = _declared_part(shape, len(ranges), rank5)
        if core is None or len(core) != len(ranges) or any(
                d < lo or (hi >= 0 and d > hi) for d, (lo, hi) in zip(core, ranges)):
            allowed = (f"{len(ranges)}-D shapes with sizes within "
                       + " x ".join(f"[{lo}, {'unbounded' if hi < 0 else hi}]" for lo, hi in ranges))
            if rank5:
                allowed += " (or [Seq, Batch, C, H, W] arrays holding one)"
    elif len(t.shape):
        declared = tuple(int(d) for d in t.shape)
        if _declared_part(shape, len(declared), rank5) != declared:
            allowed = str(declared) + (" (or [Seq, Batch, C, H, W] arrays holding one)" if rank5 else "")
    if allowed:
        raise InputError(f"{model_name}: input '{f.name}' has shape {shape}; the model allows {allowed}")


def _declared_part(shape, rank, rank5):
    """The part of ``shape`` that must match a declared shape of ``rank`` dimensions.

    A rank-5 model maps a declared [C, H, W] to the last three axes of a 5-D array, and a declared
    [C] to [C, 1, 1]; None when a 5-D array cannot hold a shape of that rank.
    """
    if rank5 and len(shape) == 5 and rank in (1, 3):
        if rank == 3:
            return shape[2:]
        return shape[2:3] if shape[3:] == (1, 1) else None
    return shape


def check_image_size(model_name, f, size):
    """Raise InputError when a (width, height) is not one the image feature allows."""
    t = f.type.imageType
    which = t.WhichOneof("SizeFlexibility")
    w, h = size
    if which == "enumeratedSizes":
        options = [(s.width, s.height) for s in t.enumeratedSizes.sizes]
        if (w, h) not in options:
            raise InputError(f"{model_name}: image '{f.name}' is {w}x{h}; the model allows "
                             + ", ".join(f"{a}x{b}" for a, b in options))
    elif which == "imageSizeRange":
        r = t.imageSizeRange
        if not (_within(w, r.widthRange) and _within(h, r.heightRange)):
            raise InputError(f"{model_name}: image '{f.name}' is {w}x{h}, outside the model's size range: "
                             f"width {_describe_range(r.widthRange)}, height {_describe_range(r.heightRange)}")
    elif (t.width, t.height) != (w, h):
        raise InputError(f"{model_name}: image '{f.name}' is {w}x{h}; the model takes {t.width}x{t.height} "
                         f"(resize it first)")


def _within(value, size_range):
    """SizeRange: lowerBound <= value, and value <= upperBound unless upperBound is negative (unbounded)."""
    return size_range.lowerBound <= value and (size_range.upperBound < 0 or value <= size_range.upperBound)


def _describe_range(size_range):
    upper = "unbounded" if size_range.upperBound < 0 else size_range.upperBound
    return f"[{size_range.lowerBound}, {upper}]"
