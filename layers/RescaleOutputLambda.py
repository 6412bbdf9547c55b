"""RescaleOutputLambda: y = (x + 1) * 127.5, elementwise.

From Packt's "Machine Learning with Core ML" (chapter 6, fast style transfer): the network ends in
tanh, whose [-1, 1] range this Keras Lambda maps onto the pixel range [0, 255] for the output image.
"""
import numpy as np

import workbench as wb


class RescaleOutputLambda(wb.CustomLayer):

    def __init__(self, parameters):
        pass                                   # the model gives no parameters

    def set_weight_data(self, weights):
        pass                                   # no weights

    def output_shapes(self, input_shapes):
        return [tuple(input_shapes[0])]        # elementwise: shape unchanged

    def evaluate(self, inputs, outputs):
        np.add(inputs[0], np.float32(1), out=outputs[0])
        outputs[0] *= np.float32(127.5)        # in place: no temporary image
