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
    ResourceLimitError,
    UnsupportedLayerError,
    WorkbenchError,
)
from .runtime.model import Model, load  # noqa: F401
from .runtime.protocol import CustomLayer, custom_layer  # noqa: F401
from .convert import ConversionError, CustomOp, convert  # noqa: F401
from .export import ExportError, export_swift  # noqa: F401
from .testing import (  # noqa: F401
    LayerCheck,
    TestCase,
    TestReport,
    check_layer,
    load_cases,
    run_tests,
    save_cases,
)

__version__ = "0.1.0"


def __getattr__(name):
    if name == "Workbench":            # ipywidgets and anywidget load on first use, not on `import workbench`
        from .widgets import Workbench
        return Workbench
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "load", "Model", "CustomLayer", "custom_layer",
    "WorkbenchError", "ModelFormatError", "UnsupportedLayerError", "InputError",
    "MissingImplementationError", "LayerError", "ImplementationError", "ResourceLimitError",
    "convert", "CustomOp", "ConversionError", "export_swift", "ExportError",
    "TestCase", "run_tests", "TestReport", "check_layer", "LayerCheck", "save_cases", "load_cases",
    "Workbench",
]
