"""Swish: y = x * sigmoid(beta * x), elementwise.

The activation of Ramachandran et al., "Searching for Activation Functions" (2017); with
beta = 1 it is SiLU. This is the layer of hollance/CoreML-Custom-Layers (NeuralMcNeuralNet.mlmodel,
where the Keras Lambda became className "Swish" with a double parameter "beta").
"""
import numpy as np

import workbench as wb


class Swish(wb.CustomLayer):

    def __init__(self, parameters):
        # Core ML hands over a double parameter as a Python float; a missing one means beta = 1.
        self.beta = float(parameters.get("beta", 1.0))

    def set_weight_data(self, weights):
        pass                                   # Swish has no learned weights

    def output_shapes(self, input_shapes):
        return [tuple(shape) for shape in input_shapes]        # elementwise: shapes unchanged

    def evaluate(self, inputs, outputs):
        # Like the author's Swift class, every input is mapped to the output with the same index.
        for x, y in zip(inputs, outputs):
            # sigmoid(z) = 1 / (1 + exp(-z)) overflows exp for z < -88 in float32. With
            # e = exp(-|z|) <= 1 it is 1 / (1 + e) for z >= 0 and e / (1 + e) for z < 0: no
            # overflow, and full precision at both ends.
            z = self.beta * x
            e = np.exp(-np.abs(z))
            sigmoid = np.where(z >= 0, 1, e) / (1 + e)
            np.multiply(x, sigmoid, out=y)
