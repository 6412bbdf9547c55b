"""Jupyter widgets for one model: ``wb.Workbench(model)`` and its views.

The widgets draw; the runtime and the testing module compute. What each view shows is available
without a widget: ``Session`` (apply an edit, run the cases), and the functions of ``_facts``
re-exported here (``layer_details``, ``weight_tensors``, ``blob_rows``, ``shapes_at``, ...).
"""
from ._app import Workbench  # noqa: F401
from ._editor import CodeEditor, LayerEditor  # noqa: F401
from ._facts import (blob_rows, input_shape_choices, layer_details, layer_rows,  # noqa: F401
                     layers_with_weights, shapes_at, weight_tensors)
from ._graph import GraphView  # noqa: F401
from ._inspector import Inspector  # noqa: F401
from ._session import ApplyResult, Session, skeleton  # noqa: F401
from ._shapes import ShapeView  # noqa: F401
from ._tests import TestRunner  # noqa: F401
from ._weights import WeightView  # noqa: F401

__all__ = ["Workbench", "Session", "ApplyResult", "skeleton", "Inspector", "LayerEditor", "CodeEditor",
           "ShapeView", "WeightView", "TestRunner", "GraphView", "layer_rows", "layer_details",
           "weight_tensors", "layers_with_weights", "input_shape_choices", "shapes_at", "blob_rows"]
