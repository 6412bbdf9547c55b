"""Inspector: the model's inputs, outputs and layers (custom layers first); a selected layer's details."""
import html

import ipywidgets as W

from ._common import ErrorArea, table_html
from ._facts import layer_details, layer_rows


def _option(row):
    if row.kind == "custom":
        state = "" if row.implemented else " - MISSING implementation"
        return f"{row.name}  [custom: {row.class_name}]{state}"
    return f"{row.name}  [{row.kind}]"


def details_html(details):
    """The detail panel of one layer, as HTML (what the inspector shows when a layer is selected)."""
    e = html.escape
    parts = [f"<h4 style='margin:4px 0'>{e(details['name'])} ({e(details['kind'])})</h4>"]
    if "class_name" in details:
        impl = details["implementation"]
        parts.append(f"<p><b>className</b> {e(details['class_name'])}<br>"
                     f"<b>description</b> {e(details['description'] or '(none)')}<br>"
                     f"<b>implementation</b> "
                     + (e(impl) if impl else "<span style='color:#a50e0e'><b>missing</b></span>") + "</p>")
        parts.append("<b>parameters</b>" + table_html(["name", "value", "type"],
                                                      [(k, repr(v), t) for k, v, t in details["parameters"]]))
    parts.append("<b>inputs</b>" + table_html(["blob", "shape"], details["inputs"]))
    parts.append("<b>outputs</b>" + table_html(["blob", "shape"], details["outputs"]))
    if details["weights"]:
        rows = [(w["name"], w["shape"], w["storage"], w.get("min"), w.get("max"), w.get("mean"), w.get("std"))
                for w in details["weights"]]
        parts.append("<b>weights</b>" + table_html(["tensor", "shape", "storage", "min", "max", "mean", "std"], rows))
    return "".join(parts)


class Inspector(W.VBox):
    """Inputs/outputs, the layer list (custom first) and the selected layer's details."""

    def __init__(self, session, **kwargs):
        self.session = session
        self.errors = ErrorArea()
        self.features = W.HTML()
        self.layer_list = W.Select(rows=12, layout=W.Layout(width="420px"))
        self.details = W.HTML(layout=W.Layout(flex="1", overflow="auto"))
        self.layer_list.observe(self.errors.guard(lambda change: self.show_layer(change["new"])), names="value")
        super().__init__([self.features, W.HBox([self.layer_list, self.details]), self.errors], **kwargs)
        self.add_class("workbench-inspector")
        session.on_change(self.errors.guard(lambda what: self.refresh() if what == "model" else None))
        self.refresh()

    @property
    def model(self):
        return self.session.model

    def refresh(self):
        m = self.model
        rows = [("input", n, d) for n, d in m.input_description.items()]
        rows += [("output", n, d) for n, d in m.output_description.items()]
        missing = m.missing_implementations()
        note = (f"<p style='color:#a50e0e'>missing implementations: {html.escape(', '.join(missing))}</p>"
                if missing else "")
        self.features.value = (f"<b>{html.escape(m.name)}</b>: {html.escape(m.type)}, specification "
                               f"{m.spec_version}, {len(m.layers)} layers, {len(m.custom_layers)} custom"
                               + table_html(["", "feature", "type"], rows) + note)
        selected = self.layer_list.value
        self.rows = layer_rows(m)
        self.layer_list.options = [(_option(r), r.name) for r in self.rows]
        names = [r.name for r in self.rows]
        self.layer_list.value = selected if selected in names else (names[0] if names else None)
        if self.layer_list.value is not None:
            self.show_layer(self.layer_list.value)

    def show_layer(self, name):
        if name is None:
            self.details.value = ""
            return
        self.selected_details = layer_details(self.model, name)
        self.details.value = details_html(self.selected_details)
        self.errors.clear()

    def select(self, name):
        self.layer_list.value = name

    def __repr__(self):
        return f"<workbench Inspector {self.model.name!r}: {len(self.rows)} layers, selected {self.layer_list.value!r}>"


__all__ = ["Inspector", "details_html"]
