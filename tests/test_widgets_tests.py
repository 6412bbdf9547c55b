"""Test runner view: its table and plots are the testing module's verdicts on the example's PyTorch cases."""
import shutil

import pytest

import workbench as wb
from workbench import examples
from workbench.widgets import Session, TestRunner
from workbench.widgets._tests import report_rows


@pytest.fixture
def session(tmp_path):
    shutil.copytree(examples.BUNDLED_LAYERS_DIR, tmp_path / "layers")
    model = wb.load(examples.example_path(), layers=tmp_path / "layers")
    return Session(model, examples.example_cases(include_intermediates=True))


class HalfPixelNorm(wb.CustomLayer):
    """Half of what PixelNorm should give: wrong everywhere after pixel_norm."""
    class_name = "PixelNorm"

    def evaluate(self, inputs, outputs):
        outputs[0][...] = 0.5 * inputs[0]


def test_progress_table_and_plots(session):
    runner = TestRunner(session)
    seen = []
    report = session.run_tests(progress=lambda done, total, name: seen.append((done, total)))
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
    runner.run_button.click()
    assert runner.progress.value == runner.progress.max == 3
    expected = wb.run_tests(session.model, examples.example_cases(include_intermediates=True))
    assert report_rows(runner.report) == report_rows(expected)
    assert runner.table.value.count("PASS") == 3 and report.passed
    assert list(runner.case_choice.options) == ["noise", "waves", "checker"]
    assert runner.plot.children and "all 5 reference intermediates agree" in runner.divergence.value


def test_failing_case_shows_its_plot_and_first_divergence(session):
    runner = TestRunner(session)
    session.model.use(HalfPixelNorm)
    session.run_tests()
    assert runner.table.value.count("FAIL") == 3
    assert "first divergence at layer &#x27;pixel_norm&#x27; (custom, className PixelNorm)" in runner.divergence.value
    runner.case_choice.value = "waves"
    assert runner.output_choice.value == "logits" and runner.plot.children
    assert repr(runner) == "<workbench TestRunner: 3 case(s), 0 of 3 passed>"


def test_without_cases(session):
    runner = TestRunner(Session(session.model))
    assert runner.run_button.disabled and "no test cases" in runner.summary.value
