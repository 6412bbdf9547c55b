"""The package's own exception types: every failure a user can cause ends in one of these.

Each message names the model file, the layer and (for custom layers) the className and the
method at fault, so a user never has to read a traceback from inside the runtime.
"""


class WorkbenchError(Exception):
    """Base of every error the workbench raises on purpose."""


class ModelFormatError(WorkbenchError):
    """The model file cannot be read: not protobuf, truncated, not a neural network, inconsistent."""


class UnsupportedLayerError(WorkbenchError):
    """The model uses a layer kind or option the runtime does not run."""


class InputError(WorkbenchError):
    """The inputs given to predict do not match the model's description."""


class MissingImplementationError(WorkbenchError):
    """predict was called on a model whose custom layers lack implementations."""

    def __init__(self, model_name, class_names):
        self.class_names = sorted(set(class_names))
        names = ", ".join(self.class_names)
        super().__init__(
            f"{model_name}: no implementation for custom layer className(s) {names}; "
            f"pass them with wb.load(..., layers=...) or register them with @wb.custom_layer")


class LayerError(WorkbenchError):
    """A layer failed while planning or computing; names the model, layer, className and method."""

    def __init__(self, model_name, layer_name, message, class_name=None, method=None):
        self.model_name = model_name
        self.layer_name = layer_name
        self.class_name = class_name
        self.method = method
        where = f"layer '{layer_name}'"
        if class_name:
            where += f" (custom layer className '{class_name}')"
        if method:
            where += f", in {method}"
        super().__init__(f"{model_name}: {where}: {message}")


class ImplementationError(WorkbenchError):
    """A custom layer implementation file or class cannot be used (syntax error, wrong base, ...)."""


class ResourceLimitError(LayerError):
    """A model needs more than a limit of ``wb.load(..., limits=...)`` allows.

    The limits (workbench/runtime/limits.py) stop a hostile or broken model file from taking all
    memory or time: the check runs before the allocation or the work, and the message names the
    model, the layer (or input) and how to raise the limit. A LayerError, so code catching layer
    failures catches these too.
    """

    def __init__(self, model_name, where, message, limit):
        self.model_name, self.layer_name, self.class_name, self.method = model_name, where, None, None
        self.limit = limit
        WorkbenchError.__init__(
            self, f"{model_name}: {where}: {message}; if the model really needs more, raise the limit "
                  f"with wb.load(..., limits={{'{limit}': N}})")
