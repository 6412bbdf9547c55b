"""The kernel interface and the explicit registry of built-in layer kinds.

A kernel is planned once at load (decode parameters and weights into the layout it computes
with) and then called on every prediction with numpy arrays. The registry key is the name of
the field set in ``NeuralNetworkLayer``'s ``layer`` oneof, e.g. ``"convolution"``.
"""
import math

import numpy as np

from ...errors import UnsupportedLayerError

KERNELS = {}


def kernel(*kinds):
    """Class decorator registering a kernel for one or more layer kinds."""
    def register(cls):
        for kind in kinds:
            if kind in KERNELS:
                raise RuntimeError(f"layer kind {kind!r} registered twice "
                                   f"({KERNELS[kind].__module__} and {cls.__module__})")
            KERNELS[kind] = cls
        cls.kinds = kinds
        return cls
    return register


def fused():
    """The compiled kernels (``_fused.py``). Imported when a kernel first asks (at planning or at
    its first call), not with the package: numba's import costs about 0.4 s, paid only by models
    that need it."""
    from . import _fused
    return _fused


def gemm():
    """The compiled few-rows product (``_gemm.py``), imported like ``fused``."""
    from . import _gemm
    return _gemm


class Scratch:
    """A model's scratch arrays (padded images, im2col columns, depthwise phases), one growing
    flat pool per key, shared by its top-level kernels: they run one at a time, and need their
    scratch only while they run. Reused from one prediction to the next, so a prediction does
    not page in fresh memory for it (MobileNetV2: ~9000 page faults, a third of its time)."""

    __slots__ = ("_pools",)

    def __init__(self):
        self._pools = {}

    def get(self, key, shape, fill=None):
        size = math.prod(shape)
        pool = self._pools.get(key)
        if pool is None or pool.size < size:
            pool = self._pools[key] = np.empty(size, np.float32)
        array = pool[:size].reshape(shape)
        if fill is not None:              # shared between layers: borders are rewritten every call
            array.fill(fill)
        return array


class Workspace:
    """Where a kernel call's arrays come from (Kernel.workspace): its outputs, kept by the
    kernel and reused at the next prediction while their shape holds, and the model's scratch."""

    __slots__ = ("_outputs", "_scratch")

    def __init__(self, scratch):
        self._outputs, self._scratch = {}, scratch

    def output(self, shape, index=0):
        array = self._outputs.get(index)
        if array is None or array.shape != tuple(shape):
            array = self._outputs[index] = np.empty(shape, np.float32)
        return array

    def scratch(self, key, shape, fill=None):
        return self._scratch.get(key, shape, fill)


class _Fresh:
    """The workspace of runs whose blobs outlive them (``trace``, nested networks): new arrays."""

    @staticmethod
    def output(shape, index=0):
        return np.empty(shape, np.float32)

    @staticmethod
    def scratch(key, shape, fill=None):
        return np.empty(shape, np.float32) if fill is None else np.full(shape, fill, np.float32)


FRESH = _Fresh()

# (low, high, relu) of a convolution's fused activation (fusion.fuse_activations) when there is
# none; ``relu``: np.maximum(x, 0), which gives +0 for -0 where np.clip keeps -0
NO_CLAMP = (np.float32(-np.inf), np.float32(np.inf), False)
NO_BIAS = np.zeros(0, np.float32)      # what the compiled loops take for "no bias"


def add_bias(y, bias, clamp=NO_CLAMP):
    """A convolution's epilogue, in place on y [N, C, *spatial] (C-contiguous): + bias [C] (or
    None), then its fused activation. With one, a single compiled pass (``_fused.bias_clamp``);
    without, numpy's in-place add."""
    if clamp is NO_CLAMP:
        if bias is not None:
            y += bias.reshape((-1,) + (1,) * (y.ndim - 2))
        return y
    fused().bias_clamp(y.reshape(y.shape[0] * y.shape[1], -1), NO_BIAS if bias is None else bias.reshape(-1),
                       *clamp)
    return y


class Kernel:
    """Base of built-in kernels.

    ``self.params`` is the layer's parameter message (e.g. ``ConvolutionLayerParams``),
    ``self.ctx`` the planning context (rank-5 flag, weight decoding, nested networks).
    Subclasses override ``compute(*inputs)`` returning one array or a list of arrays, one per
    output. Kernels that need the whole blob scope (control flow) set ``uses_scope = True``
    and override ``run(scope)`` instead, reading and writing blobs in the ``scope`` dict.
    """

    uses_scope = False
    top_level = False          # set by the planner; only top-level steps reuse their arrays

    def __init__(self, layer, ctx):
        self.layer = layer
        self.name = layer.name
        self.kind = layer.WhichOneof("layer")
        self.params = getattr(layer, self.kind)
        self.ctx = ctx
        self._workspace = None

    def workspace(self):
        """Where this call's output and scratch arrays come from: reused ones (the kernel's own
        outputs, the model's shared scratch) in a ``predict`` of a top-level layer, which runs
        once per prediction, while predict's answer is always a copy; new ones otherwise
        (``trace`` hands every blob out, and a loop body's blobs may be read in its next
        iteration)."""
        if not (self.top_level and self.ctx.reuse_buffers):
            return FRESH
        if self._workspace is None:
            self._workspace = Workspace(self.ctx.state.scratch)
        return self._workspace

    def compute(self, *inputs):
        raise NotImplementedError

    def run(self, scope):
        raise NotImplementedError

    # helpers shared by many kernels
    def weights(self, weight_params, what="weights", count=None):
        """Decode a WeightParams message to a float32 1-D array (any storage form)."""
        return self.ctx.decode_weights(weight_params, f"{self.name}.{what}", count)

    def has_weights(self, weight_params):
        """Whether a WeightParams holds values (layers read an empty one as "absent")."""
        return self.ctx.has_weights(weight_params)

    def check_shape(self, shape, what="output"):
        """Call before allocating a shape that parameters or input values decide (fill, tile,
        upsample, ...): a 2^40-element shape fails fast with ResourceLimitError naming this layer."""
        return self.ctx.check_shape(self.name, shape, what)

    # ``output_shapes(input_shapes) -> [shape, ...]`` (optional): the kernel's output shapes from its
    # input shapes (None for an absent optional input). The load-time shape pass uses it instead of
    # computing; returning None (or not defining it) means "run me to find out".

    def unsupported(self, what):
        return UnsupportedLayerError(f"{self.ctx.model_name}: layer '{self.name}' ({self.kind}): {what}")


def same_shape(kernel_obj, shapes):
    """The shape rule of element-wise kernels: one output of the first input's shape."""
    return [shapes[0]] if shapes and shapes[0] is not None else None


def broadcast_shape(kernel_obj, shapes):
    """The shape rule of broadcasting kernels: numpy's broadcast of every input's shape."""
    if not shapes or any(s is None for s in shapes):
        return None
    try:
        return [tuple(np.broadcast_shapes(*shapes))]
    except ValueError:
        return None                       # the kernel itself names the mismatch


def as_float32(x):
    return np.asarray(x, dtype=np.float32)


class Context:
    """What a kernel may ask of the model being planned.

    ``rank5``: the model uses Core ML's rank-5 array mapping (specification <= 3): every blob is
    5-D ``[Seq, Batch, C, H, W]``. Otherwise blobs have their true rank. Classic kernels address
    axes from the end (C = -3, H = -2, W = -1), so one kernel serves both mappings.
    ``build_network(layers)`` plans a nested network (loop/branch bodies) and returns an object
    whose ``run(scope)`` executes it on the shared blob scope.
    """

    def __init__(self, model_name="<model>", rank5=False, spec_version=4, build_network=None, limits=None,
                 state=None, payloads=None):
        from ..spec import decode_weights, has_weights
        self.state = state
        self.payloads = payloads          # weights cut from the file the model was planned from
        self.model_name = model_name
        self.rank5 = rank5
        self.spec_version = spec_version
        self._decode, self._has_weights = decode_weights, has_weights
        self._build_network = build_network
        from ..limits import DEFAULT_LIMITS
        self.limits = dict(DEFAULT_LIMITS, **(limits or {}))

    @property
    def reuse_buffers(self):
        """Whether this run lets kernels reuse their arrays (see Kernel.workspace)."""
        return self.state is not None and self.state.reuse_buffers

    def check_shape(self, layer_name, shape, what="output"):
        """Refuse a shape (from parameters or data) BEFORE allocating it: see runtime/limits.py."""
        from ..limits import check_shape
        return check_shape(self.limits, self.model_name, f"layer '{layer_name}'", shape, what)

    def decode_weights(self, weight_params, where, count=None):
        return self._decode(weight_params, f"{self.model_name}: {where}", count, self.payloads)

    def has_weights(self, weight_params):
        return self._has_weights(weight_params, self.payloads)

    def build_network(self, layers):
        if self._build_network is None:
            raise RuntimeError("this context cannot plan nested networks")
        return self._build_network(layers)
