"""Layer editor and its Apply (Session.apply): judged by the example's PyTorch test cases.

A wrong implementation must make the test runner's table show FAIL and the fix PASS; a syntax error
must leave the previous implementation running and the typed text saved in the file.
"""
import os
import shutil

import numpy as np
import pytest

import workbench as wb
from workbench import examples
from workbench.widgets import LayerEditor, Session, TestRunner, Workbench, skeleton

CASES = examples.example_cases(include_intermediates=True)


@pytest.fixture
def session(tmp_path):
    shutil.copytree(examples.BUNDLED_LAYERS_DIR, tmp_path / "layers")
    model = wb.load(examples.example_path(), layers=tmp_path / "layers")
    return Session(model, CASES, layers_dir=tmp_path / "layers")


def good_text():
    return (examples.BUNDLED_LAYERS_DIR / "PixelNorm.py").read_text()


def wrong_text():
    """PixelNorm without its square root: y = x / (mean(x^2) + eps)."""
    text = good_text().replace("np.sqrt(mean_square, out=mean_square)", "pass")
    assert text != good_text()
    return text


def test_wrong_implementation_fails_and_the_fix_passes(session):
    editor, runner = LayerEditor(session), TestRunner(session)
    editor.choice.value = "PixelNorm"
    result = editor.apply(wrong_text())
    assert result.ok and not result.report.passed
    assert "FAIL" in runner.table.value and "PASS" not in runner.table.value
    assert runner.report.first_divergence.class_name == "PixelNorm"       # the intermediates name the layer
    assert "PixelNorm" in runner.divergence.value
    assert runner.plot.children                                              # the diff plot of the failing case
    assert (session.layers_dir / "PixelNorm.py").read_text() == wrong_text()
    result = editor.apply(good_text())
    assert result.ok and result.report.passed
    assert "PASS" in runner.table.value and "FAIL" not in runner.table.value
    # the applied code is what runs: the model agrees with PyTorch's outputs
    name, inputs, expected = CASES[0]
    np.testing.assert_allclose(session.model.predict(inputs)["logits"], expected["logits"], rtol=1e-4, atol=1e-4)


def test_syntax_error_keeps_the_previous_implementation_and_saves_the_text(session):
    editor, runner = LayerEditor(session), TestRunner(session)
    editor.choice.value = "PixelNorm"
    editor.apply(wrong_text())
    before = session.record("PixelNorm").implementation
    broken = wrong_text().replace("def evaluate(self, inputs, outputs):", "def evaluate(self, inputs, outputs)")
    result = editor.apply(broken)
    assert not result.ok
    line = next(i for i, l in enumerate(broken.splitlines(), 1) if "def evaluate(self, inputs, outputs)" in l)
    assert result.line == line and editor.editor.error_line == line
    assert "syntax error" in editor.editor.error_message and "syntax error" in editor.errors.value
    assert (session.layers_dir / "PixelNorm.py").read_text() == broken     # nothing typed is lost
    assert session.record("PixelNorm").implementation is before             # the last good one still runs
    assert not session.run_tests().passed and "FAIL" in runner.table.value  # ... and it is the wrong one


def test_error_in_init_is_shown_with_its_line(session):
    editor = LayerEditor(session)
    editor.choice.value = "ScaledSwish"
    text = (examples.BUNDLED_LAYERS_DIR / "ScaledSwish.py").read_text().replace(
        'self.channels = int(parameters["channels"])', 'self.channels = int(parameters["no_such_parameter"])')
    result = editor.apply(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "no_such_parameter" in l)
    assert not result.ok and result.line == line and "KeyError" in result.error and "__init__" in result.error
    assert session.model.predict(CASES[0][1])                               # the previous one still runs


def test_edit_outside_the_editor_is_picked_up(session):
    editor, runner = LayerEditor(session), TestRunner(session)
    editor.choice.value = "PixelNorm"
    path = session.layers_dir / "PixelNorm.py"
    path.write_text(wrong_text())
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)               # a later mtime, as another editor gives
    assert editor.check_file()
    assert editor.editor.text == wrong_text()
    assert "FAIL" in runner.table.value
    assert not editor.check_file()                                          # unchanged since: nothing to do


def test_class_name_without_a_file_gets_a_skeleton(tmp_path):
    model = wb.load(examples.example_path(), layers=[])
    session = Session(model, CASES, layers_dir=tmp_path)
    editor = LayerEditor(session)
    editor.choice.value = "ScaledSwish"
    path = tmp_path / "ScaledSwish.py"
    assert path.read_text() == skeleton(session.record("ScaledSwish")) == editor.editor.text
    assert "channels = 8 (intValue)" in editor.editor.text                   # the file's parameters, named
    result = editor.apply(editor.editor.text)
    assert result.ok and session.record("ScaledSwish").implementation is not None


def test_apply_from_the_front_end_message(session):
    editor = LayerEditor(session)
    editor.choice.value = "PixelNorm"
    editor.editor._handle_custom_msg({"type": "apply", "text": wrong_text()}, [])
    assert not session.report.passed and editor.editor.status.startswith("applied")


def test_workbench_shares_one_model(session, tmp_path):
    bench = Workbench(session.model, CASES, layers_dir=session.layers_dir, graph=False)
    assert bench.tests.report.passed
    bench.editor.choice.value = "PixelNorm"
    bench.editor.apply(wrong_text())
    assert "FAIL" in bench.tests.table.value and "FAIL" in bench.tests.summary.value.upper()
    assert repr(bench) == "<workbench.Workbench 'example.mlmodel': 3 case(s), layers in layers/>"
    assert "0x" not in repr(bench.editor) + repr(bench.tests) + repr(bench.shapes) + repr(bench.weights)


def test_callback_errors_show_in_the_widget(session):
    editor = LayerEditor(session)
    editor.choice.value = "PixelNorm"
    editor.editor._handle_custom_msg({"type": "apply", "text": 12}, [])     # as the front end sends it; not text
    assert "TraitError" in editor.errors.value                              # shown in the widget, not raised
