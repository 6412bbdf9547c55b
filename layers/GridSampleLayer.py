"""GridSampleLayer: PyTorch's grid_sample: out[n, c, i, j] = image[n, c] sampled at grid[n, :, i, j].

From dneprDroid/pytorch-coreml-custom-layer-example, whose converter turns torch's grid_sampler
into this custom layer with inputs (image, grid). The grid arrives transposed to [N, 2, Hg, Wg]:
channel 0 holds x (the column, -1 = left edge, +1 = right edge), channel 1 holds y (the row).
The output has the image's channels and the grid's spatial size: [N, C, Hg, Wg].

The formula is torch.nn.functional.grid_sample's (its documentation and ATen's GridSampler):
a normalized coordinate g in [-1, 1] maps to the pixel coordinate
    align_corners=False:  ((g + 1) * size - 1) / 2     (-1 and +1 are the outer pixel edges)
    align_corners=True:   (g + 1) / 2 * (size - 1)     (-1 and +1 are the outer pixel centres)
then "bilinear" mixes the 4 surrounding pixels by area weights and "nearest" takes the nearest
one (ties to even); padding decides what lies outside the image: "zeros" reads 0, "border"
clamps the coordinate to the image, "reflection" mirrors it back in first.

The published model passes no parameters (the authors' Metal kernel only does bilinear, zeros,
align_corners=False, torch's defaults); the optional ones use the integer codes torch's
converter binds: mode 0 bilinear / 1 nearest, padding_mode 0 zeros / 1 border / 2 reflection.
Works on [..., C, H, W] of any rank, so rank-5 [Seq, Batch, C, H, W] models are served too.
"""
import numpy as np

import workbench as wb

MODES = {0: "bilinear", 1: "nearest"}
PADDING_MODES = {0: "zeros", 1: "border", 2: "reflection"}


class GridSampleLayer(wb.CustomLayer):

    def __init__(self, parameters):
        mode = int(parameters.get("mode", 0))
        padding_mode = int(parameters.get("padding_mode", 0))
        if mode not in MODES:
            raise ValueError(f"mode {mode} is not supported (0 = bilinear, 1 = nearest; 2 = bicubic is not)")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode {padding_mode} is not one of 0 (zeros), 1 (border), 2 (reflection)")
        self.mode, self.padding_mode = MODES[mode], PADDING_MODES[padding_mode]
        self.align_corners = bool(parameters.get("align_corners", False))

    def set_weight_data(self, weights):
        pass                                   # no weights

    def output_shapes(self, input_shapes):
        image, grid = (tuple(s) for s in input_shapes)
        if len(image) < 3 or len(grid) < 3 or grid[-3] != 2:
            raise ValueError(f"expected an image [..., C, H, W] and a grid [..., 2, Hg, Wg]; "
                             f"got {image} and {grid}")
        images, grids = int(np.prod(image[:-3])), int(np.prod(grid[:-3]))
        if grids not in (1, images):
            raise ValueError(f"{images} image(s) but {grids} grids: give one grid per image, or one for all")
        return [(*image[:-2], grid[-2], grid[-1])]

    def evaluate(self, inputs, outputs):
        image, grid = inputs
        channels, height, width = image.shape[-3:]
        images = image.reshape(-1, channels, height, width)
        grids = grid.reshape(-1, 2, grid.shape[-2] * grid.shape[-1])       # [N, (x, y), points]
        x = self.pixel_coordinate(grids[:, 0], width)
        y = self.pixel_coordinate(grids[:, 1], height)

        # A one-pixel frame of zeros around each image: every corner outside the image reads 0,
        # which is exactly "zeros" padding (border/reflection already moved x, y inside).
        framed = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1))).reshape(len(images), channels, -1)

        if self.mode == "nearest":
            result = read_pixels(framed, np.rint(y), np.rint(x), height, width)
        else:
            x0, y0 = np.floor(x), np.floor(y)
            fx, fy = x - x0, y - y0                                   # position inside the cell
            result = (read_pixels(framed, y0, x0, height, width) * ((1 - fy) * (1 - fx))[:, None]
                      + read_pixels(framed, y0, x0 + 1, height, width) * ((1 - fy) * fx)[:, None]
                      + read_pixels(framed, y0 + 1, x0, height, width) * (fy * (1 - fx))[:, None]
                      + read_pixels(framed, y0 + 1, x0 + 1, height, width) * (fy * fx)[:, None])
        outputs[0][...] = result.reshape(outputs[0].shape)

    def pixel_coordinate(self, g, size):
        """Normalized grid values -> pixel coordinates, with border/reflection padding applied."""
        if self.align_corners:
            p = (g + 1) / 2 * (size - 1)
        else:
            p = ((g + 1) * size - 1) / 2
        if self.padding_mode == "reflection":
            # Mirror about the image's outer edges: pixel centres 0 and size-1 with
            # align_corners=True, pixel edges -0.5 and size-0.5 without.
            low, high = (0.0, size - 1.0) if self.align_corners else (-0.5, size - 0.5)
            p = reflect(p, low, high)
        if self.padding_mode in ("border", "reflection"):
            return np.clip(p, 0, size - 1)
        # zeros: anything further out than one pixel reads only zeros; clipping there keeps the
        # same result and keeps huge or infinite coordinates from overflowing the integer index.
        return np.clip(p, -2, size + 1)


def reflect(p, low, high):
    """Fold coordinates into [low, high] by repeated mirroring at both ends."""
    span = high - low
    if span <= 0:
        return np.zeros_like(p)
    distance = np.abs(p - low)
    flips = np.floor(distance / span)
    extra = distance - flips * span
    return np.where(flips % 2 == 0, low + extra, high - extra).astype(p.dtype)


def read_pixels(framed, rows, cols, height, width):
    """framed[n, :, rows, cols] for integer-valued float rows/cols; outside the image reads 0.

    framed is [N, C, (height+2)*(width+2)] (the images with a zero frame), rows/cols are [N, P].
    """
    rows = np.clip(rows, -1, height).astype(np.intp) + 1         # -1 and height land on the frame
    cols = np.clip(cols, -1, width).astype(np.intp) + 1
    index = rows * (width + 2) + cols
    return np.take_along_axis(framed, index[:, None, :], axis=-1)   # [N, C, P]
