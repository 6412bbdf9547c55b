"""Layer editor: CodeMirror 6 (an anywidget) on a custom layer's file in layers/, with Apply.

Apply saves first, then compiles into the loaded model and reruns the cases (``Session.apply``);
an error is shown on its line and the last good implementation stays in use. The front end polls
(every ``poll_ms`` and on focus) so edits made to the file elsewhere appear and are compiled.
The front end's source and build script are in js/ beside this file; the built bundle in static/.
"""
from pathlib import Path

import anywidget
import ipywidgets as W
import traitlets

from ._common import ErrorArea

STATIC = Path(__file__).parent / "static"


class CodeEditor(anywidget.AnyWidget):
    """A CodeMirror 6 editor with Python highlighting; Shift-Enter or Apply sends the text to Python."""
    _esm = STATIC / "editor.js"
    text = traitlets.Unicode("").tag(sync=True)
    error_line = traitlets.Int(0).tag(sync=True)
    error_message = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("").tag(sync=True)
    poll_ms = traitlets.Int(2000).tag(sync=True)

    def __repr__(self):
        return f"<workbench CodeEditor: {len(self.text.splitlines())} lines, status {self.status!r}>"


class LayerEditor(W.VBox):
    """Choose a className, edit its file, Apply: save, compile, swap into the model, rerun the cases."""

    def __init__(self, session, **kwargs):
        self.session = session
        self.errors = ErrorArea()
        self.choice = W.Dropdown(description="className", options=session.class_names())
        self.file_label = W.HTML()
        self.editor = CodeEditor()
        self.last_result = None
        self._mtime = None
        self.editor.on_msg(self.errors.guard(self._on_message))
        self.choice.observe(self.errors.guard(lambda change: self.open_layer(change["new"])), names="value")
        super().__init__([W.HBox([self.choice, self.file_label]), self.editor, self.errors], **kwargs)
        self.add_class("workbench-editor-view")
        if self.choice.value:
            self.errors.guard(self.open_layer)(self.choice.value)

    # ------------------------------------------------------------ file
    @property
    def path(self):
        return self.session.file_for(self.choice.value)

    def open_layer(self, class_name):
        """Show the file of ``class_name`` (created from a skeleton when there is none yet)."""
        path = self.session.ensure_file(class_name)
        self.editor.text = path.read_text(encoding="utf-8")
        self._mtime = path.stat().st_mtime_ns
        self.file_label.value = f"<code>{path}</code>"
        self._show(None)

    def check_file(self):
        """Pick up an edit made outside the editor: load the new text and compile it. True when it changed."""
        path = self.path
        if not path.exists() or path.stat().st_mtime_ns == self._mtime:
            return False
        self._mtime = path.stat().st_mtime_ns
        text = path.read_text(encoding="utf-8")
        self.editor.text = text
        self._show(self.session.apply(self.choice.value, text))
        self._mtime = path.stat().st_mtime_ns
        return True

    # ------------------------------------------------------------ apply
    def apply(self, text=None):
        """What the Apply button does; returns the ApplyResult."""
        if text is not None:
            self.editor.text = text
        self.editor.status = "applying..."
        result = self.session.apply(self.choice.value, self.editor.text)
        self._mtime = result.path.stat().st_mtime_ns
        self._show(result)
        return result

    def _show(self, result):
        self.last_result = result
        if result is None:
            self.editor.error_line, self.editor.error_message, self.editor.status = 0, "", ""
            self.errors.clear()
            return
        if result.ok and not result.error:
            report = result.report
            tests = (f"; tests: {sum(r.passed for r in report.results)} of {len(report.results)} passed"
                     if report is not None else "")
            self.editor.status = f"applied: {result.class_name} now runs {result.path.name}{tests}"
            self.editor.error_line, self.editor.error_message = 0, ""
            self.errors.clear()
            return
        if result.ok:
            self.editor.status = "applied, but the tests raised in this file (see the error)"
        else:
            self.editor.status = ("not applied: the previous implementation stays in use (the text is saved)")
        self.editor.error_message = result.error or ""
        self.editor.error_line = result.line or 0
        self.errors.show(f"line {result.line}: {result.error}" if result.line else result.error)

    def _on_message(self, widget, content, buffers):
        if content.get("type") == "apply":
            self.apply(content.get("text"))
        elif content.get("type") == "poll":
            self.check_file()

    def __repr__(self):
        return f"<workbench LayerEditor: {self.choice.value} ({self.path.name})>"
