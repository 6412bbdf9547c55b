"""CustomLayer: the Python form of Apple's MLCustomLayer protocol, and the guards around its calls.

The runtime calls a layer exactly as Core ML does: ``__init__(parameters)`` and
``set_weight_data(weights)`` once at load, ``output_shapes(input_shapes)`` at load and whenever
input shapes change, ``evaluate(inputs, outputs)`` on each prediction with preallocated outputs.
Every call goes through ``call_guarded`` so a failure names the model, layer, className and method.
"""
import os
import sysconfig

import numpy as np

from ..errors import LayerError


class CustomLayer:
    """Base class for custom layer implementations; the class name is the className it implements.

    Override ``output_shapes`` when the layer changes shapes and ``evaluate`` always.
    ``encode`` (Core ML's GPU path) is optional: the runtime, like Core ML, falls back to
    ``evaluate`` when it is absent.
    """

    class_name = None     # set by @custom_layer("Name"); otherwise the Python class name is used

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__module__ == "__main__":          # defined in a notebook or script: found by wb.load
            from .registry import register_global
            register_global(cls)

    def __init__(self, parameters):
        self.parameters = dict(parameters)

    def set_weight_data(self, weights):
        self.weights = list(weights)

    def output_shapes(self, input_shapes):
        """Default: one output per input, of the same shape. Override for any other layer."""
        return [tuple(s) for s in input_shapes]

    def evaluate(self, inputs, outputs):
        raise NotImplementedError(f"{type(self).__name__}.evaluate is not implemented")


def class_name_of(cls):
    """The Core ML className a Python class implements.

    Read from the class itself, not inherited: a subclass of ``@custom_layer("Swish")`` (say, a
    debugging variant) implements its own name unless it is decorated too.
    """
    return cls.__dict__.get("class_name") or cls.__name__


def custom_layer(class_name=None):
    """Decorator naming the className a class implements: ``@wb.custom_layer("Swish")``.

    The class need not inherit from CustomLayer, as long as it has the protocol's methods.
    Used bare (``@wb.custom_layer``) it takes the class's own name.
    """
    def mark(cls):
        cls.class_name = class_name if isinstance(class_name, str) else cls.__name__
        cls.__workbench_custom_layer__ = True
        if not cls.__module__.startswith("workbench_layers."):   # layer files serve only their model
            from .registry import register_global
            register_global(cls)
        return cls
    if isinstance(class_name, type):
        cls, class_name = class_name, None
        return mark(cls)
    return mark


REQUIRED_METHODS = ("evaluate",)


def is_implementation(obj):
    """True for classes the registry should pick up from a module or file."""
    if not isinstance(obj, type):
        return False
    if obj is CustomLayer:
        return False
    if obj.__dict__.get("__workbench_custom_layer__", False):
        return True
    return issubclass(obj, CustomLayer)


class LayerGuard:
    """Calls one custom layer instance's methods, turning every failure into a LayerError."""

    def __init__(self, model_name, layer_name, class_name):
        self.model_name, self.layer_name, self.class_name = model_name, layer_name, class_name

    def error(self, method, message):
        return LayerError(self.model_name, self.layer_name, message, self.class_name, method)

    def call(self, method, fn, *args):
        try:
            return fn(*args)
        except LayerError:
            raise
        except KeyboardInterrupt:
            raise
        except Exception as e:
            raise self.error(method, f"{type(e).__name__}: {e}{_user_line(e)}") from e

    def call_method(self, method, instance, *args):
        """``instance.method(*args)``, guarded; a missing method is named like any other failure."""
        def bound(*a):
            return getattr(instance, method)(*a)
        return self.call(method, bound, *args)

    def check_shapes(self, shapes, n_outputs):
        """Validate what output_shapes returned: one tuple of positive ints per output."""
        if shapes is None:
            raise self.error("output_shapes", "returned None; it must return a list with one shape per output")
        try:
            shapes = [tuple(_dimension(d) for d in s) for s in shapes]
        except (TypeError, ValueError, OverflowError):
            raise self.error("output_shapes", f"returned {shapes!r}; it must return a list of shapes "
                             f"(tuples of ints), one per output") from None
        if len(shapes) != n_outputs:
            raise self.error("output_shapes", f"returned {len(shapes)} shape(s) for {n_outputs} output(s)")
        for s in shapes:
            if any(d < 0 for d in s):
                raise self.error("output_shapes", f"returned a negative dimension in {s}")
        return shapes

    def check_outputs(self, outputs, shapes):
        """After evaluate: outputs must still be float32 arrays of the declared shapes."""
        for i, (out, shape) in enumerate(zip(outputs, shapes)):
            if not isinstance(out, np.ndarray):
                raise self.error("evaluate", f"outputs[{i}] was replaced by a {type(out).__name__}; "
                                 f"fill the preallocated arrays in place (outputs[{i}][...] = ...)")
            if tuple(out.shape) != tuple(shape):
                raise self.error("evaluate", f"outputs[{i}] has shape {tuple(out.shape)}, but output_shapes "
                                 f"declared {tuple(shape)}")
            if out.dtype != np.float32:
                raise self.error("evaluate", f"outputs[{i}] has dtype {out.dtype}, must stay float32")


def _dimension(d):
    """An int dimension; 3.0 is taken, 2.5, '3' or True are refused (a bug in output_shapes)."""
    if isinstance(d, (bool, np.bool_, str, bytes)) or int(d) != d:
        raise ValueError(d)
    return int(d)


_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
# numpy, torch and the standard library are never "the user's line", even when they raise
_LIBRARY_DIRS = tuple(sorted({os.path.abspath(p) + os.sep for key in ("stdlib", "platstdlib", "purelib", "platlib")
                              if (p := sysconfig.get_paths().get(key))}))


def _user_line(exc):
    """' (at file:line)' for the innermost traceback frame in the user's code.

    That is the innermost frame outside the runtime and outside installed libraries; failing
    that, the innermost frame outside the runtime.
    """
    tb, user, outside = exc.__traceback__, None, None
    while tb is not None:
        filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if not filename.startswith(_RUNTIME_DIR + os.sep):
            outside = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
            if not filename.startswith(_LIBRARY_DIRS):
                user = outside
        tb = tb.tb_next
    where = user or outside
    return f" (at {where})" if where else ""
