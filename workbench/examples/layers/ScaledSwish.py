"""ScaledSwish: y = gain[c] * x * sigmoid(beta[c] * x), a Swish with learned sharpness and scale per channel.

Parameters: ``channels`` (int, how many weights each tensor holds), ``channel_axis`` (int, counted
from the end, -3 for [.., C, H, W] in both exact-rank and rank-5 models).
Weights, in file order: ``beta`` (C), ``gain`` (C).
"""
import numpy as np

import workbench as wb


class ScaledSwish(wb.CustomLayer):
    def __init__(self, parameters):
        super().__init__(parameters)
        self.channels = int(parameters["channels"])
        self.channel_axis = int(parameters.get("channel_axis", -3))
        if self.channel_axis >= 0:
            raise ValueError(f"channel_axis must count from the end (negative), got {self.channel_axis}")

    def set_weight_data(self, weights):
        if len(weights) != 2:
            raise ValueError(f"expected 2 weight tensors (beta, gain), got {len(weights)}")
        for name, w in zip(("beta", "gain"), weights):
            if w.size != self.channels:
                raise ValueError(f"{name} has {w.size} values for {self.channels} channels")
        # Shaped (C, 1, ..., 1) once, so they broadcast against [.., C, H, W] from the end.
        shape = (self.channels,) + (1,) * (-self.channel_axis - 1)
        # Halved once, for sigmoid(z) = (1 + tanh(z / 2)) / 2 in evaluate.
        self.half_beta = 0.5 * np.asarray(weights[0], np.float32).reshape(shape)
        self.half_gain = 0.5 * np.asarray(weights[1], np.float32).reshape(shape)

    def output_shapes(self, input_shapes):
        shape = tuple(input_shapes[0])
        if len(shape) < -self.channel_axis or shape[self.channel_axis] != self.channels:
            raise ValueError(f"input shape {shape} has no axis {self.channel_axis} of size {self.channels}")
        return [shape]

    def evaluate(self, inputs, outputs):
        x, y = inputs[0], outputs[0]
        # gain * x * (1 + tanh(beta * x / 2)) / 2: tanh cannot overflow for large |x|, unlike exp(-x).
        np.multiply(self.half_beta, x, out=y)
        np.tanh(y, out=y)
        y += 1.0
        y *= x
        y *= self.half_gain
