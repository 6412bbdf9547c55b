"""Control flow and its helpers: loop, loopBreak, loopContinue, branch, copy, rangeStatic, rangeDynamic.

Loop and branch bodies are nested networks planned once at load (``ctx.build_network``) and run
on the blob scope they share with the enclosing network, as in Core ML. ``loopBreak`` and
``loopContinue`` signal the innermost enclosing loop with private exceptions derived from
BaseException, so no ``except Exception`` on the way (kernel error wrapping, branch kernels)
swallows them.
"""
import math

import numpy as np

from ...errors import LayerError, ModelFormatError, ResourceLimitError
from ._base import Kernel, kernel

#: |value| above this is true, for branch predicates and loop conditions ("close to 0 is false")
TRUTH_THRESHOLD = 1e-6


class _LoopSignal(BaseException):
    """Raised by loopBreak/loopContinue, caught by the enclosing loop kernel."""


class _LoopBreak(_LoopSignal):
    pass


class _LoopContinue(_LoopSignal):
    pass


def _scalar(kernel_obj, value, what):
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise LayerError(kernel_obj.ctx.model_name, kernel_obj.name,
                         f"{kernel_obj.kind}: {what} must be a scalar (one value), got shape "
                         f"{tuple(np.shape(value))}")
    return float(flat[0])


def _truthy(kernel_obj, value, what):
    return abs(_scalar(kernel_obj, value, what)) > TRUTH_THRESHOLD


# ---------------------------------------------------------------- loop

@kernel("loop")
class Loop(Kernel):
    """A for / while / bounded-while loop, following the three cases of LoopLayerParams."""

    uses_scope = True

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.condition_var = p.conditionVar
        # coremltools' builder always sets a (possibly empty) conditionNetwork: the conditionVar decides
        condition_layers = p.conditionNetwork.layers if p.HasField("conditionNetwork") else []
        if len(condition_layers) and not self.condition_var:
            raise ModelFormatError(f"{ctx.model_name}: loop layer '{self.name}' has a conditionNetwork but no "
                                   f"conditionVar naming the blob it decides on")
        if not p.HasField("bodyNetwork"):
            raise ModelFormatError(f"{ctx.model_name}: loop layer '{self.name}' has no bodyNetwork")
        self.condition = ctx.build_network(condition_layers) if self.condition_var else None
        ctx._loop_depth = getattr(ctx, "_loop_depth", 0) + 1    # lets loopBreak/Continue check they are inside
        try:
            self.body = ctx.build_network(p.bodyNetwork.layers)
        finally:
            ctx._loop_depth -= 1
        self.count_input = layer.input[0] if len(layer.input) else None
        self.max_iterations = int(p.maxLoopIterations)
        self.limit = int(ctx.limits.get("max_loop_iterations", 1_000_000))

    def _bound(self, scope):
        """The iteration bound, or None for a pure while loop (case 2)."""
        if self.count_input is not None:
            count = _scalar(self, scope[self.count_input], "the loop count input")
            return max(0, int(count)) if math.isfinite(count) else self.limit + 1
        if self.condition is not None and self.max_iterations == 0:
            return None
        return self.max_iterations

    def _condition(self, scope):
        self.condition.run(scope)
        if self.condition_var not in scope:
            raise LayerError(self.ctx.model_name, self.name,
                             f"the conditionNetwork did not produce conditionVar '{self.condition_var}'")
        return _truthy(self, scope[self.condition_var], f"conditionVar '{self.condition_var}'")

    def run(self, scope):
        bound = self._bound(scope)
        iteration = 0
        while True:
            # the condition runs before every bound check, as in the proto's pseudo-code
            if self.condition is not None and not self._condition(scope):
                return
            if bound is not None and iteration >= bound:
                return
            if iteration >= self.limit:
                raise ResourceLimitError(self.ctx.model_name, f"layer '{self.name}'",
                                         f"the loop did not finish within {self.limit} iterations (the "
                                         f"max_loop_iterations limit)", "max_loop_iterations")
            try:
                self.body.run(scope)
            except _LoopContinue:
                pass
            except _LoopBreak:
                return
            iteration += 1


class _LoopControl(Kernel):
    uses_scope = True
    signal = None

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        if getattr(ctx, "_loop_depth", 0) <= 0:
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}' ({self.kind}) is not inside the "
                                   f"bodyNetwork of a loop layer")

    def run(self, scope):
        raise self.signal()


@kernel("loopBreak")
class LoopBreak(_LoopControl):
    """Ends the innermost enclosing loop."""
    signal = _LoopBreak


@kernel("loopContinue")
class LoopContinue(_LoopControl):
    """Ends the current iteration of the innermost enclosing loop."""
    signal = _LoopContinue


# ---------------------------------------------------------------- branch

@kernel("branch")
class Branch(Kernel):
    """Runs ifBranch when |input| > 1e-6, else elseBranch (if any)."""

    uses_scope = True

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        if len(layer.input) != 1:
            raise ModelFormatError(f"{ctx.model_name}: branch layer '{self.name}' needs exactly 1 input "
                                   f"(the condition), has {len(layer.input)}")
        if not p.HasField("ifBranch"):
            raise ModelFormatError(f"{ctx.model_name}: branch layer '{self.name}' has no ifBranch")
        self.if_branch = ctx.build_network(p.ifBranch.layers)
        self.else_branch = ctx.build_network(p.elseBranch.layers) if p.HasField("elseBranch") else None

    def run(self, scope):
        if _truthy(self, scope[self.layer.input[0]], "the branch condition"):
            self.if_branch.run(scope)
        elif self.else_branch is not None:
            self.else_branch.run(scope)


# ---------------------------------------------------------------- copy and ranges

@kernel("copy")
class Copy(Kernel):
    """Copies its input; the only layer allowed to overwrite an existing blob (loop state updates)."""

    def compute(self, x):
        return np.array(x, dtype=np.float32, copy=True)


def _arange(kernel_obj, start, end, step):
    """numpy.arange semantics: ceil((end - start) / step) values start + i * step."""
    if step == 0 or not all(map(math.isfinite, (start, end, step))):
        raise LayerError(kernel_obj.ctx.model_name, kernel_obj.name,
                         f"{kernel_obj.kind}: cannot make a range from {start:g} to {end:g} in steps of {step:g}")
    count = max(0, math.ceil((end - start) / step))
    kernel_obj.check_shape((count,))
    return (start + step * np.arange(count, dtype=np.float64)).astype(np.float32)


@kernel("rangeStatic")
class RangeStatic(Kernel):
    """arange(startValue, endValue, stepSizeValue), a rank-1 tensor computed once at load."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self.values = _arange(self, float(p.startValue), float(p.endValue), float(p.stepSizeValue))
        self.values.flags.writeable = False

    def compute(self):
        return self.values


@kernel("rangeDynamic")
class RangeDynamic(Kernel):
    """arange(start, end, step) with end from input 0 and start/step from inputs 1/2 when given."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        self.start, self.step = float(self.params.startValue), float(self.params.stepSizeValue)

    def compute(self, end, start=None, step=None):
        end = _scalar(self, end, "the end value (input 0)")
        start = self.start if start is None else _scalar(self, start, "the start value (input 1)")
        step = self.step if step is None else _scalar(self, step, "the step (input 2)")
        return _arange(self, start, end, step)
