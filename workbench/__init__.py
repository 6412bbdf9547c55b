"""coreml-workbench: inspect, implement, run and test Core ML custom layers in Python, on any OS.

    import workbench as wb
    model = wb.load("Model.mlmodel", layers="layers/")
    model.predict({"input": x})
"""
from .errors import (  # noqa: F401
    ImplementationError,
    InputError,
    LayerError,
    MissingImplementationError,
    ModelFormatError,
    UnsupportedLayerError,
    WorkbenchError,
)
from .runtime.model import Model, load  # noqa: F401
from .runtime.protocol import CustomLayer, custom_layer  # noqa: F401

__version__ = "0.1.0"

__all__ = [
    "load", "Model", "CustomLayer", "custom_layer",
    "WorkbenchError", "ModelFormatError", "UnsupportedLayerError", "InputError",
    "MissingImplementationError", "LayerError", "ImplementationError",
]
