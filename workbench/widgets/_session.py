"""One model shared by the workbench's views: its layer files, its test cases, the last report.

The editor's Apply is here, not in a widget, so a script can do exactly what the button does:
save the text to the layer's file first (nothing typed is lost), compile it into the loaded model
with ``model.use`` (which keeps the previous implementation when the new one fails), rerun the
test cases, and tell every view that the model changed.
"""
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import WorkbenchError
from ..testing import TestReport, as_cases, run_tests
from ._facts import implementation_file


@dataclass
class ApplyResult:
    """What Apply did: ``ok`` when the new implementation is in use; else the error and its line."""
    class_name: str
    path: Path
    ok: bool
    error: str = None
    line: int = None
    report: object = None

    def __repr__(self):
        state = "applied" if self.ok else f"failed at line {self.line}" if self.line else "failed"
        return f"<ApplyResult {self.class_name}: {state}>"


def error_line(message, path):
    """The line of ``path`` that an error message points at ('file:LINE'), or None."""
    match = re.search(re.escape(str(path)) + r":(\d+)", message or "")
    return int(match.group(1)) if match else None


def skeleton(record):
    """The text of a new implementation file for a custom layer the model declares."""
    params = "\n".join(f"        #   {k} = {v!r} ({record.parameter_types.get(k)})"
                       for k, v in record.parameters.items()) or "        #   (none)"
    weights = ", ".join(str(w.size) for w in record.weights) or "none"
    return f'''"""{record.class_name}: {record.description or "a custom layer"}"""
import numpy as np

import workbench as wb


class {record.class_name}(wb.CustomLayer):
    def __init__(self, parameters):
        # parameters from the model file:
{params}
        super().__init__(parameters)

    def set_weight_data(self, weights):
        # weight tensors (1-D float32, read-only), sizes: {weights}
        self.weights = list(weights)

    def output_shapes(self, input_shapes):
        return [tuple(s) for s in input_shapes]

    def evaluate(self, inputs, outputs):
        raise NotImplementedError("{record.class_name}.evaluate: write the layer's computation here")
'''


class Session:
    """The model, its cases, the folder of layer files and the latest test report, for all views."""

    def __init__(self, model, cases=None, layers_dir=None):
        self.model = model
        self.cases = as_cases(cases, output_names=set(model.output_description)) if cases is not None else []
        self.layers_dir = Path(layers_dir) if layers_dir is not None else self._implementations_dir()
        self.report = None
        self._listeners = []
        if layers_dir is not None:                      # the files in the folder given are what runs
            files = [self.file_for(r.class_name) for r in model.custom_layers]
            present = sorted({str(f) for f in files if f.is_file()})
            if present:
                model.use(*present)

    def _implementations_dir(self):
        for record in self.model.custom_layers:
            where = implementation_file(record)
            if where and Path(where).is_file():
                return Path(where).parent
        return Path("layers")

    def __repr__(self):
        return (f"<workbench Session {self.model.name!r}: {len(self.cases)} case(s), "
                f"layers in {self.layers_dir.name}/>")

    # ------------------------------------------------------------ change notification
    def on_change(self, callback):
        """Call ``callback(what)`` after the model or the report changes ('model', 'report')."""
        self._listeners.append(callback)

    def changed(self, what):
        for callback in list(self._listeners):
            callback(what)

    # ------------------------------------------------------------ layer files
    def class_names(self):
        return sorted({r.class_name for r in self.model.custom_layers})

    def record(self, class_name):
        return next(r for r in self.model.custom_layers if r.class_name == class_name)

    def file_for(self, class_name):
        """The file that implements ``class_name``: the one it was compiled from, else layers/<className>.py."""
        record = next((r for r in self.model.custom_layers if r.class_name == class_name), None)
        where = implementation_file(record) if record is not None else None
        if where and Path(where).is_file() and Path(where).parent.resolve() == self.layers_dir.resolve():
            return Path(where)
        return self.layers_dir / f"{class_name}.py"

    def ensure_file(self, class_name):
        """The layer's file, created from a skeleton when the className has none yet."""
        path = self.file_for(class_name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(skeleton(self.record(class_name)), encoding="utf-8")
        return path

    # ------------------------------------------------------------ apply
    def apply(self, class_name, text, rerun=True):
        """Save ``text`` as the layer's file, compile it into the model, rerun the cases."""
        path = self.file_for(class_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")            # first: whatever happens next, the text is kept
        try:
            self.model.use(path)
        except WorkbenchError as e:
            return ApplyResult(class_name, path, False, str(e), error_line(str(e), path))
        implemented = implementation_file(self.record(class_name))
        if implemented is None or Path(implemented).resolve() != path.resolve():
            message = (f"{path}: defines no class for className '{class_name}' (name the class {class_name}, "
                       f"or decorate it with @wb.custom_layer(\"{class_name}\")); the previous implementation "
                       f"stays in use")
            return ApplyResult(class_name, path, False, message, None)
        self.changed("model")
        result = ApplyResult(class_name, path, True)
        if rerun and self.cases:
            result.report = self.run_tests()
            raised = next((r.error for r in result.report.results if r.error and str(path) in r.error), None)
            if raised:
                result.error, result.line = raised, error_line(raised, path)
        return result

    def reload_changed_files(self):
        """Pick up layer files edited outside the editor; return the classNames replaced."""
        replaced = self.model.reload()
        if replaced:
            self.changed("model")
            if self.cases:
                self.run_tests()
        return replaced

    # ------------------------------------------------------------ tests
    def run_tests(self, progress=None):
        """Run every case (one at a time, so ``progress(done, total, name)`` can follow); keep the report."""
        results = []
        missing = self.model.missing_implementations()
        for i, case in enumerate(self.cases):
            if progress is not None:
                progress(i, len(self.cases), case.name)
            if missing:
                from ..testing import CaseResult
                results.append(CaseResult(case.name, False, error=f"missing implementations: {', '.join(missing)}"))
            else:
                results += run_tests(self.model, [case], progress=False).results
        if progress is not None:
            progress(len(self.cases), len(self.cases), None)
        self.report = TestReport(self.model.name, results)
        self.changed("report")
        return self.report
