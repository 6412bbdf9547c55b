"""dneprDroid_deform_conv2d: the im2col "columns" of torchvision's deformable convolution (DCNv2).

From dneprDroid/DeformConv2d-Metal, whose converter splits torchvision.ops.deform_conv2d into this
layer, a reshape, dneprDroid_addmm (weights @ columns) and a bias add. The formula is
torchvision's deformable_im2col (Dai et al. 2017, Zhu et al. 2019 for the mask):

    columns[c*kH*kW + i*kW + j, (n*outH + oy)*outW + ox] =
        mask[n, g, i*kW + j, oy, ox] * bilinear(input[n, c],
            y = oy*strideH - padH + i*dilationH + offset[n, g, i*kW + j, dy, oy, ox],
            x = ox*strideW - padW + j*dilationW + offset[n, g, i*kW + j, dx, oy, ox])

where g = c // (inChannels / deformableGroup) is the offset group of channel c, the offsets hold
(dy, dx) pairs per kernel tap, and bilinear() reads 0 for pixels outside the image. Then
weights[outC, C*kH*kW] @ columns is the convolution.

Offsets and mask are constants of the model: its two weight blobs (offsets first) in torchvision's
layout [parallelImgs, deformableGroup*2*kH*kW, outH, outW] and [.., deformableGroup*kH*kW, ..];
the string parameters offsetShape and maskShape (JSON lists) state their shapes. The output has
the shape of the string parameter outShape (the author's converter writes [1, 1, C*kH*kW, outW,
outH]); its values are the columns in torchvision's order, so the reshape that follows, to
[.., C*kH*kW, outH*outW], sees exactly torchvision's columns matrix.
"""
import json

import numpy as np

import workbench as wb


class dneprDroid_deform_conv2d(wb.CustomLayer):

    def __init__(self, parameters):
        p = parameters
        self.channels, self.height, self.width = int(p["inChannels"]), int(p["height"]), int(p["width"])
        self.kernel = (int(p["weightH"]), int(p["weightW"]))
        self.pad = (int(p["padH"]), int(p["padW"]))
        self.stride = (int(p["strideH"]), int(p["strideW"]))
        self.dilation = (int(p["dilationH"]), int(p["dilationW"]))
        self.out_h, self.out_w = int(p["outH"]), int(p["outW"])
        self.groups = int(p.get("deformableGroup", 1))
        self.images = int(p.get("parallelImgs", 1))
        self.use_mask = bool(p.get("useMask", True))
        self.out_shape = tuple(json.loads(p["outShape"]))
        self.blob_shapes = [tuple(json.loads(p[k])) for k in ("offsetShape", "maskShape") if k in p]
        if self.channels % self.groups:
            raise ValueError(f"inChannels {self.channels} is not divisible by deformableGroup {self.groups}")
        taps = self.kernel[0] * self.kernel[1]
        rows = self.channels * taps
        if int(np.prod(self.out_shape)) != rows * self.images * self.out_h * self.out_w:
            raise ValueError(f"outShape {list(self.out_shape)} does not hold the {rows} x "
                             f"{self.images * self.out_h * self.out_w} columns matrix")

    def set_weight_data(self, weights):
        taps = self.kernel[0] * self.kernel[1]
        points = self.out_h * self.out_w
        expected = 2 if self.use_mask else 1
        if len(weights) < expected:
            raise ValueError(f"expected {expected} weight blobs (offsets{', mask' if self.use_mask else ''}), "
                             f"got {len(weights)}")
        for blob, shape in zip(weights, self.blob_shapes):
            if blob.size != int(np.prod(shape)):
                raise ValueError(f"a weight blob holds {blob.size} values, but its shape parameter "
                                 f"says {list(shape)}")
        offsets = weights[0]
        if offsets.size != self.images * self.groups * taps * 2 * points:
            raise ValueError(f"offsets hold {offsets.size} values, expected parallelImgs {self.images} x "
                             f"{self.groups * 2 * taps} x {self.out_h} x {self.out_w}")
        # torchvision's offset channels are, per group, (dy, dx) pairs for each kernel tap.
        offsets = offsets.reshape(self.images, self.groups, taps, 2, points)
        if self.use_mask:
            mask = weights[1]
            if mask.size != self.images * self.groups * taps * points:
                raise ValueError(f"mask holds {mask.size} values, expected parallelImgs {self.images} x "
                                 f"{self.groups * taps} x {self.out_h} x {self.out_w}")
            self.mask = mask.reshape(self.images, self.groups, 1, taps, points)
        else:
            self.mask = None

        # The sampling positions never change (offsets are constants): compute them once here.
        i, j = np.divmod(np.arange(taps), self.kernel[1])                      # tap -> kernel row, col
        oy, ox = np.divmod(np.arange(points), self.out_w)                      # point -> output row, col
        base_y = (oy * self.stride[0] - self.pad[0])[None, :] + (i * self.dilation[0])[:, None]
        base_x = (ox * self.stride[1] - self.pad[1])[None, :] + (j * self.dilation[1])[:, None]
        self.y = (base_y + offsets[:, :, :, 0]).astype(np.float32)            # [images, groups, taps, points]
        self.x = (base_x + offsets[:, :, :, 1]).astype(np.float32)

    def output_shapes(self, input_shapes):
        c, h, w = input_shapes[0][-3:]
        images = int(np.prod(input_shapes[0][:-3]))
        if (c, h, w) != (self.channels, self.height, self.width) or images != self.images:
            raise ValueError(f"input shape {tuple(input_shapes[0])} does not match the parameters: "
                             f"{self.images} image(s) of {self.channels} x {self.height} x {self.width}")
        return [self.out_shape]

    def evaluate(self, inputs, outputs):
        c, h, w = self.channels, self.height, self.width
        n, g = self.images, self.groups
        # A zero frame around each image makes every out-of-image corner read 0 (torchvision's rule).
        framed = np.pad(inputs[0].reshape(n, c, h, w), ((0, 0), (0, 0), (1, 1), (1, 1)))
        framed = framed.reshape(n, g, c // g, (h + 2) * (w + 2))              # channels by offset group

        y = np.clip(self.y, -2, h + 1)          # further out reads only zeros: clip, avoid overflow
        x = np.clip(self.x, -2, w + 1)
        y0, x0 = np.floor(y), np.floor(x)
        fy, fx = y - y0, x - x0
        sampled = 0
        for dy, dx, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                               (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):   # the 4 bilinear corners
            rows = np.clip(y0 + dy, -1, h).astype(np.intp) + 1
            cols = np.clip(x0 + dx, -1, w).astype(np.intp) + 1
            index = (rows * (w + 2) + cols).reshape(n, g, 1, -1)             # [n, g, 1, taps*points]
            pixels = np.take_along_axis(framed, index, axis=-1)              # [n, g, c/g, taps*points]
            sampled = sampled + pixels * weight.reshape(n, g, 1, -1)

        taps, points = self.kernel[0] * self.kernel[1], self.out_h * self.out_w
        sampled = sampled.reshape(n, g, c // g, taps, points)
        if self.mask is not None:
            sampled = sampled * self.mask
        # rows c*taps + tap, columns image*points + point: torchvision's columns matrix
        columns = sampled.reshape(n, c * taps, points).transpose(1, 0, 2)
        outputs[0][...] = columns.reshape(outputs[0].shape)
