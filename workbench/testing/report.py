"""Run test cases through a model and report: verdicts, statistics, first divergence, plots, HTML.

``run_tests`` judges each case by its outputs; reference intermediates, where a case has them,
locate the first layer that goes wrong. A case whose prediction raises is a failed case with the
error's message (which names the layer, className and method), not an aborted suite.
"""
import html
from dataclasses import dataclass, field

from ..errors import MissingImplementationError, WorkbenchError
from .cases import as_cases
from .compare import compare, format_index
from .divergence import first_divergence, match_references

PROGRESS_AFTER = 5            # suites longer than this show a progress bar


@dataclass
class CaseResult:
    """One case's verdict: per-output comparisons, their summary numbers, the first divergence."""
    name: str
    passed: bool
    outputs: dict = field(default_factory=dict)          # output name -> Comparison
    intermediates: dict = field(default_factory=dict)    # blob name -> Comparison
    first_divergence: object = None
    unmatched_references: list = field(default_factory=list)
    unchecked_outputs: list = field(default_factory=list)
    error: str = None

    def _numeric(self, attr):
        values = [getattr(c, attr) for c in self.outputs.values() if getattr(c, attr) is not None]
        if any(v != v for v in values):                  # NaN: an output had NaN where a number was expected
            return float("nan")
        return max(values, default=None)

    @property
    def max_abs_error(self):
        return self._numeric("max_abs_error")

    @property
    def max_rel_error(self):
        return self._numeric("max_rel_error")

    @property
    def mismatched(self):
        """Elements (or labels) outside tolerance, over all outputs."""
        return sum(c.mismatched for c in self.outputs.values())

    @property
    def worst_output(self):
        """The output to look at first: the failing one with the largest error, else the largest error."""
        if not self.outputs:
            return None
        def key(c):
            err = c.max_abs_error
            return (not c.passed, err != err, -1.0 if err is None else err)
        return max(self.outputs.values(), key=key).name

    @property
    def worst_index(self):
        """Index of the worst element, in the worst output."""
        name = self.worst_output
        return None if name is None else self.outputs[name].worst_index

    def describe(self):
        if self.error:
            return f"case '{self.name}': FAIL, prediction raised: {self.error}"
        lines = [f"case '{self.name}': {'pass' if self.passed else 'FAIL'}"]
        lines += ["  " + c.describe() for c in self.outputs.values()]
        if self.first_divergence is not None:
            lines.append("  " + self.first_divergence.describe())
        return "\n".join(lines)


class TestReport:
    """The results of ``run_tests``: ``passed``, ``results`` (one CaseResult per case), plots and HTML."""
    __test__ = False

    def __init__(self, model_name, results):
        self.model_name = model_name
        self.results = list(results)

    @property
    def passed(self):
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failed(self):
        return [r for r in self.results if not r.passed]

    @property
    def first_divergence(self):
        """The first divergence of the first failing case that has one (else of any case), or None."""
        ordered = self.failed + [r for r in self.results if r.passed]
        return next((r.first_divergence for r in ordered if r.first_divergence is not None), None)

    def __getitem__(self, case):
        return self._result(case)

    def __len__(self):
        return len(self.results)

    def _result(self, case):
        if isinstance(case, int):
            return self.results[case]
        for r in self.results:
            if r.name == case:
                return r
        raise KeyError(f"no test case named {case!r}; the cases are {[r.name for r in self.results]}")

    def plot(self, case=None, output=None):
        """A Figure of where ``output`` of ``case`` differs (defaults: the first failing case, its worst output)."""
        from .plots import plot_comparison
        if not self.results:
            raise KeyError("the report holds no cases")
        result = self._result(case) if case is not None else (self.failed or self.results)[0]
        if result.error:
            raise KeyError(f"case '{result.name}' has no outputs to plot: its prediction raised: {result.error}")
        name = output if output is not None else result.worst_output
        if name not in result.outputs:
            raise KeyError(f"case '{result.name}' compared no output {name!r}; it compared "
                           f"{sorted(result.outputs)}")
        return plot_comparison(result.outputs[name], title=f"case '{result.name}', output '{name}'")

    def summary(self):
        passed = sum(r.passed for r in self.results)
        head = (f"{self.model_name}: {len(self.results)} case(s), {passed} passed, "
                f"{len(self.results) - passed} failed")
        return "\n".join([head] + [r.describe() for r in self.results])

    def __repr__(self):
        passed = sum(r.passed for r in self.results)
        return f"<TestReport {self.model_name}: {passed} of {len(self.results)} case(s) passed>"

    def _repr_html_(self):
        return report_html(self)


def run_tests(model, cases, progress=None):
    """Predict every case with ``model`` and compare with its expected outputs; return a TestReport.

    ``cases``: a list of wb.TestCase, (name, inputs, expected) triples as ``examples.example_cases``
    gives them, or the path of a .npz file of cases. ``progress``: show a tqdm progress bar
    (default: when there are more than a few cases).
    """
    missing = model.missing_implementations()
    if missing:
        raise MissingImplementationError(model.name, missing)
    cases = as_cases(cases, output_names=set(model.output_description))
    show = len(cases) > PROGRESS_AFTER if progress is None else bool(progress)
    iterator = cases
    if show:
        from tqdm.auto import tqdm
        iterator = tqdm(cases, desc=f"test cases ({model.name})", unit="case")
    return TestReport(model.name, [run_case(model, case) for case in iterator])


def run_case(model, case):
    """One case: predict (and trace, when the case has reference intermediates), then compare."""
    try:
        outputs = model.predict(case.inputs)
        scope = model.trace(case.inputs) if case.intermediates else None
    except WorkbenchError as e:
        return CaseResult(case.name, False, error=str(e))
    result = CaseResult(case.name, True)
    for name, expected in case.expected.items():
        result.outputs[name] = compare(name, expected, outputs.get(name), *case.tolerance(name))
    result.unchecked_outputs = [name for name in outputs if name not in case.expected]
    result.passed = all(c.passed for c in result.outputs.values())
    if scope is not None:
        references, result.unmatched_references = match_references(model, scope, case.intermediates)
        for name, expected in case.expected.items():           # array outputs are blobs too: the last ones
            if name in scope and name not in references and hasattr(expected, "shape") and expected.ndim:
                references[name] = expected
        result.first_divergence, result.intermediates = first_divergence(
            model, case.name, scope, references, case.tolerance)
    return result


# ------------------------------------------------------------------ HTML

PASS_STYLE = "background:#e6f4ea;color:#137333"
FAIL_STYLE = "background:#fce8e6;color:#a50e0e"


def _num(value):
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else html.escape(str(value))


def report_html(report):
    """A table, one row per case and output, green for pass and red for fail; no ids, no addresses."""
    e = html.escape
    passed = sum(r.passed for r in report.results)
    verdict = "all passed" if report.passed else f"{len(report.results) - passed} failed"
    style = PASS_STYLE if report.passed else FAIL_STYLE
    rows = []
    for r in report.results:
        cell_style = PASS_STYLE if r.passed else FAIL_STYLE
        if r.error:
            rows.append(f'<tr style="{cell_style}"><td>{e(r.name)}</td><td></td><td>FAIL</td>'
                        f'<td colspan="6">prediction raised: {e(r.error)}</td></tr>')
            continue
        for c in r.outputs.values():
            row_style = PASS_STYLE if c.passed else FAIL_STYLE
            worst = ""
            if c.mismatched and c.kind != "label":
                worst = (f"{e(format_index(c.worst_index))}: expected {_num(c.worst_expected)}, "
                         f"got {_num(c.worst_actual)}")
            elif c.problem:
                worst = e(c.problem)
            rows.append(
                f'<tr style="{row_style}"><td>{e(r.name)}</td><td>{e(c.name)}</td>'
                f'<td>{"pass" if c.passed else "FAIL"}</td><td>{_num(c.max_abs_error)}</td>'
                f'<td>{_num(c.max_rel_error)}</td><td>{c.mismatched} / {c.size}</td><td>{worst}</td>'
                f'<td>{c.rtol:g} / {c.atol:g}</td></tr>')
        notes = []
        if r.first_divergence is not None:
            notes.append(e(r.first_divergence.describe(with_case=False)))
        if r.unmatched_references:
            notes.append(f"{len(r.unmatched_references)} reference intermediate(s) match no blob or layer: "
                         + e(", ".join(r.unmatched_references[:8])))
        for note in notes:
            rows.append(f'<tr style="{cell_style}"><td>{e(r.name)}</td><td colspan="7">{note}</td></tr>')
    header = ("<tr><th>case</th><th>output</th><th>verdict</th><th>max abs error</th><th>max rel error</th>"
              "<th>mismatched</th><th>worst element</th><th>rtol / atol</th></tr>")
    return (f'<div class="workbench-test-report"><p style="{style};padding:4px">'
            f"<b>{e(report.model_name)}</b>: {len(report.results)} case(s), {passed} passed, {verdict}</p>"
            f'<table style="border-collapse:collapse">{header}{"".join(rows)}</table></div>')
