"""The bundled example model: its file, its custom layer implementations, and the whole model vs PyTorch."""
import contextlib
import importlib.util
import io

import numpy as np
import pytest

import workbench as wb
from workbench import examples

CLASS_NAMES = ("ScaledSwish", "PixelNorm")


def load_spec(path):
    from coremltools.proto import Model_pb2
    spec = Model_pb2.Model()
    spec.ParseFromString(path.read_bytes())
    return spec


def custom_layers(spec):
    return {layer.name: layer for layer in spec.neuralNetwork.layers if layer.WhichOneof("layer") == "custom"}


def param_value(p):
    return getattr(p, p.WhichOneof("value"))


def bundled_class(class_name):
    """The implementation from workbench/examples/layers/<className>.py, imported by path like the registry."""
    path = examples.BUNDLED_LAYERS_DIR / f"{class_name}.py"
    spec = importlib.util.spec_from_file_location(f"_example_layer_{class_name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, class_name)


def run_layer(cls, parameters, weights, inputs):
    """Drive an implementation in MLCustomLayer order, with read-only inputs and weights."""
    def frozen(a):
        a = np.array(a, dtype=np.float32)
        a.setflags(write=False)
        return a
    layer = cls(dict(parameters))
    layer.set_weight_data([frozen(w).ravel() for w in weights])
    inputs = [frozen(x) for x in inputs]
    shapes = layer.output_shapes([x.shape for x in inputs])
    outputs = [np.full(s, np.nan, np.float32) for s in shapes]
    layer.evaluate(inputs, outputs)
    return outputs


def relative_error(actual, expected):
    scale = max(float(np.abs(expected).max()), 1e-12)
    return float(np.abs(np.asarray(actual, np.float64) - expected).max()) / scale


@pytest.fixture(scope="module")
def build_example():
    """The build script; its torch.library ops are the reference the custom layers must match."""
    pytest.importorskip("torch")
    from workbench.examples import build_example as module
    return module


# ---------------------------------------------------------------- the model file

def test_model_file_parses_and_is_small():
    path = examples.example_path()
    assert path.stat().st_size < 200_000
    spec = load_spec(path)
    assert spec.specificationVersion >= 4                 # exact-rank (coremltools 4+) model
    assert [f.name for f in spec.description.input] == ["image"]
    assert list(spec.description.input[0].type.multiArrayType.shape) == [1, 3, 32, 32]
    assert [f.name for f in spec.description.output] == ["logits"]
    assert spec.WhichOneof("Type") == "neuralNetwork"


def test_model_has_two_custom_layers_one_with_parameters_and_weights():
    layers = custom_layers(load_spec(examples.example_path()))
    assert len(layers) >= 2
    by_class = {layer.custom.className: layer.custom for layer in layers.values()}
    assert set(by_class) == set(CLASS_NAMES)

    swish = by_class["ScaledSwish"]
    assert {k: param_value(v) for k, v in swish.parameters.items()} == {"channels": 8, "channel_axis": -3}
    assert swish.parameters["channels"].WhichOneof("value") == "intValue"
    assert [len(w.floatValue) for w in swish.weights] == [8, 8]
    assert swish.description

    norm = by_class["PixelNorm"]
    assert norm.parameters["epsilon"].WhichOneof("value") == "doubleValue"
    assert norm.parameters["epsilon"].doubleValue == pytest.approx(1e-6, rel=1e-6)
    assert len(norm.weights) == 0


def test_example_cases_pair_inputs_with_expected_outputs():
    cases = examples.example_cases()
    assert [name for name, _, _ in cases] == ["noise", "waves", "checker"]
    for name, inputs, expected in cases:
        assert set(inputs) == {"image"} and inputs["image"].shape == (1, 3, 32, 32)
        assert set(expected) == {"logits"} and expected["logits"].shape == (1, 10)
        assert inputs["image"].dtype == expected["logits"].dtype == np.float32
    blobs = set(examples.example_cases(include_intermediates=True)[0][2])
    layers = custom_layers(load_spec(examples.example_path())).values()
    assert {b for layer in layers for b in (*layer.input, *layer.output)} <= blobs


def test_example_layers_dir_falls_back_to_the_bundled_copies():
    assert examples.example_layers_dir() in (examples.EXAMPLE_LAYERS_DIR, examples.BUNDLED_LAYERS_DIR)
    for name in CLASS_NAMES:
        assert (examples.BUNDLED_LAYERS_DIR / f"{name}.py").is_file()
        assert (examples.example_layers_dir() / f"{name}.py").is_file()


# ---------------------------------------------------------------- the implementations vs torch

SHAPES = [(1, 8, 32, 32), (2, 8, 5, 7), (1, 1, 8, 4, 4), (8, 3, 1)]   # exact rank, batch 2, rank-5, rank-3


@pytest.mark.parametrize("shape", SHAPES)
def test_scaled_swish_matches_torch(build_example, shape):
    import torch
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    x.flat[:4] = [80.0, -80.0, 0.0, 1e-3]                   # saturated sigmoid must not overflow
    beta = rng.uniform(-2, 3, 8).astype(np.float32)
    gain = rng.uniform(-1, 2, 8).astype(np.float32)
    expected = build_example.scaled_swish_op(torch.from_numpy(x), torch.from_numpy(beta), torch.from_numpy(gain)).numpy()
    (out,) = run_layer(bundled_class("ScaledSwish"), {"channels": 8, "channel_axis": -3}, [beta, gain], [x])
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("epsilon", [1e-6, 0.5])
def test_pixel_norm_matches_torch(build_example, shape, epsilon):
    import torch
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x[..., 0, 0] = 0.0 if len(shape) > 3 else x[..., 0, 0]  # an all-zero pixel: epsilon keeps it finite
    expected = build_example.pixel_norm_op(torch.from_numpy(x), epsilon).numpy()
    (out,) = run_layer(bundled_class("PixelNorm"), {"epsilon": epsilon, "channel_axis": -3}, [], [x])
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_implementations_reject_inconsistent_weights_and_shapes():
    swish = bundled_class("ScaledSwish")({"channels": 8, "channel_axis": -3})
    with pytest.raises(ValueError, match="beta"):
        swish.set_weight_data([np.ones(7, np.float32), np.ones(8, np.float32)])
    with pytest.raises(ValueError, match="2 weight"):
        swish.set_weight_data([np.ones(8, np.float32)])
    swish.set_weight_data([np.ones(8, np.float32), np.ones(8, np.float32)])
    with pytest.raises(ValueError, match="size 8"):
        swish.output_shapes([(1, 4, 2, 2)])
    with pytest.raises(ValueError, match="no weights"):
        bundled_class("PixelNorm")({"epsilon": 1e-6}).set_weight_data([np.ones(1, np.float32)])


def test_implementations_are_named_for_their_class_names():
    for name in CLASS_NAMES:
        cls = bundled_class(name)
        assert issubclass(cls, wb.CustomLayer) and cls.__name__ == name


# ---------------------------------------------------------------- the whole model through the workbench

@pytest.fixture(scope="module")
def example_model():
    return wb.load(examples.example_path(), layers=examples.BUNDLED_LAYERS_DIR)


def test_model_lists_its_custom_layers(example_model):
    records = {r.class_name: r for r in example_model.custom_layers}
    assert set(records) == set(CLASS_NAMES)
    assert all(r.implementation is not None for r in records.values())
    assert records["ScaledSwish"].parameters == {"channels": 8, "channel_axis": -3}


@pytest.mark.parametrize("case", examples.example_cases(include_intermediates=True), ids=lambda c: c[0])
def test_whole_model_matches_pytorch(example_model, case):
    name, inputs, expected = case
    outputs = example_model.predict(inputs)
    assert relative_error(outputs["logits"], expected["logits"]) < 1e-4
    traced = example_model.trace(inputs)
    for blob, value in expected.items():           # the custom layers' inputs and outputs, by blob name
        assert relative_error(np.reshape(traced[blob], value.shape), value) < 1e-4, blob


def test_whole_model_runs_from_the_default_layers_dir():
    model = wb.load(examples.example_path(), layers=examples.example_layers_dir())
    name, inputs, expected = examples.example_cases()[0]
    assert relative_error(model.predict(inputs)["logits"], expected["logits"]) < 1e-4


# ---------------------------------------------------------------- the build is reproducible

def test_rebuilding_reproduces_the_shipped_model_and_outputs(build_example, tmp_path):
    """Fixed seeds: a rebuild gives the same network and the same PyTorch outputs (~2 s)."""
    with contextlib.redirect_stderr(io.StringIO()):             # conversion progress bars
        model_path, cases_path = build_example.build(tmp_path)
    shipped, rebuilt = load_spec(examples.example_path()), load_spec(model_path)
    assert rebuilt.neuralNetwork == shipped.neuralNetwork, \
        "the shipped example.mlmodel is stale: run python -m workbench.examples.build_example"
    for spec in (shipped, rebuilt):                             # converter/torch versions may differ
        spec.description.metadata.ClearField("userDefined")
    assert rebuilt.description == shipped.description
    with np.load(cases_path) as new, np.load(examples.HERE / "example_cases.npz") as old:
        assert new.files == old.files
        for key in old.files:
            np.testing.assert_allclose(new[key], old[key], rtol=1e-6, atol=1e-7, err_msg=key)
