"""wb.convert: PyTorch ops designated as custom layers, implemented in Python, agree with PyTorch.

The oracle is PyTorch itself: the converted model, with the custom layers implemented here (and
layers/Mish.py), must reproduce the module's outputs on the returned cases; the parameters and
weights in the model file must be the op's arguments as PyTorch holds them.
"""
import contextlib
import io
import json

import numpy as np
import pytest

import workbench as wb
from support import LAYERS

torch = pytest.importorskip("torch", reason="torch is needed to convert PyTorch modules")
F = torch.nn.functional


@torch.library.custom_op("wbtestconvert::affine_gate", mutates_args=())
def affine_gate(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, axis: int, invert: bool,
                mode: str) -> torch.Tensor:
    """y = x * g, g = act(scale[c] * x + bias[c]) (act: sigmoid or tanh), or 1 - g when invert."""
    shape = (-1,) + (1,) * (-axis - 1)
    z = scale.view(shape) * x + bias.view(shape)
    g = torch.sigmoid(z) if mode == "sigmoid" else torch.tanh(z)
    return x * (1 - g if invert else g)


@affine_gate.register_fake
def _(x, scale, bias, axis, invert, mode):
    return torch.empty_like(x)


class AffineGate(wb.CustomLayer):
    def __init__(self, parameters):
        self.axis, self.invert, self.mode = parameters["axis"], parameters["invert"], parameters["mode"]

    def set_weight_data(self, weights):
        self.scale, self.bias = weights

    def evaluate(self, inputs, outputs):
        x = inputs[0]
        shape = (-1,) + (1,) * (-self.axis - 1)
        z = self.scale.reshape(shape) * x + self.bias.reshape(shape)
        g = 1 / (1 + np.exp(-z)) if self.mode == "sigmoid" else np.tanh(z)
        outputs[0][...] = x * (1 - g if self.invert else g)


class GELU(wb.CustomLayer):
    """The tanh approximation of Hendrycks & Gimpel: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""

    def __init__(self, parameters):
        if parameters["approximate"] != "tanh":
            raise ValueError(f"only approximate='tanh' here, got {parameters['approximate']!r}")

    def evaluate(self, inputs, outputs):
        x = inputs[0].astype(np.float64)
        outputs[0][...] = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.scale = torch.nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.bias = torch.nn.Parameter(torch.linspace(-0.3, 0.3, 6))

    def forward(self, image):
        y = F.mish(self.conv(image))
        y = affine_gate(y, self.scale, self.bias, -3, True, "tanh")
        return F.gelu(y, approximate="tanh"), y.mean(dim=(2, 3))


CUSTOM_OPS = {
    F.mish: wb.CustomOp("Mish"),
    torch.ops.wbtestconvert.affine_gate: wb.CustomOp("AffineGate", parameters=["axis", "invert", "mode"],
                                                     description="gated by a learned affine map"),
    "aten::gelu": wb.CustomOp("GELU", parameters={"approximate": str}),
}


def quiet_convert(*args, **kwargs):
    with contextlib.redirect_stderr(io.StringIO()):          # coremltools' progress bars
        return wb.convert(*args, **kwargs)


def custom_params(model):
    return {layer.custom.className: layer.custom for layer in model.spec.neuralNetwork.layers
            if layer.WhichOneof("layer") == "custom"}


@pytest.fixture(scope="module")
def converted():
    net = Net().eval()
    example = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    model, cases = quiet_convert(net, example, CUSTOM_OPS, output_names=["activations", "pooled"],
                                 random_cases=3, layers=[LAYERS / "Mish.py", AffineGate, GELU])
    return net, model, cases


def test_designated_ops_become_custom_layers_with_their_arguments(converted):
    net, model, _ = converted
    params = custom_params(model)
    assert set(params) == {"Mish", "AffineGate", "GELU"}
    gate = params["AffineGate"]
    assert {k: (v.WhichOneof("value"), getattr(v, v.WhichOneof("value"))) for k, v in gate.parameters.items()} == {
        "axis": ("intValue", -3), "invert": ("boolValue", True), "mode": ("stringValue", "tanh")}
    assert gate.description == "gated by a learned affine map"
    np.testing.assert_array_equal(gate.weights[0].floatValue, net.scale.detach().numpy())
    np.testing.assert_array_equal(gate.weights[1].floatValue, net.bias.detach().numpy())
    assert params["GELU"].parameters["approximate"].stringValue == "tanh"
    assert not params["Mish"].parameters and not params["Mish"].weights
    assert "aten::mish" in params["Mish"].description               # the default names the op


def test_converted_model_with_python_layers_passes_the_pytorch_cases(converted):
    net, model, cases = converted
    assert [c.name for c in cases] == ["example", "random_1", "random_2", "random_3"]
    assert not model.missing_implementations()
    for case in cases:
        assert set(case.expected) == {"activations", "pooled"}
        outputs = model.predict(case.inputs)
        for name, expected in case.expected.items():
            rtol, atol = case.tolerance(name)
            np.testing.assert_allclose(outputs[name], expected, rtol=rtol, atol=atol, err_msg=f"{case.name} {name}")


def test_cases_hold_pytorch_outputs_on_distinct_inputs(converted):
    net, _, cases = converted
    images = [c.inputs["image"] for c in cases]
    assert all(x.shape == (1, 3, 8, 8) and x.dtype == np.float32 for x in images)
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])
    with torch.no_grad():
        activations, pooled = net(torch.from_numpy(images[2]))
    np.testing.assert_array_equal(cases[2].expected["pooled"], pooled.numpy())


def test_output_shapes_come_from_pytorch(converted):
    _, model, _ = converted
    shapes = {f.name: tuple(f.type.multiArrayType.shape) for f in model.spec.description.output}
    assert shapes == {"activations": (1, 6, 8, 8), "pooled": (1, 6)}


def test_converted_model_exports_swift_and_vectors_of_its_cases(converted, tmp_path):
    from workbench.export import read_vectors
    _, model, cases = converted
    paths = wb.export_swift(model, tmp_path, cases=cases)
    assert sorted(p.name for p in paths) == sorted(["Mish.swift", "AffineGate.swift", "GELU.swift", "Net.mlmodel",
                                                    "Net_vectors.json", "NetCustomLayerTests.swift"])
    gate = (tmp_path / "AffineGate.swift").read_text()
    assert "let invert: Bool" in gate and "let mode: String" in gate and "let axis: Int" in gate
    for back, case in zip(read_vectors(tmp_path / "Net_vectors.json"), cases):
        assert back.name == case.name
        np.testing.assert_array_equal(back.inputs["image"], case.inputs["image"])
        for name in ("activations", "pooled"):
            np.testing.assert_array_equal(back.expected[name], case.expected[name])
            assert back.tolerance(name) == case.tolerance(name)


# ---------------------------------------------------------------- names, layer names, in-place ops

def test_ops_are_named_in_every_form():
    from workbench.convert import qualified_name
    forms = [F.mish, torch.ops.aten.mish, torch.ops.aten.mish.default, "aten::mish", "aten.mish", "mish",
             "aten::mish_"]
    assert {qualified_name(f) for f in forms} == {"aten::mish"}
    assert qualified_name(affine_gate) == qualified_name(torch.ops.wbtestconvert.affine_gate) == \
        "wbtestconvert::affine_gate"


class Relu(wb.CustomLayer):
    def evaluate(self, inputs, outputs):
        np.maximum(inputs[0], 0, out=outputs[0])


def test_inplace_op_repeated_with_layer_names_and_fixed_parameter():
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(inplace=True), torch.nn.Linear(5, 3),
                              torch.nn.ReLU(inplace=True)).eval()
    model, cases = quiet_convert(net, torch.randn(2, 4), {"aten::relu": wb.CustomOp(
        "Relu", layer_name="act", parameters={"negative_slope": 0.0})}, random_cases=1, layers=[Relu])
    layers = [(l.name, l.custom.className) for l in model.spec.neuralNetwork.layers if l.WhichOneof("layer") == "custom"]
    assert layers == [("act", "Relu"), ("act_1", "Relu")]
    assert custom_params(model)["Relu"].parameters["negative_slope"].doubleValue == 0.0
    assert [f.name for f in model.spec.description.input] == ["input"]          # Sequential.forward(input)
    for case in cases:
        np.testing.assert_allclose(model.predict(case.inputs)["output"], case.expected["output"], rtol=1e-5, atol=1e-6)


def test_float_parameter_is_the_float32_pytorch_applies():
    net = torch.nn.Softplus(beta=0.7, threshold=15).eval()
    model, _ = quiet_convert(net, torch.randn(3, 5), {"aten::softplus": wb.CustomOp(
        "Softplus", parameters=[("beta", float), "threshold"])}, random_cases=0)
    params = custom_params(model)["Softplus"].parameters
    assert params["beta"].doubleValue == float(np.float32(0.7))       # MIL keeps float constants in fp32
    assert params["threshold"].WhichOneof("value") == "intValue"        # Softplus passes threshold as an int
    assert params["threshold"].intValue == 15


# ---------------------------------------------------------------- errors

def registry_state():
    from coremltools.converters.mil import Builder
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry
    return (dict(_TORCH_OPS_REGISTRY.name_to_func_mapping), dict(SSAOpRegistry.custom_ops),
            sorted(name for name in vars(Builder) if not name.startswith("__")))


def test_registries_are_left_as_found_after_success_and_failure(converted):
    before = registry_state()
    net = torch.nn.GELU(approximate="tanh").eval()
    quiet_convert(net, torch.randn(2, 3), {"aten::gelu": wb.CustomOp("GELU", parameters=["approximate"])},
                  random_cases=0)
    assert registry_state() == before
    with pytest.raises(wb.ConversionError, match="names no constant argument.*self, approximate"):
        quiet_convert(net, torch.randn(2, 3), {"aten::gelu": wb.CustomOp("GELU", parameters=["approx"])})
    assert registry_state() == before
    # and coremltools' own gelu translation is back: a plain conversion has no custom layer
    model, _ = quiet_convert(net, torch.randn(2, 3), random_cases=0)
    assert not model.custom_layers


def test_op_not_in_the_graph_lists_the_graph_ops_nearest_first():
    net = Net().eval()
    with pytest.raises(wb.ConversionError) as info:
        quiet_convert(net, torch.randn(1, 3, 8, 8), {"aten::mishh": wb.CustomOp("Mish")})
    message = str(info.value)
    assert "aten::mishh does not occur in the traced graph of Net" in message
    listed = message.split("nearest first: ")[1].split(", ")
    assert listed[0] == "aten::mish"
    assert set(listed) >= {"aten::gelu", "aten::_convolution", "wbtestconvert::affine_gate", "aten::mean"}


@pytest.mark.parametrize("kwargs, match", [
    ({"convert_to": "mlprogram"}, "custom layers exist only in NeuralNetwork"),
    ({"minimum_deployment_target": "iOS15"}, "iOS15.*ML Program"),
    ({"minimum_deployment_target": "macOS13"}, "ML Program"),
])
def test_targets_that_cannot_hold_custom_layers_are_refused(kwargs, match):
    import coremltools as ct
    if "minimum_deployment_target" in kwargs:
        kwargs = {"minimum_deployment_target": getattr(ct.target, kwargs["minimum_deployment_target"])}
    with pytest.raises(wb.ConversionError, match=match):
        wb.convert(torch.nn.Mish().eval(), torch.randn(2, 3), {"aten::mish": wb.CustomOp("Mish")}, **kwargs)


def test_an_older_target_converts():
    import coremltools as ct
    model, _ = quiet_convert(torch.nn.Mish().eval(), torch.randn(2, 3), {"aten::mish": wb.CustomOp("Mish")},
                             minimum_deployment_target=ct.target.iOS14, random_cases=0)
    assert [r.class_name for r in model.custom_layers] == ["Mish"]


def test_training_mode_and_bad_designations_are_refused():
    with pytest.raises(wb.ConversionError, match="training mode"):
        wb.convert(torch.nn.Mish(), torch.randn(2, 3), {"aten::mish": wb.CustomOp("Mish")})
    mish = torch.nn.Mish().eval()
    with pytest.raises(wb.ConversionError, match="expected wb.CustomOp"):
        quiet_convert(mish, torch.randn(2, 3), {"aten::mish": "Mish"})
    with pytest.raises(wb.ConversionError, match="must be an identifier"):
        quiet_convert(mish, torch.randn(2, 3), {"aten::mish": wb.CustomOp("my.Mish")})
    with pytest.raises(wb.ConversionError, match="parameter name 'name'"):
        quiet_convert(mish, torch.randn(2, 3), {"aten::mish": wb.CustomOp("Mish", parameters={"name": 1})})
    with pytest.raises(wb.ConversionError, match="no aten op of the same name"):
        quiet_convert(mish, torch.randn(2, 3), {(lambda x: x): wb.CustomOp("Mish")})


class ReflectPad(wb.CustomLayer):
    def __init__(self, parameters):
        self.left, self.right = json.loads(parameters["pad"])

    def output_shapes(self, input_shapes):
        *rest, width = input_shapes[0]
        return [(*rest, width + self.left + self.right)]

    def evaluate(self, inputs, outputs):
        x = inputs[0]
        outputs[0][...] = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(self.left, self.right)], mode="reflect")


def test_shape_changing_op_with_list_argument_recorded_as_json():
    """The custom layer's output shape (from PyTorch) feeds a flatten + linear that needs it exactly."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(2 * 9, 4)

        def forward(self, x):
            return self.head(F.pad(x, (1, 2), mode="reflect").flatten(1))
    ops = {"aten::pad": wb.CustomOp("ReflectPad", parameters={"pad": str, "mode": str})}
    model, cases = quiet_convert(Net().eval(), torch.randn(3, 2, 6), ops, random_cases=1, layers=[ReflectPad])
    params = custom_params(model)["ReflectPad"].parameters
    assert (params["pad"].stringValue, params["mode"].stringValue) == ("[1, 2]", "reflect")
    for case in cases:
        np.testing.assert_allclose(model.predict(case.inputs)["output"], case.expected["output"], rtol=1e-5, atol=1e-5)
    with pytest.raises(wb.ConversionError, match="not a bool, int, float or str"):
        quiet_convert(Net().eval(), torch.randn(3, 2, 6), {"aten::pad": wb.CustomOp("ReflectPad", parameters=["pad"])})
