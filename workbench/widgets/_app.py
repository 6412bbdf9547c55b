"""Workbench: the inspector, editor, shapes, weights, tests and graph in tabs, sharing one model."""
import ipywidgets as W

from ..testing import as_cases
from ._common import ErrorArea
from ._editor import LayerEditor
from ._graph import GraphView
from ._inspector import Inspector
from ._session import Session
from ._shapes import ShapeView
from ._tests import TestRunner
from ._weights import WeightView

TITLES = ("Inspector", "Editor", "Shapes", "Weights", "Tests", "Graph")


def _default_cases(model):
    """The bundled example's cases when the model is the bundled example, else none."""
    from .. import examples
    try:
        same = model.path is not None and str(model.path) == str(examples.example_path())
    except Exception:                   # noqa: BLE001 (a model loaded from bytes has no path)
        same = False
    return as_cases(examples.example_cases(include_intermediates=True),
                    output_names=set(model.output_description)) if same else None


class Workbench(W.VBox):
    """``wb.Workbench(model, cases=None, layers_dir=None)``: every view of one model, in tabs.

    ``cases``: test cases (wb.TestCase list, triples, or a .npz path); the bundled example's own
    when the model is the example. ``layers_dir``: the folder of layer files the editor edits
    (default: the folder the model's implementations came from); files there replace what the
    model was loaded with.
    """

    def __init__(self, model, cases=None, layers_dir=None, graph=True, **kwargs):
        self.errors = ErrorArea()
        if cases is None:
            cases = _default_cases(model)
        self.session = Session(model, cases, layers_dir)
        self.inspector = Inspector(self.session)
        self.editor = LayerEditor(self.session)
        self.shapes = ShapeView(self.session, active=False)
        self.weights = WeightView(self.session, active=False)
        self.tests = TestRunner(self.session, active=False)
        self.graph = GraphView(self.session) if graph else W.HTML("<i>graph off (graph=False)</i>")
        self.tabs = W.Tab(children=[self.inspector, self.editor, self.shapes, self.weights, self.tests, self.graph])
        for i, title in enumerate(TITLES):
            self.tabs.set_title(i, title)
        self.tabs.observe(self.errors.guard(lambda change: self._shown(change["new"])), names="selected_index")
        super().__init__([W.HTML(f"<b>Workbench</b>: {model.name}"), self.tabs, self.errors], **kwargs)
        self.add_class("workbench-app")
        if self.session.cases:
            self.errors.guard(self.tests.run)()

    def _shown(self, index):
        view = self.tabs.children[index] if index is not None else None
        if hasattr(view, "activate"):
            view.activate()

    def show_tab(self, title):
        """Select a tab by its title ('Tests', 'Graph', ...); returns its view."""
        self.tabs.selected_index = TITLES.index(title)
        return self.tabs.children[TITLES.index(title)]

    @property
    def model(self):
        return self.session.model

    def close(self):
        if isinstance(getattr(self, "graph", None), GraphView):
            self.graph.close()
        super().close()

    def __repr__(self):
        return (f"<workbench.Workbench {self.model.name!r}: {len(self.session.cases)} case(s), "
                f"layers in {self.session.layers_dir.name}/>")
