"""ResCropBlockLambda: crops 2 pixels from every spatial border (H and W shrink by 4).

From Packt's "Machine Learning with Core ML" (chapter 6, fast style transfer). In Keras the layer
is the Lambda ``x[:, 2:-2, 2:-2]`` on an NHWC tensor: it trims the shortcut of a residual block
whose two 3x3 'valid' convolutions made the main branch 4 pixels smaller. The Core ML model is
rank-5, so the layer sees [Seq, Batch, C, H, W]; H and W are the last two axes there (and in any
exact-rank CHW/NCHW layout), so the crop is ``x[..., 2:-2, 2:-2]``.
"""
import workbench as wb


class ResCropBlockLambda(wb.CustomLayer):

    def __init__(self, parameters):
        # The published model has no parameters; "crop" lets a model choose another border width.
        self.crop = int(parameters.get("crop", 2))

    def set_weight_data(self, weights):
        pass                                   # no weights

    def output_shapes(self, input_shapes):
        *leading, height, width = input_shapes[0]
        # A Python slice 2:-2 of a length-n axis has max(0, n - 4) elements.
        return [(*leading, max(0, height - 2 * self.crop), max(0, width - 2 * self.crop))]

    def evaluate(self, inputs, outputs):
        c = self.crop
        x = inputs[0]
        outputs[0][...] = x[..., c:x.shape[-2] - c, c:x.shape[-1] - c]
