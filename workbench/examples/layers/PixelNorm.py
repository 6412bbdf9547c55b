"""PixelNorm: y = x / sqrt(mean over channels of x^2 + epsilon), ProGAN's per-pixel feature normalisation.

Parameters: ``epsilon`` (double), ``channel_axis`` (int, counted from the end, -3 for [.., C, H, W]
in both exact-rank and rank-5 models). No weights.
"""
import numpy as np

import workbench as wb


class PixelNorm(wb.CustomLayer):
    def __init__(self, parameters):
        super().__init__(parameters)
        self.epsilon = np.float32(parameters.get("epsilon", 1e-8))
        self.channel_axis = int(parameters.get("channel_axis", -3))
        if self.channel_axis >= 0:
            raise ValueError(f"channel_axis must count from the end (negative), got {self.channel_axis}")

    def set_weight_data(self, weights):
        if len(weights):
            raise ValueError(f"PixelNorm takes no weights, got {len(weights)}")

    def output_shapes(self, input_shapes):
        shape = tuple(input_shapes[0])
        if len(shape) < -self.channel_axis:
            raise ValueError(f"input shape {shape} has no axis {self.channel_axis}")
        return [shape]

    def evaluate(self, inputs, outputs):
        x, y = inputs[0], outputs[0]
        mean_square = np.mean(np.square(x), axis=self.channel_axis, keepdims=True)
        mean_square += self.epsilon
        np.sqrt(mean_square, out=mean_square)
        np.divide(x, mean_square, out=y)
