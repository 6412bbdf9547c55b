"""Layer checks (workbench/testing/checks.py, modelcheck.py): planted faults, each caught as its kind.

The reference is the fault itself: each faulty class below breaks exactly one promise of
MLCustomLayer, at a line marked ``# FAULT: <name>``, and the check must name that kind, the method
and that file:line. Correct layers (layers/ and the bundled example's) must pass clean, and the
values the check computed must be torch's.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench import examples
from workbench.testing import KINDS

from support import corpus, custom_only_model

HERE = Path(__file__).resolve()
LAYERS = HERE.parents[1] / "layers"
RNG = np.random.default_rng(7)
X = RNG.normal(size=(2, 3, 4, 5)).astype(np.float32)


def line_of(marker):
    """file:line of the line of this file holding ``# FAULT: marker``."""
    for number, text in enumerate(HERE.read_text().splitlines(), 1):
        if text.rstrip().endswith(f"# FAULT: {marker}"):
            return f"{HERE}:{number}"
    raise AssertionError(f"no line marked {marker}")


def layer_class(class_name, folder=LAYERS):
    spec = importlib.util.spec_from_file_location(f"checked_layers.{class_name}", folder / f"{class_name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, class_name)


# ------------------------------------------------------------------ planted faults

class Identity(wb.CustomLayer):
    def __init__(self, parameters):
        pass

    def evaluate(self, inputs, outputs):
        outputs[0][...] = inputs[0]


class WritesInput(Identity):
    def evaluate(self, inputs, outputs):
        x = inputs[0]
        x *= 2                                             # FAULT: writes-input
        outputs[0][...] = x


class LyingShapes(Identity):
    def output_shapes(self, input_shapes):
        n, c, h, w = input_shapes[0]
        return [(n, c, h, w * 2)]                          # FAULT: lying-shapes


class HalfUnwritten(Identity):
    def evaluate(self, inputs, outputs):
        half = inputs[0].shape[-1] // 2
        outputs[0][..., :half] = inputs[0][..., :half]


class Random(Identity):
    def evaluate(self, inputs, outputs):
        noise = np.random.default_rng().normal(size=inputs[0].shape)
        outputs[0][...] = inputs[0] + 0.01 * noise


class ReturnsInput(Identity):
    def evaluate(self, inputs, outputs):
        outputs[0] = inputs[0]                             # FAULT: returns-input


class ReturnsInputView(Identity):
    def evaluate(self, inputs, outputs):
        outputs[:] = [inputs[0].reshape(outputs[0].shape)]   # FAULT: returns-view


class Raises(Identity):
    def __init__(self, parameters):
        self.parameters = parameters

    def evaluate(self, inputs, outputs):
        scale = self.parameters["scale"]                   # FAULT: raises
        outputs[0][...] = inputs[0] * scale


class WritesWeight(Identity):
    def set_weight_data(self, weights):
        self.scale = weights[0]

    def evaluate(self, inputs, outputs):
        self.scale += 1                                    # FAULT: writes-weight
        outputs[0][...] = inputs[0] * self.scale[0]


class Float64Output(Identity):
    def evaluate(self, inputs, outputs):
        outputs[0] = inputs[0].astype(np.float64) * 2     # FAULT: float64


class Accumulates(Identity):
    def evaluate(self, inputs, outputs):
        outputs[0] += inputs[0]                            # reads the output before ever writing it


class BadInit(Identity):
    def __init__(self, parameters):
        self.beta = parameters["beta"]                     # FAULT: bad-init


def the_problem(check, kind):
    matching = [p for p in check.problems if p.kind == kind]
    assert matching, f"no {kind} problem in {check.problems}"
    return matching[0]


def test_writing_into_an_input_is_found_at_its_line():
    check = wb.check_layer(WritesInput, [X])
    problem = the_problem(check, "mutated-input")
    assert check.kinds == ["mutated-input"]
    assert problem.method == "evaluate" and problem.location == line_of("writes-input")
    assert "WritesInput.evaluate" in problem.message and line_of("writes-input") in problem.message


def test_output_shapes_that_lie_are_a_shape_mismatch_naming_both_shapes():
    check = wb.check_layer(LyingShapes, [X])
    assert check.kinds == ["shape-mismatch"]
    problem = check.problems[0]
    assert problem.method == "output_shapes" and problem.location == line_of("lying-shapes")
    assert "declared [(2, 3, 4, 10)]" in problem.message and "needs [(2, 3, 4, 5)]" in problem.message


def test_half_an_output_left_unwritten():
    check = wb.check_layer(HalfUnwritten, [X])
    assert check.kinds == ["unwritten-output"]
    assert f"left {X.size - X.size // 5 * 2} of {X.size} elements" in check.problems[0].message
    assert check.problems[0].location.endswith(f":{HalfUnwritten.evaluate.__code__.co_firstlineno}")


def test_a_random_layer_is_nondeterministic():
    check = wb.check_layer(Random, [X])
    assert check.kinds == ["nondeterministic"]
    assert f"{X.size} of {X.size} elements differ" in check.problems[0].message


@pytest.mark.parametrize("cls,marker", [(ReturnsInput, "returns-input"), (ReturnsInputView, "returns-view")])
def test_an_output_that_is_the_input_is_aliased(cls, marker):
    check = wb.check_layer(cls, [X])
    assert check.kinds == ["aliased-output"]
    problem = check.problems[0]
    assert problem.location == line_of(marker) and "sharing memory with inputs[0]" in problem.message


def test_an_exception_names_the_method_and_the_line():
    check = wb.check_layer(Raises, [X])
    assert check.kinds == ["exception"]
    problem = check.problems[0]
    assert problem.method == "evaluate" and problem.location == line_of("raises")
    assert "KeyError" in problem.message and "'scale'" in problem.message
    init = wb.check_layer(BadInit, [X])
    assert init.kinds == ["exception"] and init.problems[0].method == "__init__"
    assert init.problems[0].location == line_of("bad-init")


def test_writing_into_a_weight_is_found_at_its_line():
    check = wb.check_layer(WritesWeight, [X], weights=[np.array([2.0], np.float32)])
    assert check.kinds == ["mutated-weight"]
    assert check.problems[0].method == "evaluate" and check.problems[0].location == line_of("writes-weight")


def test_replacing_an_output_with_float64_is_a_dtype_problem():
    check = wb.check_layer(Float64Output, [X])
    assert check.kinds == ["dtype"] and check.problems[0].location == line_of("float64")


def test_reading_an_output_before_writing_it_is_caught():
    check = wb.check_layer(Accumulates, [X])
    assert check.kinds == ["unwritten-output"]
    assert "previous contents" in check.problems[0].message


def test_every_kind_is_one_of_the_documented_kinds():
    found = set()
    for cls in (WritesInput, LyingShapes, HalfUnwritten, Random, ReturnsInput, Raises, Float64Output):
        found.update(wb.check_layer(cls, [X]).kinds)
    found.update(wb.check_layer(WritesWeight, [X], weights=[[2.0]]).kinds)
    assert found == set(KINDS)


# ------------------------------------------------------------------ correct layers pass clean

def test_correct_layers_from_layers_folder_pass_and_compute_torchs_values():
    x = RNG.normal(0, 3, (1, 4, 6, 7)).astype(np.float32)
    swish = wb.check_layer(layer_class("Swish"), [x], {"beta": 1.0})
    assert swish.ok, swish.problems
    np.testing.assert_allclose(swish.outputs[0], F.silu(torch.from_numpy(x)).numpy(), rtol=2e-5, atol=1e-6)
    mish = wb.check_layer(layer_class("Mish"), [x])
    assert mish.ok and mish.output_shapes == [x.shape]
    np.testing.assert_allclose(mish.outputs[0], F.mish(torch.from_numpy(x)).numpy(), rtol=2e-5, atol=1e-6)
    scale, bias = RNG.normal(size=4), RNG.normal(size=4)
    affine = wb.check_layer(layer_class("ChannelAffine"), [x], {"hasBias": True}, weights=[scale, bias])
    assert affine.ok, affine.problems
    reference = torch.from_numpy(x) * torch.tensor(scale, dtype=torch.float32).view(4, 1, 1) \
        + torch.tensor(bias, dtype=torch.float32).view(4, 1, 1)
    np.testing.assert_allclose(affine.outputs[0], reference.numpy(), rtol=1e-6, atol=1e-6)
    crop = wb.check_layer(layer_class("ResCropBlockLambda"), [x])
    assert crop.ok and crop.output_shapes == [(1, 4, 2, 3)]
    a, b = RNG.normal(size=(1, 1, 3, 5)).astype(np.float32), RNG.normal(size=(1, 1, 5, 2)).astype(np.float32)
    matmul = wb.check_layer(layer_class("dneprDroid_addmm"), [a, b])
    assert matmul.ok
    np.testing.assert_allclose(matmul.outputs[0], torch.from_numpy(a) @ torch.from_numpy(b), rtol=1e-5, atol=1e-6)


def test_bundled_example_layers_pass_clean():
    folder = examples.BUNDLED_LAYERS_DIR
    x = RNG.normal(size=(1, 8, 5, 5)).astype(np.float32)
    check = wb.check_layer(layer_class("ScaledSwish", folder), [x], {"channels": 8, "channel_axis": -3},
                           weights=[np.linspace(0.5, 2, 8), np.linspace(1.5, 0.5, 8)])
    assert check.ok, check.problems
    norm = wb.check_layer(layer_class("PixelNorm", folder), [x], {"epsilon": 1e-6, "channel_axis": -3})
    assert norm.ok
    t = torch.from_numpy(x)
    np.testing.assert_allclose(norm.outputs[0], (t * torch.rsqrt((t * t).mean(-3, keepdim=True) + 1e-6)).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_check_results_render_without_addresses():
    check = wb.check_layer(WritesInput, [X])
    text, markup = repr(check), check._repr_html_()
    assert "0x" not in text and "0x" not in markup
    assert "mutated-input" in markup and line_of("writes-input") in markup
    assert "ok" in wb.check_layer(Identity, [X])._repr_html_()


def test_check_layer_takes_a_class():
    with pytest.raises(wb.ImplementationError, match="takes a custom layer class"):
        wb.check_layer(Identity({}), [X])


# ------------------------------------------------------------------ model.check

def test_model_check_on_the_bundled_example_is_clean():
    model = wb.load(examples.example_path(), layers=examples.example_layers_dir())
    result = model.check()
    assert result.ok and [c.layer for c in result] == ["scaled_swish", "pixel_norm"]
    assert result["pixel_norm"].input_shapes == [(1, 16, 16, 16)]
    name, inputs, _ = examples.example_cases()[0]
    assert model.check(inputs).ok


@pytest.mark.parametrize("name,layers", [("hollance_NeuralMcNeuralNet.mlmodel", ["swish_1"]),
                                         ("dneprDroid_GridSample_model.mlmodel", ["22"])])
def test_model_check_on_corpus_models_with_the_shipped_layers(name, layers):
    model = wb.load(corpus(name), layers=LAYERS)
    result = model.check()
    assert result.ok, result.describe()
    assert [c.layer for c in result] == layers
    shapes = model.blob_shapes
    for check, record in zip(result, model.custom_layers):
        assert check.input_shapes == [shapes[b] for b in record.inputs]      # the model's own shapes


def test_model_check_finds_a_faulty_implementation_in_a_real_model():
    model = wb.load(examples.example_path(), layers={"ScaledSwish": WritesInput, "PixelNorm": Identity})
    result = model.check()
    assert not result.ok
    assert result["scaled_swish"].kinds == ["mutated-input"]
    assert result["scaled_swish"].input_shapes == [(1, 8, 32, 32)]
    assert result["pixel_norm"].ok
    assert "mutated-input" in result._repr_html_()


def test_model_check_checks_a_failing_layer_and_skips_what_follows():
    model = wb.load(custom_only_model(["Raises", "Identity"], input_shape=(2, 3)), layers=[Raises, Identity])
    result = model.check()
    assert result["layer0"].kinds == ["exception"]
    assert result["layer0"].problems[0].location == line_of("raises")
    assert "layer1" in result.skipped and "t0" in result.skipped["layer1"]
    assert not result.ok


def test_model_check_names_layers_without_implementation():
    model = wb.load(custom_only_model(["Identity", "NotWritten"], input_shape=(2, 3)), layers=[Identity])
    result = model.check()
    assert result["layer0"].ok
    assert "NotWritten" in result.skipped["layer1"]


def pipeline_spec(*class_names):
    """A pipeline x -> stage0 -> s0 -> stage1 -> ... -> y, one custom layer per stage (coremltools' builders)."""
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    from coremltools.models.pipeline import Pipeline
    from coremltools.proto import NeuralNetwork_pb2
    names = ["x"] + [f"s{i}" for i in range(len(class_names) - 1)] + ["y"]
    pipe = Pipeline([("x", datatypes.Array(2, 3))], [("y", datatypes.Array(2, 3))])
    for class_name, blob_in, blob_out in zip(class_names, names, names[1:]):
        builder = NeuralNetworkBuilder([(blob_in, datatypes.Array(2, 3))], [(blob_out, None)],
                                       disable_rank5_shape_mapping=True)
        params = NeuralNetwork_pb2.CustomLayerParams()
        params.className = class_name
        builder.add_custom(name="custom", input_names=[blob_in], output_names=[blob_out], custom_proto_spec=params)
        pipe.add_model(builder.spec)
    return pipe.spec


def test_check_model_covers_every_stage_of_a_pipeline():
    from workbench.testing import check_model
    model = wb.load(pipeline_spec("Identity", "WritesInput"), layers=[Identity, WritesInput])
    result = check_model(model)
    assert [c.layer for c in result] == ["model0/custom", "model1/custom"]
    assert result["model0/custom"].ok and result["model1/custom"].kinds == ["mutated-input"]
    assert result["model1/custom"].problems[0].location == line_of("writes-input")
    given = model.check({"x": np.ones((2, 3), np.float32)})        # the method, like Model.check
    assert given["model1/custom"].kinds == ["mutated-input"]
