"""Plan a NeuralNetwork once at load: validated order, kernels with decoded weights, custom layer steps.

A plan is a list of steps; each step reads its input blobs from a shared scope (a dict) and writes
its outputs there. Nested networks (loop and branch bodies) are planned the same way and share
the scope, as Core ML's nested networks share blob names with their parent.
"""
import functools
import inspect
from dataclasses import dataclass, field

import numpy as np

from ..errors import LayerError, ModelFormatError, UnsupportedLayerError, WorkbenchError
from . import spec as specmod
from .layers import KERNELS, Context
from .layers._base import Scratch
from .limits import check_bytes, check_shape
from .protocol import LayerGuard


class RunState:
    """What the steps of a plan share with their model: its name, its limits, and whether the
    load-time shape pass is running. Not the model itself, so the plan holds no reference back
    to it: a dropped model is freed at once, not at the next cyclic garbage collection."""

    __slots__ = ("model_name", "limits", "shapes_only", "reuse_buffers", "depth", "scratch")

    def __init__(self, model_name, limits):
        self.model_name, self.limits, self.shapes_only = model_name, limits, False
        self.reuse_buffers = False       # True while predict runs (Kernel.workspace)
        self.depth = 0                   # runs of the network in progress, nested (Model.running)
        self.scratch = Scratch()


class Network:
    """An ordered list of steps over a shared blob scope."""

    def __init__(self, steps, produced):
        self.steps = steps
        self.produced = produced

    def run(self, scope):
        for step in self.steps:
            step.run(scope)


class BuiltinStep:
    """One built-in layer: gather inputs, call the kernel, store outputs as float32."""

    # the planner's fusions (fusion.py), in predict only: an activation its producer computes
    # passes the producer's output on; a fusion's first layer (``chain``) computes the whole of it
    # and the others pass its output on, unless it ran as written this time (``fused_by.fused``)
    passes_on = False
    fused_by = None
    chain = None

    def __init__(self, layer, kernel_obj, model_name, state=None):
        self.name, self.kind = layer.name, layer.WhichOneof("layer")
        self.inputs, self.outputs = list(layer.input), list(layer.output)
        self.kernel, self.model_name = kernel_obj, model_name
        self.state = state
        # kernels whose output shapes follow from input shapes skip their compute in the load-time pass
        self.shape_rule = getattr(kernel_obj, "output_shapes", None)
        self._rule_in_shape_pass = self.shape_rule is not None and state is not None
        self._max_bytes = int(kernel_obj.ctx.limits["max_blob_bytes"])

    def run(self, scope):
        if self.passes_on and self.state.reuse_buffers and (self.fused_by is None or self.fused_by.fused):
            scope[self.outputs[0]] = scope[self.inputs[0]]
            return
        self._run(scope, self.chain is not None and self.state.reuse_buffers)

    def run_as_written(self, scope):
        """This layer alone, as the file says (what ``run`` does outside the fusions)."""
        self._run(scope, False)

    def _run(self, scope, fused):
        if self._rule_in_shape_pass and self.state.shapes_only and self._shapes_only(scope):
            return
        try:
            if fused:                      # the fusion stores its outputs itself
                self.chain.run(self, scope)
                return
            if self.kernel.uses_scope:
                self.kernel.run(scope)
                return
            # an optional model input left out reaches the kernel as None (recurrent states start at zero)
            result = self.kernel.compute(*[scope.get(n) for n in self.inputs])
        except WorkbenchError:
            raise
        except KeyboardInterrupt:
            raise
        except MemoryError as e:
            raise LayerError(self.model_name, self.name,
                             f"the built-in {self.kind} kernel ran out of memory ({e}); a smaller "
                             f"limits={{'max_blob_bytes': N}} makes such a layer fail before allocating") from e
        except Exception as e:
            raise LayerError(self.model_name, self.name,
                             f"the built-in {self.kind} kernel failed: {type(e).__name__}: {e}") from e
        if isinstance(result, np.ndarray) or not isinstance(result, (list, tuple)):
            result = [result]
        if len(result) != len(self.outputs):
            raise LayerError(self.model_name, self.name, f"{self.kind} produced {len(result)} outputs, "
                             f"the layer names {len(self.outputs)}")
        for name, value in zip(self.outputs, result):
            if value.__class__ is not np.ndarray or value.dtype != np.float32:
                value = np.asarray(value, dtype=np.float32)
            # after the fact, but before the blob joins the scope: stops growth (a loop that
            # concatenates onto itself) at the first blob over the limit
            if value.nbytes > self._max_bytes:
                check_bytes(self.kernel.ctx.limits, self.model_name, f"layer '{self.name}'", value.nbytes,
                            f"output '{name}'", value.shape)
            scope[name] = value

    def _shapes_only(self, scope):
        """Load-time shape pass: zeros of the shapes the kernel's rule gives, without computing.
        Returns False (run the kernel instead) when the rule cannot answer, so every error the
        kernel would raise is still the kernel's own, and when every input is small: shape
        vectors and scalars (getShape -> add -> fillDynamic) are values that decide shapes
        downstream, and computing them costs nothing."""
        shapes, small = [], True
        for name in self.inputs:
            value = scope.get(name)
            if value is None:
                shapes.append(None)
            else:
                shapes.append(value.shape)
                small = small and value.size <= SMALL_BLOB
        if small:
            return False
        try:
            declared = self.shape_rule(shapes)
        except Exception:
            return False
        if declared is None or len(declared) != len(self.outputs):
            return False
        for name, shape in zip(self.outputs, declared):
            check_shape(self.kernel.ctx.limits, self.model_name, f"layer '{self.name}'", shape, f"output '{name}'")
        for name, shape in zip(self.outputs, declared):
            scope[name] = zeros_view(shape)
        return True


_ZERO = bytes(4)


def zeros_view(shape):
    """A read-only zero of that shape with no memory behind it (every stride 0): kernels that run
    on one allocate their own outputs, and the shape pass only looks at shapes. np.broadcast_to
    makes the same array five times slower, which the pass would pay once per layer."""
    shape = tuple(int(d) for d in shape)
    return np.ndarray(shape, np.float32, _ZERO, 0, (0,) * len(shape))


SMALL_BLOB = 256          # elements: blobs this small are computed even in the shape pass


@dataclass
class CustomLayerRecord:
    """What the model file says about one custom layer, and what implements it."""
    name: str
    class_name: str
    description: str
    parameters: dict
    parameter_types: dict
    weights: list
    inputs: list
    outputs: list
    implementation: type = None
    instance: object = None
    input_shapes: list = None
    output_shapes: list = None
    calls: dict = field(default_factory=lambda: {"output_shapes": 0, "evaluate": 0})

    def __repr__(self):
        impl = self.implementation.__name__ if self.implementation else "missing"
        return (f"CustomLayerRecord(name={self.name!r}, class_name={self.class_name!r}, "
                f"parameters={self.parameters!r}, weights={[w.size for w in self.weights]}, "
                f"inputs={self.inputs}, outputs={self.outputs}, implementation={impl})")


class CustomStep:
    """One custom layer, called with Core ML's lifecycle (see protocol.py)."""

    top_level = False            # set by the planner: only a top-level layer keeps its outputs

    def __init__(self, record, state):
        self.record, self.state = record, state
        self.name, self.kind = record.name, "custom"
        self.inputs, self.outputs = record.inputs, record.outputs
        self.guard = LayerGuard(state.model_name, record.name, record.class_name)
        self._kept = []          # the preallocated outputs predict hands to evaluate

    def instantiate(self, cls):
        """__init__ then set_weight_data, once, as Core ML does at load."""
        r = self.record
        instance = self.guard.call("__init__", cls, dict(r.parameters))
        # fresh read-only copies each time: a layer that forces a weight writable cannot leak into the next
        self.guard.call_method("set_weight_data", instance, [_frozen_copy(w) for w in r.weights])
        # one statement, after both calls succeeded: a failure or an interrupt (KeyboardInterrupt)
        # above leaves the record as it was
        r.implementation, r.instance, r.input_shapes, r.output_shapes = cls, instance, None, None

    def run(self, scope):
        r = self.record
        if r.instance is None:
            from ..errors import MissingImplementationError
            raise MissingImplementationError(self.state.model_name, [r.class_name])
        missing = [n for n in self.inputs if n not in scope]
        if missing:
            raise self.guard.error("evaluate", f"input blob(s) {', '.join(missing)} have no value in this "
                                   f"prediction (an optional model input left out, or a branch not taken)")
        inputs = [_read_only(scope[n]) for n in self.inputs]
        shapes = [tuple(int(d) for d in x.shape) for x in inputs]
        if shapes != r.input_shapes:
            declared = self.guard.call_method("output_shapes", r.instance, [tuple(s) for s in shapes])
            checked = self.guard.check_shapes(declared, len(self.outputs))
            for name, shape in zip(self.outputs, checked):      # before np.empty allocates them
                check_shape(self.state.limits, self.state.model_name,
                            f"layer '{r.name}' (custom layer className '{r.class_name}'), in output_shapes",
                            shape, f"output '{name}'")
            # the record changes only once output_shapes succeeded and its answer passed the checks
            r.output_shapes, r.input_shapes = checked, shapes
            r.calls["output_shapes"] += 1
        if self.state.shapes_only:
            for name, shape in zip(self.outputs, r.output_shapes):
                scope[name] = np.zeros(shape, np.float32)
            self._preallocate(r.output_shapes)
            return
        outputs = self._output_arrays(r.output_shapes)
        handed = list(outputs)
        self.guard.call_method("evaluate", r.instance, inputs, handed)
        r.calls["evaluate"] += 1
        for i, (mine, theirs) in enumerate(zip(outputs, handed)):
            if theirs is not mine:
                raise self.guard.error("evaluate", f"outputs[{i}] was replaced by a new object; fill the "
                                       f"preallocated array in place (outputs[{i}][...] = ...)")
        self.guard.check_outputs(outputs, r.output_shapes)
        for name, value in zip(self.outputs, outputs):
            scope[name] = value

    def _preallocate(self, shapes):
        """Outputs allocated as Core ML does: once output_shapes has answered (at load, and again
        when input shapes change), then reused by every prediction."""
        if self.top_level and [a.shape for a in self._kept] != [tuple(s) for s in shapes]:
            self._kept = [np.empty(shape, np.float32) for shape in shapes]

    def _output_arrays(self, shapes):
        """The arrays evaluate fills, NaN first, not leftover values: an element evaluate never
        writes is obvious in the output. In predict, the preallocated ones (predict answers with
        copies); in trace and in nested networks, new ones (their blobs outlive the run)."""
        if not (self.top_level and self.state.reuse_buffers):
            return [np.full(shape, np.nan, np.float32) for shape in shapes]
        if not all(a.flags.writeable for a in self._kept):      # a layer made one read-only
            self._kept = []
        self._preallocate(shapes)
        for array in self._kept:
            array.fill(np.nan)
        return list(self._kept)


def _arity(compute):
    """(fewest, most) inputs a kernel's ``compute`` accepts, from its signature (once per function:
    inspect.signature costs more than planning the layer)."""
    return _function_arity(getattr(compute, "__func__", compute), hasattr(compute, "__func__"))


@functools.lru_cache(maxsize=None)
def _function_arity(function, bound):
    parameters = list(inspect.signature(function).parameters.values())[1 if bound else 0:]
    low = high = 0
    for p in parameters:
        if p.kind == p.VAR_POSITIONAL:
            high = 1 << 30
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            high += 1
            low += p.default is p.empty
    return low, max(low, high)


def _frozen_copy(arr):
    copy = np.array(arr, dtype=np.float32)
    copy.flags.writeable = False
    return copy


def _read_only(arr):
    view = arr.view()
    view.flags.writeable = False
    return view


class Planner:
    """Builds the Network of a model, and its nested networks, validating blob flow."""

    def __init__(self, state, rank5, spec_version, payloads=None):
        self.state = state
        self.model_name = state.model_name
        self.ctx = Context(self.model_name, rank5=rank5, spec_version=spec_version,
                           build_network=self._build_nested, limits=state.limits, state=state,
                           payloads=payloads)
        self.known = set()
        self.custom_steps = []
        self.path = []           # names of the layers whose nested networks are being planned

    def plan(self, layers, inputs):
        self.known = set(inputs)
        try:
            return self._plan_layers(layers)
        finally:
            # kernels keep the context: without its link back to the planner and to the file's
            # payloads, a dropped model (and the file buffer its weights are views of) is freed
            # at once, not at the next cyclic garbage collection. Kernels decode their weights
            # and plan their nested networks while they are built, so both are done with.
            self.ctx._build_network = self.ctx.payloads = None

    def _build_nested(self, layers):
        limit = int(self.ctx.limits["max_nesting_depth"])
        if len(self.path) > limit:
            shown = " > ".join(f"'{n}'" for n in self.path[:3])
            raise ModelFormatError(
                f"{self.model_name}: layer '{self.path[-1]}' is nested {len(self.path)} networks deep (in {shown} > "
                f"...), more than the max_nesting_depth limit of {limit}; if the model really needs more, raise "
                f"the limit with wb.load(..., limits={{'max_nesting_depth': N}})")
        outer = set(self.known)
        net = self._plan_layers(layers)
        self.known = outer | net.produced
        return net

    def _plan_layers(self, layers):
        steps, produced = [], set()
        for index, layer in enumerate(layers):
            kind = layer.WhichOneof("layer")
            name = layer.name or f"#{index}"
            if kind is None:
                raise ModelFormatError(f"{self.model_name}: layer '{name}' has no layer type set "
                                       f"(an unknown kind from a newer specification, or a corrupt file)")
            for blob in layer.input:
                if blob not in self.known:
                    raise ModelFormatError(f"{self.model_name}: layer '{name}' ({kind}) reads blob '{blob}', "
                                           f"which no model input or earlier layer produces")
            self.path.append(name)
            before = set(self.known) if kind in ("branch", "loop") else None
            try:
                step = self._custom_step(layer) if kind == "custom" else self._builtin_step(layer, kind)
            finally:
                self.path.pop()
            steps.append(step)
            self.known.update(layer.output)
            produced.update(layer.output)
            if before is not None:   # blobs a nested network writes live in the one scope, outputs too
                produced.update(self.known - before)
        return Network(steps, produced)

    def _builtin_step(self, layer, kind):
        cls = KERNELS.get(kind)
        if cls is None:
            raise UnsupportedLayerError(f"{self.model_name}: layer '{layer.name}' is of kind '{kind}', "
                                        f"which this runtime does not run yet")
        try:
            kernel_obj = cls(layer, self.ctx)
        except WorkbenchError:
            raise
        except Exception as e:
            raise ModelFormatError(f"{self.model_name}: layer '{layer.name}' ({kind}) has parameters the "
                                   f"runtime cannot use: {type(e).__name__}: {e}") from e
        kernel_obj.top_level = len(self.path) == 1
        if not kernel_obj.uses_scope:
            low, high = _arity(kernel_obj.compute)
            if not low <= len(layer.input) <= high:
                takes = f"{low}" if low == high else f"{low} to {high}" if high < 1 << 30 else f"{low} or more"
                raise ModelFormatError(f"{self.model_name}: layer '{layer.name}' ({kind}) has "
                                       f"{len(layer.input)} input(s); this layer kind takes {takes}")
        if not len(layer.output) and not kernel_obj.uses_scope:   # control flow layers have none
            raise ModelFormatError(f"{self.model_name}: layer '{layer.name}' ({kind}) has no output")
        return BuiltinStep(layer, kernel_obj, self.model_name, self.state)

    def _custom_step(self, layer):
        p = layer.custom
        if not p.className:
            raise ModelFormatError(f"{self.model_name}: custom layer '{layer.name}' has no className")
        weights = [specmod.decode_weights(w, f"{self.model_name}: custom layer '{layer.name}' weights[{i}]",
                                          payloads=self.ctx.payloads)
                   for i, w in enumerate(p.weights)]
        record = CustomLayerRecord(
            name=layer.name, class_name=p.className, description=p.description,
            parameters=specmod.custom_parameters(p), parameter_types=specmod.custom_parameter_types(p),
            weights=weights, inputs=list(layer.input), outputs=list(layer.output))
        step = CustomStep(record, self.state)
        step.top_level = len(self.path) == 1
        self.custom_steps.append(step)
        return step
