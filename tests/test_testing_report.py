"""Reports, comparisons, diff plots and first divergence (workbench/testing/report.py, compare.py,
plots.py, divergence.py).

References: PyTorch (the bundled example's shipped outputs and intermediates; the example network
rebuilt from build_example.py and read with forward hooks; torch's softmax and pixel arithmetic
for the classifier and image models built here) and planted perturbations whose place and size
are known, so the statistics, the worst index and the plotted slice can be checked exactly.
"""
import numpy as np
import pytest
import torch
from PIL import Image

import workbench as wb
from workbench import examples
from workbench.testing import capture_torch

from support import LAYERS

PASS_COLOUR, FAIL_COLOUR = "#e6f4ea", "#fce8e6"


def example_model(**replace):
    """The example model; ``replace`` maps classNames to other implementations."""
    model = wb.load(examples.example_path(), layers=examples.example_layers_dir())
    if replace:
        model.use(replace)
    return model


def titles(figure):
    return [ax.get_title() for ax in figure.axes if ax.get_title()]


def one_good_one_perturbed():
    name, inputs, expected = examples.example_cases()[0]
    bad = {"logits": expected["logits"].copy()}
    bad["logits"][0, 3] += 0.5
    return [wb.TestCase("good", inputs, expected), wb.TestCase("perturbed", inputs, bad)]


# ------------------------------------------------------------------ verdicts and statistics

def test_a_correct_and_a_perturbed_case_are_judged_right():
    report = wb.run_tests(example_model(), one_good_one_perturbed())
    good, bad = report.results
    assert good.passed and not bad.passed and not report.passed
    assert good.mismatched == 0 and good.max_abs_error < 1e-6
    assert bad.mismatched == 1 and bad.worst_output == "logits" and bad.worst_index == (0, 3)
    assert bad.max_abs_error == pytest.approx(0.5, abs=1e-5)
    logits = bad.outputs["logits"]
    assert logits.size == 10 and logits.shape == (1, 10)
    assert logits.worst_expected == pytest.approx(logits.worst_actual + 0.5, abs=1e-5)
    assert bad.max_rel_error == pytest.approx(0.5 / abs(logits.worst_expected), rel=1e-4)
    assert report.failed == [bad] and report["good"] is good
    assert "1 passed, 1 failed" in report.summary()


def test_the_plot_shows_where_the_cases_differ():
    report = wb.run_tests(example_model(), one_good_one_perturbed())
    fig = report.plot()                               # the first failing case, its worst output
    assert titles(fig) == ["expected and actual", "difference (actual - expected)", "error histogram"]
    heading = fig._suptitle.get_text()
    assert "case 'perturbed'" in heading and "FAIL: 1 of 10" in heading and "worst at [0, 3]" in heading
    diff_axis = fig.axes[1]
    lines = [l for l in diff_axis.get_lines() if len(l.get_xdata()) == 10]
    assert np.argmax(np.abs(lines[0].get_ydata())) == 3     # the difference curve peaks at the planted index
    good = report.plot(case="good")
    assert "PASS" in good._suptitle.get_text()
    with pytest.raises(KeyError, match="no test case"):
        report.plot(case="missing")


def test_the_html_table_colours_and_locates_the_mismatch():
    markup = wb.run_tests(example_model(), one_good_one_perturbed())._repr_html_()
    rows = markup.split("<tr")[2:]
    assert len(rows) == 2
    assert "good" in rows[0] and PASS_COLOUR in rows[0] and ">pass<" in rows[0]
    assert "perturbed" in rows[1] and FAIL_COLOUR in rows[1] and ">FAIL<" in rows[1]
    assert "[0, 3]" in rows[1] and "1 / 10" in rows[1]
    assert "0x" not in markup and markup == wb.run_tests(example_model(), one_good_one_perturbed())._repr_html_()


def test_a_case_whose_prediction_raises_is_a_failed_case_naming_the_layer():
    class PixelNorm(wb.CustomLayer):
        def evaluate(self, inputs, outputs):
            raise RuntimeError("not written yet")

    report = wb.run_tests(example_model(PixelNorm=PixelNorm), examples.example_cases()[:1])
    result = report.results[0]
    assert not report.passed and "pixel_norm" in result.error and "not written yet" in result.error
    assert "prediction raised" in report._repr_html_()


# ------------------------------------------------------------------ first divergence

class OneElementOff(wb.CustomLayer):
    """PixelNorm, correct except at one planted element."""
    def __init__(self, parameters):
        self.epsilon = np.float32(parameters["epsilon"])

    def evaluate(self, inputs, outputs):
        x = inputs[0]
        outputs[0][...] = x / np.sqrt(np.mean(x * x, axis=-3, keepdims=True) + self.epsilon)
        outputs[0][0, 5, 3, 7] += 1.0


class SwishWithoutGain(wb.CustomLayer):
    """ScaledSwish that forgets its gain weights."""
    def set_weight_data(self, weights):
        self.beta = np.asarray(weights[0]).reshape(-1, 1, 1)

    def evaluate(self, inputs, outputs):
        x = inputs[0]
        outputs[0][...] = x / (1 + np.exp(-self.beta * x))


def test_first_divergence_names_the_faulty_layer_with_its_own_plot():
    report = wb.run_tests(example_model(PixelNorm=OneElementOff), examples.example_cases(include_intermediates=True))
    assert not report.passed
    d = report.first_divergence
    assert (d.layer, d.blob, d.kind, d.class_name) == ("pixel_norm", "pixel_norm", "custom", "PixelNorm")
    assert d.comparison.mismatched == 1 and d.comparison.worst_index == (0, 5, 3, 7)
    assert d.max_abs_error == pytest.approx(1.0, abs=1e-4)
    assert d.input_status == {"39": "agrees"} and d.inputs_agree and d.last_agreeing == "39"
    fig = d.plot()
    assert titles(fig)[:3] == ["expected (slice [0, 5, :, :])", "actual (slice [0, 5, :, :])",
                               "difference (actual - expected)"]
    assert "first divergence at layer 'pixel_norm' (PixelNorm)" in fig._suptitle.get_text()
    image = fig.axes[2].get_images()[0].get_array()
    assert image.shape == (16, 16) and np.unravel_index(np.argmax(np.abs(image)), image.shape) == (3, 7)
    assert "first divergence" in report._repr_html_() and "pixel_norm" in report._repr_html_()


def test_the_earliest_faulty_layer_wins():
    report = wb.run_tests(example_model(ScaledSwish=SwishWithoutGain, PixelNorm=OneElementOff),
                          examples.example_cases(include_intermediates=True))
    for result in report.results:
        assert result.first_divergence.layer == "scaled_swish"
        assert result.first_divergence.input_status == {"16": "agrees"}


def test_references_captured_from_pytorch_with_forward_hooks():
    from workbench.examples import build_example
    module = build_example.build_module()
    rename = {"conv1": "16", "swish": "scaled_swish", "conv2": "39", "norm": "pixel_norm", "head": "linear_0"}
    cases = []
    for name, inputs, expected in examples.example_cases(include_intermediates=True):
        captured = capture_torch(module, inputs["image"], modules=list(rename), rename=rename)
        for blob in ("16", "scaled_swish", "39", "pixel_norm"):          # the hooks see what build_example saved
            np.testing.assert_allclose(captured[blob], expected[blob], rtol=1e-6, atol=1e-6)
        cases.append(wb.TestCase(name, inputs, {"logits": expected["logits"]}, intermediates=captured))
    report = wb.run_tests(example_model(), cases)
    assert report.passed and report.first_divergence is None
    assert set(report.results[0].intermediates) == {"16", "scaled_swish", "39", "pixel_norm", "logits"}
    assert report.results[0].unmatched_references == []
    bad = wb.run_tests(example_model(ScaledSwish=SwishWithoutGain), cases)
    assert bad.first_divergence.layer == "scaled_swish"
    with pytest.raises(wb.WorkbenchError, match="no submodule"):
        capture_torch(module, cases[0].inputs["image"], modules=["conv9"])


# ------------------------------------------------------------------ classifiers and images

def classifier_model():
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    rng = np.random.default_rng(11)
    weight, bias = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    builder = NeuralNetworkBuilder([("x", datatypes.Array(6))], [("probs", None)], mode="classifier",
                                   disable_rank5_shape_mapping=True)
    builder.add_inner_product("fc", weight, bias, 6, 4, has_bias=True, input_name="x", output_name="z")
    builder.add_softmax_nd("softmax", "z", "probs", axis=-1)
    builder.set_class_labels(["cat", "dog", "fox", "owl"], predicted_feature_name="label", prediction_blob="probs")
    return wb.load(builder.spec), weight, bias


def test_classifier_labels_and_probability_dicts_compare():
    model, weight, bias = classifier_model()
    x = np.random.default_rng(5).normal(size=6).astype(np.float32)
    probs = torch.softmax(torch.from_numpy(weight) @ torch.from_numpy(x) + torch.from_numpy(bias), 0).numpy()
    labels = ["cat", "dog", "fox", "owl"]
    truth = {"label": labels[int(np.argmax(probs))], "probs": dict(zip(labels, probs.astype(float)))}
    wrong_label = labels[(int(np.argmax(probs)) + 1) % 4]
    shifted = dict(truth["probs"], owl=truth["probs"]["owl"] + 0.2)
    report = wb.run_tests(model, [
        wb.TestCase("right", {"x": x}, truth, rtol=1e-5, atol=1e-6),
        wb.TestCase("wrong-label", {"x": x}, {"label": wrong_label}),
        wb.TestCase("wrong-prob", {"x": x}, {"probs": shifted}),
    ])
    right, label, prob = report.results
    assert right.passed and right.outputs["probs"].kind == "probabilities"
    assert not label.passed and label.outputs["label"].kind == "label"
    assert wrong_label in label.outputs["label"].problem
    assert not prob.passed and prob.outputs["probs"].worst_index == "owl"
    assert prob.max_abs_error == pytest.approx(0.2, abs=1e-6)
    bars = report.plot("wrong-prob")
    assert titles(bars)[0].startswith("probabilities (4 labels") and "owl" in \
        [t.get_text() for t in bars.axes[1].get_xticklabels()]
    assert titles(report.plot("wrong-label")) == ["label"]
    assert "&#x27;owl&#x27;: expected" in report._repr_html_()


def image_model():
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    from coremltools.proto import NeuralNetwork_pb2
    builder = NeuralNetworkBuilder([("x", datatypes.Array(3, 6, 8))], [("image", None)],
                                   disable_rank5_shape_mapping=True)
    params = NeuralNetwork_pb2.CustomLayerParams()
    params.className = "RescaleOutputLambda"
    builder.add_custom(name="rescale", input_names=["x"], output_names=["image"], custom_proto_spec=params)
    image = builder.spec.description.output[0].type.imageType
    image.width, image.height, image.colorSpace = 8, 6, 20           # RGB
    return wb.load(builder.spec, layers=LAYERS / "RescaleOutputLambda.py")


def test_pil_image_outputs_compare_and_plot_as_images():
    x = np.tanh(np.random.default_rng(2).normal(size=(3, 6, 8))).astype(np.float32)
    pixels = ((torch.from_numpy(x) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    expected = Image.fromarray(pixels, mode="RGB")
    damaged = pixels.copy()
    damaged[4, 2, 1] = (int(damaged[4, 2, 1]) + 40) % 256
    report = wb.run_tests(image_model(), [
        wb.TestCase("same", {"x": x}, {"image": expected}, atol=1),
        wb.TestCase("damaged", {"x": x}, {"image": Image.fromarray(damaged, mode="RGB")}, atol=1),
    ])
    same, bad = report.results
    assert same.passed and same.outputs["image"].kind == "image"
    assert not bad.passed and bad.mismatched == 1 and bad.worst_index == (4, 2, 1)
    assert bad.max_abs_error == pytest.approx(abs(int(damaged[4, 2, 1]) - int(pixels[4, 2, 1])))
    fig = report.plot("damaged")
    assert titles(fig)[:3] == ["expected", "actual", "difference |actual - expected| (max over colours)"]
    assert fig.axes[0].get_images()[0].get_array().shape == (6, 8, 3)


# ------------------------------------------------------------------ the comparison rule

def test_mismatches_follow_numpy_isclose_and_nan_is_a_mismatch():
    from workbench.testing import compare
    rng = np.random.default_rng(9)
    expected = rng.normal(size=(4, 50)).astype(np.float32)
    actual = expected + rng.normal(scale=1e-3, size=expected.shape).astype(np.float32)
    c = compare("y", expected, actual, rtol=1e-3, atol=1e-3)
    assert c.mismatched == int((~np.isclose(actual, expected, rtol=1e-3, atol=1e-3)).sum()) > 0
    assert c.max_abs_error == pytest.approx(float(np.abs(actual.astype(np.float64) - expected).max()))
    actual[2, 17] = np.nan
    c = compare("y", expected, actual, rtol=1.0, atol=1.0)
    assert c.mismatched == 1 and c.nan_mismatches == 1 and c.worst_index == (2, 17) and np.isnan(c.max_abs_error)
    both = compare("y", np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), 0, 0)
    assert both.passed


def test_rank5_blobs_compare_with_framework_shapes_and_shapes_that_differ_fail():
    from workbench.testing import compare
    expected = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    actual = expected.reshape(1, 1, 3, 4, 5).copy()
    actual[0, 0, 1, 2, 3] += 1
    c = compare("blob", expected, actual, 0, 0.5)
    assert c.mismatched == 1 and c.worst_index == (1, 2, 3)
    wrong = compare("blob", expected, expected.reshape(3, 20), 0, 0.5)
    assert not wrong.passed and "does not match" in wrong.problem


def test_a_plane_with_a_short_side_is_drawn_as_series():
    from workbench.testing import compare, plot_comparison
    expected = np.sin(np.linspace(0, 6, 2 * 300)).reshape(1, 2, 300)
    actual = expected.copy()
    actual[0, 1, 120] += 0.3
    fig = plot_comparison(compare("y", expected, actual, 1e-4, 1e-4))
    assert titles(fig)[0] == "expected and actual"
    series = [l for l in fig.axes[0].get_lines() if len(l.get_xdata()) == 300]
    assert len(series) == 4                                 # expected and actual of both rows
    marked = [l for l in fig.axes[1].get_lines() if len(l.get_xdata()) == 1]
    assert marked[0].get_xdata()[0] == 120


def test_first_divergence_in_a_pipeline_names_the_stage_and_layer():
    from test_testing_checks import pipeline_spec

    class Double(wb.CustomLayer):
        def evaluate(self, inputs, outputs):
            outputs[0][...] = 2 * inputs[0]

    class Negate(wb.CustomLayer):                  # off by 0.25 everywhere
        def evaluate(self, inputs, outputs):
            outputs[0][...] = 0.25 - inputs[0]

    model = wb.load(pipeline_spec("Double", "Negate", "Double"), layers=[Double, Negate])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    references = {"model0/s0": 2 * x, "model1/s1": -2 * x, "model2/y": -4 * x}     # the formulas
    report = wb.run_tests(model, [wb.TestCase("chain", {"x": x}, {"y": -4 * x}, intermediates=references)])
    d = report.first_divergence
    assert not report.passed and (d.layer, d.blob, d.class_name) == ("model1/custom", "model1/s1", "Negate")
    assert d.input_status == {"model1/s0": "no reference"} and d.max_abs_error == pytest.approx(0.25)


def test_a_reference_of_another_shape_is_a_divergence_that_says_so():
    name, inputs, expected = examples.example_cases(include_intermediates=True)[0]
    wrong = {"39": expected["39"][:, :8]}                       # half the channels of blob '39'
    report = wb.run_tests(example_model(), [wb.TestCase(name, inputs, {"logits": expected["logits"]},
                                                        intermediates=wrong)])
    d = report.first_divergence
    assert report.passed and d.blob == "39" and "does not match the expected (1, 8, 16, 16)" in d.describe()
    assert titles(d.plot()) == ["no values to compare"]


def test_report_plots_draw_in_a_fresh_ipython_shell():
    from IPython.core.interactiveshell import InteractiveShell

    from workbench.examples import example_cases, example_layers_dir, example_path
    from workbench.testing import plots
    shell = InteractiveShell.instance()
    shell.display_formatter.formatters["image/png"].type_printers.pop(plots.Figure, None)
    plots._show_figures_in_notebooks()                # what importing the module does in a notebook
    model = wb.load(example_path(), layers=example_layers_dir())
    data, _ = shell.display_formatter.format(wb.run_tests(model, example_cases()).plot())
    assert data["image/png"].startswith(b"\x89PNG\r\n\x1a\n")
