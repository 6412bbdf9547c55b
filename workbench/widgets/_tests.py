"""Test runner: the model's cases with a progress bar, a pass/fail table, the diff plots, the first divergence.

The verdicts and the plots are the testing module's (``TestReport``, ``report.plot``); the view
only draws the latest report of the shared session, whoever ran it (this Run button, or Apply).
"""
import html

import ipywidgets as W

from ._common import Deferred, ErrorArea, image_of, table_html

PASS_STYLE = "background:#e6f4ea;color:#137333"
FAIL_STYLE = "background:#fce8e6;color:#a50e0e"


def report_rows(report):
    """(case, output, verdict, max abs error, max rel error, mismatched) per case and output."""
    rows = []
    for r in report.results:
        if r.error:
            rows.append((r.name, "", "FAIL", None, None, f"raised: {r.error}"))
            continue
        for c in r.outputs.values():
            rows.append((r.name, c.name, "PASS" if c.passed else "FAIL", c.max_abs_error, c.max_rel_error,
                         f"{c.mismatched} / {c.size}"))
    return rows


class TestRunner(Deferred, W.VBox):
    """Run the session's cases; show the table, the selected case's diff plot and first divergence."""
    __test__ = False

    def __init__(self, session, active=True, **kwargs):
        self.session = session
        self.active = active
        self.errors = ErrorArea()
        self.run_button = W.Button(description="Run tests", icon="play")
        self.progress = W.IntProgress(min=0, max=max(len(session.cases), 1), description="cases")
        self.progress_label = W.Label()
        self.summary = W.HTML()
        self.table = W.HTML()
        self.case_choice = W.Dropdown(description="case")
        self.output_choice = W.Dropdown(description="output")
        self.divergence = W.HTML()
        self.plot = W.Box(layout=W.Layout(width="100%"))
        self.run_button.on_click(self.errors.guard(lambda _: self.run()))
        self._quiet = False
        self.case_choice.observe(self.errors.guard(lambda _: None if self._quiet else self._case_selected()),
                                 names="value")
        self.output_choice.observe(self.errors.guard(lambda _: None if self._quiet else self.draw_plot()),
                                   names="value")
        super().__init__([W.HBox([self.run_button, self.progress, self.progress_label]), self.summary, self.table,
                          W.HBox([self.case_choice, self.output_choice]), self.divergence, self.plot,
                          self.errors], **kwargs)
        self.add_class("workbench-tests")
        session.on_change(self.errors.guard(lambda what: self.show_report() if what == "report" else None))
        if not session.cases:
            self.summary.value = "<i>no test cases: give Workbench(model, cases=...)</i>"
            self.run_button.disabled = True
        elif session.report is not None:
            self.show_report()

    @property
    def report(self):
        return self.session.report

    def run(self):
        """Run every case, following the progress bar; returns the TestReport."""
        self.errors.clear()
        self.run_button.disabled = True
        try:
            return self.session.run_tests(progress=self._progress)
        finally:
            self.run_button.disabled = not self.session.cases

    def _progress(self, done, total, name):
        self.progress.max = max(total, 1)
        self.progress.value = done
        self.progress_label.value = f"{done} / {total}" + (f": {name}" if name else "")

    def show_report(self):
        report = self.report
        passed = sum(r.passed for r in report.results)
        style = PASS_STYLE if report.passed else FAIL_STYLE
        self.summary.value = (f"<div class='workbench-test-summary' style='{style};padding:4px'>"
                              f"{'PASS' if report.passed else 'FAIL'}: {passed} of {len(report.results)} case(s) passed</div>")
        rows = report_rows(report)
        self.table.value = table_html(["case", "output", "verdict", "max abs error", "max rel error", "mismatched"],
                                      rows, css_class="workbench-test-table",
                                      row_styles=[PASS_STYLE if r[2] == "PASS" else FAIL_STYLE for r in rows])
        names = [r.name for r in report.results]
        first_failing = report.failed[0].name if report.failed else (names[0] if names else None)
        keep = self.case_choice.value if self.case_choice.value in names else first_failing
        self._set_choices(self.case_choice, names, keep)
        self._case_selected()

    def _case_selected(self):
        result = self.report[self.case_choice.value] if self.case_choice.value is not None else None
        outputs = list(result.outputs) if result is not None else []
        keep = self.output_choice.value if self.output_choice.value in outputs else (
            result.worst_output if result is not None else None)
        self._set_choices(self.output_choice, outputs, keep)
        self.draw_plot()

    def _set_choices(self, dropdown, options, value):
        """Replace a dropdown's options and value without its observer firing: the caller redraws
        once after, not once per trait set here."""
        self._quiet = True
        try:
            dropdown.options = options
            dropdown.value = value
        finally:
            self._quiet = False

    def draw_plot(self):
        """The diff plot of the selected case and output, and its first divergence when known."""
        case, output = self.case_choice.value, self.output_choice.value
        result = self.report[case] if case is not None else None
        self.divergence.value = ""
        if result is None or result.error:
            self.plot.children = [W.HTML(f"<pre style='white-space:pre-wrap'>{html.escape(result.error)}</pre>")] \
                if result is not None else []
            return
        if result.first_divergence is not None:
            d = result.first_divergence
            self.divergence.value = (f"<div class='workbench-divergence' style='{FAIL_STYLE};padding:4px'>"
                                     f"{html.escape(d.describe())}</div>")
        elif result.intermediates:
            self.divergence.value = (f"<div style='padding:4px'>all {len(result.intermediates)} reference "
                                     f"intermediates agree</div>")
        if output is None:
            self.plot.children = []
            return
        report = self.report
        self.plot.children = []

        def draw():
            image = image_of(report.plot(case, output))
            image.add_class("workbench-diff-plot")
            self.plot.children = [image]
        self.when_shown(draw)

    def __repr__(self):
        state = "not run" if self.report is None else f"{sum(r.passed for r in self.report.results)} of " \
                                                      f"{len(self.report.results)} passed"
        return f"<workbench TestRunner: {len(self.session.cases)} case(s), {state}>"


__all__ = ["TestRunner", "report_rows"]
