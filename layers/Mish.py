"""Mish: y = x * tanh(softplus(x)), with softplus(x) = log(1 + exp(x)), elementwise.

Misra, "Mish: A Self Regularized Non-Monotonic Activation Function" (2019); torch.nn.functional.mish.
Core ML's NeuralNetwork has no Mish activation, so converters emit it as a custom layer.
"""
import numpy as np

import workbench as wb


class Mish(wb.CustomLayer):

    def __init__(self, parameters):
        pass                                   # no parameters

    def set_weight_data(self, weights):
        pass                                   # no weights

    def output_shapes(self, input_shapes):
        return [tuple(shape) for shape in input_shapes]        # elementwise: shapes unchanged

    def evaluate(self, inputs, outputs):
        x = inputs[0]
        # logaddexp(0, x) = log(exp(0) + exp(x)) is softplus without overflow for large x.
        softplus = np.logaddexp(np.float32(0), x)
        np.multiply(x, np.tanh(softplus), out=outputs[0])
