"""Resource limits: what a model file may ask of memory and time before the runtime refuses.

A model file is data, and data can be hostile or broken: a shape of 2^40 elements, a loop whose
condition never turns false, networks nested ten thousand levels deep. Each limit is checked
BEFORE the allocation or the work it guards, and its error (ResourceLimitError, or
ModelFormatError for nesting) names the model, the layer or input, and how to raise it:
``wb.load(path, limits={"max_blob_bytes": 8 << 30})``.
"""
import math

from ..errors import ModelFormatError, ResourceLimitError, WorkbenchError

DEFAULT_LIMITS = {
    # bytes of one blob (an input, a layer output, a decoded weight array) as float32
    "max_blob_bytes": 2 << 30,
    # body runs of one loop layer during one prediction
    "max_loop_iterations": 1_000_000,
    # loop/branch bodies inside loop/branch bodies (protobuf itself refuses about 30 levels in a file)
    "max_nesting_depth": 64,
}

FLOAT32_BYTES = 4


def merged(limits):
    """DEFAULT_LIMITS updated with the user's ``limits``; unknown names are refused (typos)."""
    limits = dict(limits or {})
    unknown = sorted(set(limits) - set(DEFAULT_LIMITS))
    if unknown:
        raise WorkbenchError(f"unknown limit(s) {', '.join(unknown)}; the limits are {', '.join(DEFAULT_LIMITS)}")
    return dict(DEFAULT_LIMITS, **limits)


def check_shape(limits, model_name, where, shape, what="output"):
    """Refuse a shape before allocating it: dimensions must be non-negative integers and the
    blob must fit ``max_blob_bytes``. ``where`` names the layer or input ("layer 'up1'")."""
    try:
        dims = tuple(map(int, shape))
    except (TypeError, ValueError, OverflowError):
        raise ModelFormatError(f"{model_name}: {where}: the {what} shape {shape!r} is not a list of "
                               f"integers") from None
    if dims and min(dims) < 0:
        raise ModelFormatError(f"{model_name}: {where}: the {what} shape {dims} has a negative dimension")
    check_bytes(limits, model_name, where, math.prod(dims) * FLOAT32_BYTES, what, dims)
    return dims


def check_bytes(limits, model_name, where, nbytes, what="output", shape=None):
    limit = int((limits or DEFAULT_LIMITS).get("max_blob_bytes", DEFAULT_LIMITS["max_blob_bytes"]))
    if nbytes > limit:
        shown = f" {shape}" if shape is not None else ""
        raise ResourceLimitError(model_name, where, f"the {what}{shown} would take {_size(nbytes)}, more than "
                                 f"the max_blob_bytes limit of {_size(limit)}", "max_blob_bytes")


def _size(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"
