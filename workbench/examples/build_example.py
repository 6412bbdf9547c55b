"""Build the bundled example: a tiny CNN whose two ops Core ML has no built-in for become custom layers.

    python -m workbench.examples.build_example [--out DIR]

The network (input ``image`` 1x3x32x32, output ``logits`` 1x10)::

    conv 3->8 -> ScaledSwish -> maxpool 2 -> conv 8->16 -> PixelNorm -> global avg pool -> linear 16->10

- ``ScaledSwish``: ``y = gain[c] * x * sigmoid(beta[c] * x)``, a Swish whose sharpness ``beta`` and
  scale ``gain`` are learned per channel. Custom layer with parameters (``channels``,
  ``channel_axis``) AND weights (``beta``, ``gain``, in that file order).
- ``PixelNorm``: ``y = x / sqrt(mean_c(x^2) + epsilon)``, the per-pixel channel normalisation of
  ProGAN. Custom layer with parameters only (``epsilon``, ``channel_axis``).

How the custom layers are made: each op is a ``torch.library`` custom op (namespace ``wbexample``),
so PyTorch computes the reference outputs and ``torch.jit.trace`` records it as one node
``wbexample::<op>``; ``wb.convert`` (workbench/convert.py) then designates both nodes as custom layers
with ``wb.CustomOp`` (coremltools' "Custom Operators" workflow: a MIL op registered with
``register_op(is_custom_op=True)`` whose ``bindings`` carry className, parameters, weights and
description, and a ``register_torch_op`` translation, for the duration of the call). The constant
tensor arguments ``beta``/``gain`` become the ScaledSwish layer's weights, in argument order.

Deterministic: fixed seeds, no conversion date in the metadata, maps serialised in sorted order,
so a rebuild with the same torch and coremltools gives byte-identical files.
"""
import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
MODEL_FILE = "example.mlmodel"
CASES_FILE = "example_cases.npz"

SEED = 20240501
INPUT_NAME, OUTPUT_NAME = "image", "logits"
INPUT_SHAPE = (1, 3, 32, 32)
CHANNEL_AXIS = -3            # channels counted from the end: right for NCHW and for Core ML's rank-5 blobs
PIXEL_NORM_EPSILON = 1e-6     # stored as the double nearest float32(1e-6): MIL keeps float consts in fp32,
                              # and that float32 value is also what PyTorch adds to a float32 tensor

# Names the converted layers (and their output blobs) get in the .mlmodel.
SWISH_LAYER, PIXEL_NORM_LAYER = "scaled_swish", "pixel_norm"


# ---------------------------------------------------------------- the ops, in PyTorch

def _define_torch_ops():
    """Register the two torch.library custom ops once per process; return (scaled_swish, pixel_norm)."""
    existing = getattr(torch.ops, "wbexample", None)
    if existing is not None and hasattr(existing, "scaled_swish") and hasattr(existing, "pixel_norm"):
        return existing.scaled_swish, existing.pixel_norm

    @torch.library.custom_op("wbexample::scaled_swish", mutates_args=())
    def scaled_swish(x: torch.Tensor, beta: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (-CHANNEL_AXIS - 1)
        return gain.view(shape) * x * torch.sigmoid(beta.view(shape) * x)

    @scaled_swish.register_fake
    def _(x, beta, gain):
        return torch.empty_like(x)

    @torch.library.custom_op("wbexample::pixel_norm", mutates_args=())
    def pixel_norm(x: torch.Tensor, epsilon: float) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=CHANNEL_AXIS, keepdim=True) + epsilon)

    @pixel_norm.register_fake
    def _(x, epsilon):
        return torch.empty_like(x)

    return torch.ops.wbexample.scaled_swish, torch.ops.wbexample.pixel_norm


scaled_swish_op, pixel_norm_op = _define_torch_ops()


class ScaledSwish(nn.Module):
    """Learned per-channel Swish; the parameters start away from 1 so the weights matter."""

    def __init__(self, channels):
        super().__init__()
        self.beta = nn.Parameter(torch.empty(channels).uniform_(0.5, 2.0))
        self.gain = nn.Parameter(torch.empty(channels).uniform_(0.5, 1.5))

    def forward(self, x):
        return scaled_swish_op(x, self.beta, self.gain)


class PixelNorm(nn.Module):
    def __init__(self, epsilon=PIXEL_NORM_EPSILON):
        super().__init__()
        self.epsilon = float(epsilon)

    def forward(self, x):
        return pixel_norm_op(x, self.epsilon)


class ExampleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.swish = ScaledSwish(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.norm = PixelNorm()
        self.head = nn.Linear(16, 10)

    def stages(self, image):
        """Every intermediate the custom layers see, by role; forward returns the last."""
        s = {"conv1": self.conv1(image)}
        s["swish"] = self.swish(s["conv1"])
        s["conv2"] = self.conv2(self.pool(s["swish"]))
        s["norm"] = self.norm(s["conv2"])
        s["logits"] = self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(s["norm"], 1), 1))
        return s

    def forward(self, image):
        return self.stages(image)["logits"]


# Which stage feeds / comes out of each custom layer, to name the intermediates by blob.
LAYER_STAGES = {SWISH_LAYER: ("conv1", "swish"), PIXEL_NORM_LAYER: ("conv2", "norm")}


def build_module():
    """The example network with its fixed, seeded weights, in eval mode."""
    torch.manual_seed(SEED)
    return ExampleNet().eval()


def make_inputs():
    """A few deterministic test images, by case name: noise, a smooth pattern, a hard-edged one."""
    rng = np.random.default_rng(SEED)
    h, w = INPUT_SHAPE[2:]
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    waves = np.stack([np.sin(3 * math.pi * xx), np.cos(2 * math.pi * yy), xx * yy])[None]
    checker = ((np.indices((h, w)).sum(0) // 4) % 2 * 2.0 - 1.0)[None, None].repeat(3, 1)
    checker = checker * np.array([1.0, -0.5, 2.0]).reshape(1, 3, 1, 1)
    images = {
        "noise": rng.standard_normal(INPUT_SHAPE),
        "waves": waves,
        "checker": checker,
    }
    return {name: {INPUT_NAME: img.astype(np.float32)} for name, img in images.items()}


def reference_outputs(module, inputs):
    """PyTorch's outputs: {stage name: array} for one case."""
    with torch.no_grad():
        stages = module.stages(torch.from_numpy(inputs[INPUT_NAME]))
    return {k: v.numpy().astype(np.float32) for k, v in stages.items()}


# ---------------------------------------------------------------- the ops, as Core ML custom layers

def custom_ops():
    """The two ops, designated as custom layers for ``wb.convert``."""
    from workbench.convert import CustomOp
    return {
        scaled_swish_op: CustomOp(
            "ScaledSwish", layer_name=SWISH_LAYER,
            parameters={"channels": lambda args: args["beta"].size, "channel_axis": CHANNEL_AXIS},
            description="y = gain[c] * x * sigmoid(beta[c] * x): Swish with a learned sharpness "
                        "(weights[0] = beta) and scale (weights[1] = gain) per channel"),
        pixel_norm_op: CustomOp(
            "PixelNorm", layer_name=PIXEL_NORM_LAYER,
            parameters={"epsilon": float, "channel_axis": CHANNEL_AXIS},
            description="y = x / sqrt(mean over channels of x^2 + epsilon): per-pixel feature normalisation"),
    }


def convert(module):
    """Trace and convert to a NeuralNetwork spec with the two custom layers; return the spec."""
    from workbench.convert import convert as convert_module

    first_case = next(iter(make_inputs().values()))
    model, _ = convert_module(module, first_case, custom_ops(), output_names=[OUTPUT_NAME], random_cases=0)
    spec = model.spec
    describe(spec, output_shape=reference_outputs(module, first_case)["logits"].shape)
    check_custom_layers(spec)
    return spec


def describe(spec, output_shape):
    """Metadata shown by model viewers and by the workbench inspector; no date, so rebuilds are identical."""
    spec.description.metadata.userDefined.pop("com.github.apple.coremltools.conversion_date", None)
    spec.description.metadata.shortDescription = (
        "coreml-workbench example: a tiny CNN with two custom layers, ScaledSwish (parameters + weights) "
        "and PixelNorm (parameters). Built by workbench/examples/build_example.py.")
    spec.description.metadata.author = "coreml-workbench"
    spec.description.metadata.license = "BSD-3-Clause"
    for feature in spec.description.input:
        feature.shortDescription = "image, NCHW float32, values roughly in [-2, 2]"
    for feature in spec.description.output:
        feature.type.multiArrayType.shape[:] = output_shape       # the converter leaves it open
        feature.shortDescription = "class scores (10 classes, untrained), before softmax"


def check_custom_layers(spec):
    """Fail the build loudly if the converter did not emit the custom layers as intended."""
    layers = {layer.name: layer for layer in spec.neuralNetwork.layers}
    swish, norm = layers.get(SWISH_LAYER), layers.get(PIXEL_NORM_LAYER)
    if swish is None or norm is None or swish.WhichOneof("layer") != "custom" or norm.WhichOneof("layer") != "custom":
        raise RuntimeError(f"expected custom layers {SWISH_LAYER!r} and {PIXEL_NORM_LAYER!r}, got "
                           f"{[(l.name, l.WhichOneof('layer')) for l in spec.neuralNetwork.layers]}")
    if swish.custom.className != "ScaledSwish" or len(swish.custom.weights) != 2:
        raise RuntimeError(f"ScaledSwish layer lost its className or weights: {swish.custom}")
    if norm.custom.className != "PixelNorm" or len(norm.custom.weights) != 0:
        raise RuntimeError(f"PixelNorm layer is not as built: {norm.custom}")


# ---------------------------------------------------------------- writing

def blob_intermediates(spec, stages):
    """The custom layers' input and output blobs, by blob name, from PyTorch's stages."""
    layers = {layer.name: layer for layer in spec.neuralNetwork.layers}
    out = {}
    for layer_name, (before, after) in LAYER_STAGES.items():
        layer = layers[layer_name]
        out[layer.input[0]] = stages[before]
        out[layer.output[0]] = stages[after]
    return out


def case_arrays(spec, module):
    """npz entries: ``<case>/input/<name>``, ``<case>/expected/<name>``, ``<case>/intermediate/<blob>``."""
    arrays = {}
    for case, inputs in make_inputs().items():
        stages = reference_outputs(module, inputs)
        for name, value in inputs.items():
            arrays[f"{case}/input/{name}"] = value
        arrays[f"{case}/expected/{OUTPUT_NAME}"] = stages["logits"]
        for blob, value in blob_intermediates(spec, stages).items():
            arrays[f"{case}/intermediate/{blob}"] = value
    return arrays


def build(out_dir=HERE):
    """Build the model and its test cases into ``out_dir``; return (model path, cases path)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module = build_module()
    spec = convert(module)
    model_path, cases_path = out_dir / MODEL_FILE, out_dir / CASES_FILE
    model_path.write_bytes(spec.SerializeToString(deterministic=True))
    np.savez_compressed(cases_path, **case_arrays(spec, module))
    return model_path, cases_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: the package's own)")
    args = parser.parse_args(argv)
    for path in build(args.out):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    sys.exit(main())
