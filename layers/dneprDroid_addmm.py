"""dneprDroid_addmm: the matrix product of its two inputs over their last two axes.

Half of dneprDroid/DeformConv2d-Metal's conversion of torchvision.ops.deform_conv2d: it multiplies
the convolution weights, viewed as [1, 1, outChannels, inChannels*kH*kW], by the im2col "columns"
that dneprDroid_deform_conv2d made, viewed as [1, 1, inChannels*kH*kW, outH*outW]. Despite its
name (torch.addmm is beta*bias + alpha*A@B) the bias is added by a separate add layer.

Output shape: the second input's shape with axis -2 replaced by the first input's rows (the
author's Swift class always wrote 1 there, which is right for their single output channel);
leading axes broadcast as in numpy.matmul.
"""
import numpy as np

import workbench as wb


class dneprDroid_addmm(wb.CustomLayer):

    def __init__(self, parameters):
        pass                                   # no parameters

    def set_weight_data(self, weights):
        pass                                   # no weights: both factors are inputs

    def output_shapes(self, input_shapes):
        a, b = (tuple(s) for s in input_shapes)
        if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
            raise ValueError(f"cannot multiply shapes {a} and {b}: the last axis of the first "
                             f"must equal the second-to-last axis of the second")
        leading = np.broadcast_shapes(a[:-2], b[:-2])
        return [(*leading, a[-2], b[-1])]

    def evaluate(self, inputs, outputs):
        np.matmul(inputs[0], inputs[1], out=outputs[0])
