"""Fusions the planner makes once at load, for ``predict`` only.

``trace`` and the load-time shape pass run every layer as the file writes it, so each blob keeps
its own value there; in ``predict`` a fused layer computes what several layers would, in fewer
passes over memory, with the same result bit for bit. Only top-level layers take part, and only
where every blob passed between them has one reader and is not a model output (``keep``).
Networks with control flow are left alone: their nested networks read blobs by name.
"""
from collections import Counter, namedtuple

import numpy as np

from .plan import BuiltinStep


def fuse(network, keep):
    """Every fusion, in its order (a chain goes to its convolution before a lone activation can),
    over one reading of the blob flow: {fusion: how many it made}."""
    flow = _blob_flow(network)
    counts = {"chain layers": 0, "chains in convolutions": 0, "activations": 0, "layer norms": 0}
    if flow is not None:                      # control flow: nested networks read blobs by name
        counts["chain layers"] = fuse_pointwise_chains(network, keep, flow)
        counts["chains in convolutions"] = fold_chains_into_convolutions(network, keep, flow)
        counts["activations"] = fuse_activations(network, keep, flow)
        counts["layer norms"] = fuse_layer_norms(network, keep, flow)
    return counts


Flow = namedtuple("Flow", "readers producers reader")


def _blob_flow(network):
    """How many layers read each blob (``readers``), (index, step) of the one layer that writes
    it (``producers``; None for a blob written twice) and the index of its last reader
    (``reader``); None where a layer runs nested networks."""
    if any(getattr(getattr(step, "kernel", None), "uses_scope", False) for step in network.steps):
        return None
    readers, producers, reader = Counter(), {}, {}
    for index, step in enumerate(network.steps):
        readers.update(step.inputs)
        for name in step.inputs:
            reader[name] = index
        for name in step.outputs:
            producers[name] = None if name in producers else (index, step)   # written twice: leave it
    return Flow(readers, producers, reader)


def _single_flow(step):
    return (isinstance(step, BuiltinStep) and len(step.inputs) == 1 and len(step.outputs) == 1
            and step.kernel.top_level and not step.passes_on and step.chain is None)


def _next_alone(network, index, flow, keep):
    """The index of the step that alone reads step ``index``'s only output, later in the network,
    where that blob is not kept and no other layer writes it; else None. (A reader before it
    reads a model input's name that this step rewrites.)"""
    blob = network.steps[index].outputs[0]
    if flow.readers[blob] != 1 or blob in keep or flow.producers.get(blob) is None:
        return None
    following = flow.reader[blob]
    return following if following > index else None


# ---------------------------------------------------------------- a convolution's activation

FUSABLE = ("convolution", "convolution3d")


def fuse_activations(network, keep, flow):
    """Fold each ReLU or clip into the convolution that produces its input: in predict the
    convolution clamps its outputs as it writes them (in its compiled loops, or with its bias in
    one pass) and the activation passes them on, one pass over memory instead of two. Call after
    the chains: a chain of layers after a convolution goes to it first. Returns how many were
    fused."""
    fused = 0
    for index, step in enumerate(network.steps):
        bounds = _clamp_bounds(step)
        conv = None if bounds is None else _convolution_before(network, index, flow, keep)
        if conv is not None:
            conv.fused_clamp = bounds
            step.passes_on = True
            fused += 1
    return fused


def _convolution_before(network, index, flow, keep):
    """The kernel of the convolution whose output step ``index`` reads, where nothing else reads
    it, it is not kept, and the convolution has no fusion yet (and is no deconvolution); else None."""
    readers, producers = flow.readers, flow.producers
    blob = network.steps[index].inputs[0]
    first, producer = producers.get(blob) or (index, None)      # a model input: no producer
    if not (first < index and isinstance(producer, BuiltinStep) and producer.kind in FUSABLE
            and len(producer.outputs) == 1 and readers[blob] == 1 and blob not in keep):
        return None
    conv = producer.kernel
    if conv.deconv or not conv.top_level or conv.fused_clamp is not None or conv.fused_chain is not None:
        return None
    return conv


def _clamp_bounds(step):
    """(low, high, relu) of a top-level ReLU or clip layer (see _fused.clamp), or None; a clip
    with a NaN bound is left alone (np.clip makes every output NaN)."""
    if step.kind not in ("activation", "clip") or not _single_flow(step):
        return None
    if step.kind == "activation" and step.kernel.nonlinearity == "ReLU":
        return np.float32(0), np.float32(np.inf), True
    if step.kind == "clip" and not (np.isnan(step.kernel.low) or np.isnan(step.kernel.high)):
        return step.kernel.low, step.kernel.high, False
    return None


# ---------------------------------------------------------------- chains of element-wise layers

def fuse_pointwise_chains(network, keep, flow):
    """Make each run of two or more element-wise layers (batchnorm with fixed statistics, linear
    activation, ReLU, unary THRESHOLD, clip), each reading the one before, one pass
    (``_pointwise.chain_rows``): the first layer computes the whole chain and the others pass its
    output on. TensorFlow converters write ReLU6 as four such layers after each batchnorm.
    Returns how many layers the chains took in."""
    taken = 0
    for index, step in enumerate(network.steps):
        ops = _operations(step)
        if ops is None:
            continue
        links, channels, last = [step], ops[1], index
        program = list(ops[0])
        while True:
            following = _next_alone(network, last, flow, keep)
            more = None if following is None else _operations(network.steps[following])
            if more is None or (more[1] and channels and more[1] != channels):
                break                            # another channel count: its own layer says why
            links.append(network.steps[following])
            program += more[0]
            channels, last = channels or more[1], following
        if len(links) < 2:
            continue
        step.chain = PointwiseChain(links, program, channels)
        for link in links[1:]:
            link.passes_on, link.fused_by = True, step.chain
        taken += len(links)
    return taken


CHAIN_KINDS = ("batchnorm", "activation", "unary", "clip")


def _operations(step):
    """([(operation, a, b), ...], channels) of an element-wise layer a chain can take in (an
    operation of ``_pointwise``, by name; channels: a batchnorm's, else 0; a and b: its per-channel
    arrays, or numbers), else None."""
    if step.kind not in CHAIN_KINDS or not _single_flow(step):
        return None
    k = step.kernel
    if step.kind == "batchnorm" and not k.compute_stats:
        return [("AFFINE", k.scale.reshape(-1), k.shift.reshape(-1))], k.channels
    if step.kind == "activation" and k.nonlinearity == "linear":
        return [("AFFINE", np.float32(k.alpha), np.float32(k.beta))], 0
    if step.kind == "activation" and k.nonlinearity == "ReLU":
        return [("MAXIMUM", np.float32(0), np.float32(0))], 0
    if step.kind == "unary" and k.operation == "THRESHOLD":
        ops = [("AFFINE", k.scale, k.shift)] if k.scale != 1 or k.shift != 0 else []
        return ops + [("MAXIMUM", k.alpha, np.float32(0))], 0
    if step.kind == "clip" and not (np.isnan(k.low) or np.isnan(k.high)):   # np.clip: all NaN
        return [("CLIP", k.low, k.high)], 0
    return None


class Program:
    """A chain's operations coded for ``_pointwise``: codes [ops], parameters a and b [ops, width],
    row r taking column r % width (width: the channels of per-channel operations, or 1)."""

    def __init__(self, operations, width):
        from .layers import _pointwise          # numba's import at load, not at the first prediction
        self.codes = np.array([getattr(_pointwise, name) for name, _, _ in operations], np.int64)
        self.a = np.empty((len(operations), width), np.float32)
        self.b = np.empty((len(operations), width), np.float32)
        for i, (_, a, b) in enumerate(operations):
            self.a[i], self.b[i] = a, b


class PointwiseChain:
    """What the first layer of a fused chain computes in predict: every layer's operation in
    turn (``_pointwise``), into that layer's reused output array, stored under its own output
    name (the others pass it on). An input a batchnorm in the chain cannot take (or none, an
    optional input left out) runs every layer as written (``fused`` False), each in its turn,
    so a layer's own error names it."""

    fused = False

    def __init__(self, links, operations, channels):
        self.links, self.operations, self.channels = links, operations, channels
        self.program = Program(operations, max(channels, 1))

    def run(self, head, scope):
        x = scope.get(head.inputs[0])
        self.fused = x is not None and not (self.channels and (x.ndim < 3 or x.shape[-3] != self.channels))
        if not self.fused:
            head.run_as_written(scope)
            return
        from .layers import _pointwise
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = head.kernel.workspace().output(x.shape)
        if x.size:
            rows = x.size // (x.shape[-2] * x.shape[-1]) if self.channels else 1
            p = self.program
            _pointwise.chain_rows(x.reshape(rows, -1), out.reshape(rows, -1), p.codes, p.a, p.b)
        scope[head.outputs[0]] = out


# ---------------------------------------------------------------- a chain after a convolution

def fold_chains_into_convolutions(network, keep, flow):
    """Give each chain that reads a convolution's output (and nothing else reads it) to that
    convolution: in predict it runs the chain in place on its output, its bias as the chain's
    first operation (one pass for both), and the chain's layers pass the array on. Call after
    ``fuse_pointwise_chains`` and before ``fuse_activations`` (a lone ReLU or clip goes into the
    convolution's own loops). Returns how many chains were folded."""
    folded = 0
    for index, step in enumerate(network.steps):
        chain = getattr(step, "chain", None)         # custom layers' steps have none
        conv = None if chain is None else _convolution_before(network, index, flow, keep)
        # a batchnorm's channels are axis -3: a 2-D convolution's output channels, a 3-D one's depth
        if conv is not None and (chain.channels == 0 or (conv.rank == 2 and chain.channels == conv.c_out)):
            conv.fused_chain = ConvolutionEpilogue(chain.operations, conv.c_out, conv.bias)
            step.chain = None
            for link in chain.links:               # the convolution always runs the chain: no fallback
                link.passes_on, link.fused_by = True, None
            folded += 1
    return folded


class ConvolutionEpilogue:
    """A chain a convolution runs in place on its output [N, C_out, positions] in predict: with
    its bias first (``add_bias=True``: ``y * 1 + bias`` is ``y + bias`` exactly) where the
    convolution has not added it in its own loops."""

    def __init__(self, operations, channels, bias):
        self.plain = Program(operations, channels)
        self.biased = self.plain if bias is None else \
            Program([("AFFINE", np.float32(1), bias.reshape(-1))] + list(operations), channels)

    def apply(self, y, add_bias):
        from .layers import _pointwise
        if y.size:
            p = self.biased if add_bias else self.plain
            rows = y.reshape(y.shape[0] * y.shape[1], -1)
            _pointwise.chain_rows_in_place(rows, p.codes, p.a, p.b)
        return y


# ---------------------------------------------------------------- mean-variance normalization and scale

def fuse_layer_norms(network, keep, flow):
    """Make each MVN followed by a scale layer (a LayerNorm: converters write it as the two) one
    pass over each row (``_pointwise.standardize_scale_rows``): the MVN computes both, the scale
    layer passes the array on. Returns how many pairs were fused."""
    fused = 0
    for index, step in enumerate(network.steps):
        if step.kind != "mvn" or not _single_flow(step):
            continue
        following = _next_alone(network, index, flow, keep)
        scale = None if following is None else network.steps[following]
        if scale is not None and scale.kind == "scale" and _single_flow(scale):
            step.chain = NormalizeAndScale(step, scale)
            scale.passes_on, scale.fused_by = True, step.chain
            fused += 1
    return fused


class NormalizeAndScale:
    """What an MVN fused with the scale layer after it computes in predict. The scale layer's
    parameters ([1], [C], [1, H, W] or [C, H, W]) are laid out once per input shape as rows of
    the MVN's rows ([C, H * W] or [1, H * W] per channel plane, [1, C * H * W] across channels).
    An input either layer cannot take (or none) runs both as written (``fused`` False), each in
    its turn, so that layer's own error names it."""

    fused = False

    def __init__(self, mvn, scale):
        from .layers import _pointwise          # noqa: F401  (numba's import at load)
        self.mvn, self.scale = mvn, scale
        self._rows = (None, None)                  # the last input's [C, H, W], its (scale, bias) rows

    def run(self, head, scope):
        x = scope.get(head.inputs[0])
        layout = None if x is None else self._layout(x)
        self.fused = layout is not None
        if not self.fused:
            head.run_as_written(scope)
            return
        from .layers import _pointwise
        k = self.mvn.kernel
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = k.workspace().output(x.shape)
        if x.size:
            n = int(np.prod(x.shape[-len(k.axes):]))
            _pointwise.standardize_scale_rows(x.reshape(-1, n), out.reshape(-1, n), float(k.eps),
                                              bool(k.normalize_variance), *layout)
        scope[head.outputs[0]] = out

    def _layout(self, x):
        """(scale rows, bias rows) for this input, or None where it does not fit both layers."""
        if x.ndim < 3:
            return None
        chw = tuple(x.shape[-3:])
        if self._rows[0] != chw:                   # laid out again when the input's shape changes
            self._rows = (chw, self._lay_out(chw))
        return self._rows[1]

    def _lay_out(self, chw):
        s = self.scale.kernel
        params = [s.scale] + ([] if s.bias is None else [s.bias])
        if any(isinstance(p, np.ndarray) and any(d not in (1, size) for d, size in zip(p.shape, chw))
               for p in params):
            return None                            # the scale layer's own check names the mismatch
        across = len(self.mvn.kernel.axes) == 3
        rows = []
        for p in params:                           # a number, or [C', H', W'] (see _chw_param)
            full = np.broadcast_to(p, chw)
            if across:
                laid = full.reshape(1, -1)
            elif np.ndim(p) and p.shape[0] != 1:
                laid = full.reshape(chw[0], -1)    # one row per channel: row r is channel r % C
            else:
                laid = full[0].reshape(1, -1)
            rows.append(np.ascontiguousarray(laid, dtype=np.float32))
        if len(rows) == 1:
            rows.append(np.zeros((0, rows[0].shape[1]), np.float32))
        return tuple(rows)
