"""ChannelAffine: y[c] = scale[c] * x[c] + bias[c], one learned scale and bias per channel.

A layer WITH weights, to show set_weight_data: the model file stores the scale vector (weights[0])
and, when the parameter "hasBias" is true (the default), the bias vector (weights[1]), both of
length C. It is the affine part of an inference-time batch norm (torch's FrozenBatchNorm2d folds
to it) and of Core ML's own "scale" layer with per-channel shapes.

Channels are axis -3: C of [Seq, Batch, C, H, W] in rank-5 models, and of [..., C, H, W] in
exact-rank ones. An input of rank below 3 is rejected: its channel axis would be a guess.
"""
import numpy as np

import workbench as wb


class ChannelAffine(wb.CustomLayer):

    def __init__(self, parameters):
        self.has_bias = bool(parameters.get("hasBias", True))

    def set_weight_data(self, weights):
        expected = 2 if self.has_bias else 1
        if len(weights) != expected:
            raise ValueError(f"expected {expected} weight blob(s) (scale{', bias' if self.has_bias else ''}), "
                             f"got {len(weights)}")
        scale = weights[0]
        bias = weights[1] if self.has_bias else np.zeros_like(scale)
        if bias.shape != scale.shape:
            raise ValueError(f"scale has {scale.size} values but bias has {bias.size}")
        # Weights arrive read-only and 1-D; keep them shaped [C, 1, 1] so they broadcast over
        # axis -3 of any input. reshape makes a view: nothing is copied, nothing written.
        self.scale = scale.reshape(-1, 1, 1)
        self.bias = bias.reshape(-1, 1, 1)

    def output_shapes(self, input_shapes):
        shape = tuple(input_shapes[0])
        if len(shape) < 3 or shape[-3] != self.scale.shape[0]:
            raise ValueError(f"input shape {shape} must have {self.scale.shape[0]} channels on axis -3 "
                             f"(one per scale value)")
        return [shape]

    def evaluate(self, inputs, outputs):
        np.multiply(inputs[0], self.scale, out=outputs[0])
        outputs[0] += self.bias
