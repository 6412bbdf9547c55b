"""Layer checks: Core ML's custom layer contract made executable (compare torch.library.opcheck).

``check_layer`` drives one implementation through MLCustomLayer's lifecycle on given inputs and
looks for the faults that on a device show up as wrong numbers, not errors:

- ``exception``        a method raised
- ``mutated-input``    evaluate changed an input ("Don't change the values that Core ML provides")
- ``mutated-weight``   set_weight_data or evaluate changed a weight
- ``shape-mismatch``   output_shapes declared shapes evaluate cannot fill (and which it can)
- ``unwritten-output`` elements evaluate never wrote, or values that depend on the output's old contents
- ``aliased-output``   an output replaced by an array sharing memory with an input or weight
- ``nondeterministic`` two evaluate calls on the same inputs differ
- ``dtype``            an output that is not float32, or a shape that is not integers

Unlike the runtime, which hands inputs over read-only so a write fails at once, the checks hand
over writable copies and compare afterwards (so every fault is seen, not only the first), then
re-run read-only to find the offending line. Outputs are filled with NaN and, in another run,
with a second sentinel: elements that keep the sentinel both times were never written.
"""
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import ImplementationError
from ..runtime.protocol import class_name_of
from ._locate import (WatchedList, call_with_return_line, exception_location, method_location)

KINDS = ("exception", "mutated-input", "mutated-weight", "shape-mismatch", "unwritten-output",
         "aliased-output", "nondeterministic", "dtype")
# The second fill value (the first is NaN): unlikely to be computed, and small enough that a layer
# doing ``outputs[0] += x`` on an unset output changes it (a huge value would absorb x).
SENTINEL = np.float32(-1234.5678)
_SHAPE_IN_MESSAGE = re.compile(r"\(\s*(\d+\s*(?:,\s*\d+\s*)*),?\s*\)")


@dataclass
class Problem:
    """One broken promise: its ``kind`` (see KINDS), the ``method`` at fault, a ``message`` naming the
    method and the user's line, and that ``location`` (file:line) on its own."""
    kind: str
    method: str
    message: str
    location: str = None

    def __str__(self):
        return f"[{self.kind}] {self.message}"


@dataclass
class LayerCheck:
    """The result of check_layer: ``ok`` when there are no ``problems``."""
    class_name: str
    layer: str = None
    input_shapes: list = None
    output_shapes: list = None           # as output_shapes declared them
    problems: list = field(default_factory=list)
    outputs: list = field(default_factory=list, repr=False)     # evaluate's outputs of the first run

    @property
    def ok(self):
        return not self.problems

    @property
    def kinds(self):
        return [p.kind for p in self.problems]

    def describe(self):
        where = f"layer '{self.layer}' ({self.class_name})" if self.layer else self.class_name
        if self.ok:
            return f"{where}: ok (inputs {self.input_shapes} -> outputs {self.output_shapes})"
        return "\n".join([f"{where}: {len(self.problems)} problem(s)"] + [f"  {p}" for p in self.problems])

    def __repr__(self):
        where = f"{self.layer!r} ({self.class_name})" if self.layer else self.class_name
        return f"<LayerCheck {where}: {'ok' if self.ok else ', '.join(self.kinds)}>"

    def _repr_html_(self):
        from .modelcheck import layer_check_html
        return layer_check_html([self])


class _Checker:
    """Holds one check's state so each step can add problems without passing ten arguments around."""

    def __init__(self, cls, inputs, parameters, weights, layer, n_outputs):
        self.cls, self.name = cls, class_name_of(cls)
        self.originals = [_frozen(x) for x in inputs]
        self.weight_originals = [_frozen(np.ravel(np.asarray(w, np.float32))) for w in weights]
        self.parameters, self.n_outputs = dict(parameters), n_outputs
        self.result = LayerCheck(self.name, layer, [tuple(x.shape) for x in self.originals])
        self.reported = set()

    def add(self, kind, method, message, location=None):
        if (kind, method) in self.reported:
            return
        self.reported.add((kind, method))
        at = f" (at {location})" if location else ""
        self.result.problems.append(Problem(kind, method, f"{self.name}.{method}: {message}{at}", location))

    def raised(self, method, exc, what="raised"):
        self.add("exception", method, f"{what} {type(exc).__name__}: {exc}", exception_location(exc, self.cls))

    # -------------------------------------------------------------- lifecycle steps
    def construct(self, weights):
        """__init__ then set_weight_data(weights); the instance, or None when either raised."""
        try:
            instance = self.cls(dict(self.parameters))
        except Exception as e:
            self.raised("__init__", e)
            return None
        try:
            instance.set_weight_data(weights)
        except Exception as e:
            self.raised("set_weight_data", e)
            return None
        return instance

    def declared_shapes(self, instance):
        try:
            shapes, line = call_with_return_line(instance.output_shapes, [tuple(x.shape) for x in self.originals])
        except Exception as e:
            self.raised("output_shapes", e)
            return None, None
        line = line or method_location(self.cls, "output_shapes")
        try:
            shapes = [tuple(s) for s in shapes]
        except TypeError:
            self.add("shape-mismatch", "output_shapes", f"returned {shapes!r}; it must return a list with one "
                     f"shape (a tuple of ints) per output", line)
            return None, line
        if any(not isinstance(d, (int, np.integer)) and not (isinstance(d, (float, np.floating)) and float(d).is_integer())
               for s in shapes for d in s):
            self.add("dtype", "output_shapes", f"returned {shapes!r}: dimensions must be integers", line)
            return None, line
        shapes = [tuple(int(d) for d in s) for s in shapes]
        if any(d < 0 for s in shapes for d in s) or (self.n_outputs is not None and len(shapes) != self.n_outputs):
            count = f" for {self.n_outputs} output(s)" if self.n_outputs is not None else ""
            self.add("shape-mismatch", "output_shapes", f"returned {shapes}{count}: one shape of non-negative "
                     f"sizes is needed per output", line)
            return None, line
        return shapes, line

    def evaluate(self, instance, shapes, fill, read_only=False):
        """One evaluate call on fresh copies of the inputs; returns a _Run."""
        run = _Run([_frozen(x) if read_only else x.copy() for x in self.originals], shapes, fill)
        try:
            instance.evaluate(run.inputs, run.handed)
        except Exception as e:
            run.error = e
        return run

    # -------------------------------------------------------------- findings
    def check_weights(self, held, method, baseline=None):
        """Weights changed since ``baseline`` (default: as the file gave them)?"""
        baseline = self.weight_originals if baseline is None else baseline
        changed = [i for i, (w, o) in enumerate(zip(held, baseline)) if not _same(w, o)]
        if changed:
            self.add("mutated-weight", method, f"changed weights{changed} in place; Core ML's weights are "
                     f"read-only (copy them first: np.array(weights[i]))", self.locate_weight_write(method))
        return bool(changed)

    def locate_weight_write(self, method):
        instance = None
        try:
            instance = self.cls(dict(self.parameters))
            instance.set_weight_data(list(self.weight_originals))
            if method == "evaluate":
                shapes = instance.output_shapes([tuple(x.shape) for x in self.originals])
                instance.evaluate([_frozen(x) for x in self.originals],
                                  [np.full(tuple(s), np.nan, np.float32) for s in shapes])
        except Exception as e:
            return exception_location(e, self.cls)
        return method_location(self.cls, method)

    def check_inputs(self, run, instance, shapes):
        if run.inputs.changed_at is not None:
            self.add("mutated-input", "evaluate", "changed the inputs list; leave it as Core ML handed it",
                     run.inputs.changed_at)
        changed = [i for i, (x, o) in enumerate(zip(run.inputs, self.originals))
                   if not isinstance(x, np.ndarray) or not _same(x, o)]
        if changed:
            probe = self.evaluate(instance, shapes, np.nan, read_only=True)
            where = exception_location(probe.error, self.cls) if probe.error else method_location(self.cls, "evaluate")
            self.add("mutated-input", "evaluate", f"wrote into inputs{changed}; Core ML's inputs are read-only "
                     f"(\"Don't change the values that Core ML provides\")", where)

    def check_outputs(self, run, held):
        """Replaced, aliased, reshaped or retyped outputs; returns the indices whose buffer is valid."""
        valid = []
        sources = [(f"inputs[{i}]", x) for i, x in enumerate(run.inputs) if isinstance(x, np.ndarray)] + \
                  [(f"inputs[{i}]", x) for i, x in enumerate(self.originals)] + \
                  [(f"weights[{i}]", w) for i, w in enumerate(held)]
        where = run.handed.changed_at or method_location(self.cls, "evaluate")
        for i, mine in enumerate(run.outputs):
            theirs = run.handed[i] if i < len(run.handed) else None
            if theirs is not mine:
                shared = [n for n, s in sources if isinstance(theirs, np.ndarray) and np.shares_memory(theirs, s)]
                if shared:
                    self.add("aliased-output", "evaluate", f"replaced outputs[{i}] with an array sharing memory "
                             f"with {shared[0]}; fill the preallocated output instead (outputs[{i}][...] = ...)", where)
                elif isinstance(theirs, np.ndarray) and theirs.dtype != np.float32:
                    self.add("dtype", "evaluate", f"replaced outputs[{i}] with a {theirs.dtype} array; outputs are "
                             f"preallocated float32 arrays, to fill in place", where)
                else:
                    self.add("unwritten-output", "evaluate", f"replaced outputs[{i}] with a new "
                             f"{type(theirs).__name__}; Core ML reads the preallocated array, which stays "
                             f"unwritten (fill it in place: outputs[{i}][...] = ...)", where)
            elif mine.dtype != np.float32:
                self.add("dtype", "evaluate", f"changed outputs[{i}]'s dtype to {mine.dtype}; it must stay float32",
                         method_location(self.cls, "evaluate"))
            elif tuple(mine.shape) != tuple(run.shapes[i]):
                self.add("shape-mismatch", "evaluate", f"reshaped outputs[{i}] to {tuple(mine.shape)} in place; "
                         f"output_shapes declared {tuple(run.shapes[i])}", method_location(self.cls, "evaluate"))
            else:
                valid.append(i)
        others = [(i, t) for i, t in enumerate(run.handed) if isinstance(t, np.ndarray)]
        for a, (i, x) in enumerate(others):
            for j, y in others[a + 1:]:
                if np.shares_memory(x, y):
                    self.add("aliased-output", "evaluate", f"outputs[{i}] and outputs[{j}] share memory", where)
        return valid

    def needed_shapes(self, instance, declared, error):
        """Shapes evaluate runs cleanly with, guessed from its error message and the input shapes."""
        candidates = [tuple(int(d) for d in m.split(",") if d.strip()) for m in _SHAPE_IN_MESSAGE.findall(str(error))]
        candidates += [tuple(x.shape) for x in self.originals]
        seen = []
        for i in range(len(declared)):
            for shape in candidates:
                if shape == declared[i] or (i, shape) in seen:
                    continue
                seen.append((i, shape))
                trial = list(declared)
                trial[i] = shape
                if self.evaluate(instance, trial, np.nan).error is None:
                    return trial
        return None


class _Run:
    """The arrays of one evaluate call: what was handed over, and what came back."""

    def __init__(self, inputs, shapes, fill):
        self.inputs = WatchedList(inputs)
        self.shapes = shapes
        self.outputs = [np.full(tuple(s), fill, np.float32) for s in shapes]
        self.handed = WatchedList(self.outputs)
        self.error = None


def _frozen(x):
    arr = np.array(x, dtype=np.float32)          # a copy, owned
    arr.flags.writeable = False
    return arr


def _same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def check_layer(cls, inputs, parameters=None, weights=None, layer=None, n_outputs=None):
    """Check one custom layer class on ``inputs`` (a list of arrays); return a LayerCheck.

    ``parameters`` and ``weights`` are what the model file would give (a dict; a list of arrays,
    flattened to 1-D float32 as Core ML hands them). ``n_outputs``, when known, is how many shapes
    output_shapes must return.
    """
    if not isinstance(cls, type):
        raise ImplementationError(f"check_layer takes a custom layer class, got {type(cls).__name__}")
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    c = _Checker(cls, list(inputs), parameters or {}, list(weights or []), layer, n_outputs)
    held = [w.copy() for w in c.weight_originals]              # writable: a write shows as a change
    instance = c.construct(held)
    if instance is not None:
        c.check_weights(held, "set_weight_data")
    if instance is None:
        return c.result
    declared, declared_at = c.declared_shapes(instance)
    c.result.output_shapes = declared
    if declared is None:
        return c.result
    snapshot = [w.copy() for w in held]
    first = c.evaluate(instance, declared, np.nan)
    c.check_inputs(first, instance, declared)
    weights_changed = c.check_weights(held, "evaluate", baseline=snapshot)
    if first.error is not None:
        needed = c.needed_shapes(instance, declared, first.error)
        if needed is not None:
            c.add("shape-mismatch", "output_shapes", f"declared {declared}, but evaluate needs {needed} "
                  f"(with the declared shapes it raised {type(first.error).__name__}: {first.error}, at "
                  f"{exception_location(first.error, cls)})", declared_at)
        else:
            c.raised("evaluate", first.error)
        return c.result
    valid = c.check_outputs(first, held)
    c.result.outputs = [np.array(o) for o in first.outputs]
    second = c.evaluate(instance, declared, np.nan)
    if second.error is not None:
        c.raised("evaluate", second.error, what="raised on its second call with the same inputs:")
        return c.result
    third = c.evaluate(instance, declared, SENTINEL)
    deterministic = True
    for i in valid:
        a, b, s = first.outputs[i], second.outputs[i], third.outputs[i]
        differ = ~((a == b) | (np.isnan(a) & np.isnan(b)))
        if differ.any() and not weights_changed:
            deterministic = False
            with np.errstate(invalid="ignore"):
                gap = float(np.nanmax(np.abs(a - b))) if np.isfinite(a - b).any() else float("nan")
            c.add("nondeterministic", "evaluate", f"two calls with the same inputs gave different outputs[{i}]: "
                  f"{int(differ.sum())} of {a.size} elements differ (up to {gap:.3g}); Core ML may call "
                  f"evaluate any number of times and expects the same answer", method_location(cls, "evaluate"))
        unwritten = np.isnan(a) & (s == SENTINEL)
        if unwritten.any():
            first_at = tuple(int(v) for v in np.argwhere(unwritten)[0])
            c.add("unwritten-output", "evaluate", f"left {int(unwritten.sum())} of {a.size} elements of "
                  f"outputs[{i}] unwritten (the first at {list(first_at)}); Core ML's outputs hold whatever "
                  f"memory held before (does output_shapes declare more than evaluate writes?)",
                  method_location(cls, "evaluate"))
        elif deterministic and not weights_changed:
            stale = ~((a == s) | (np.isnan(a) & np.isnan(s)))
            if stale.any():
                c.add("unwritten-output", "evaluate", f"{int(stale.sum())} of {a.size} elements of outputs[{i}] "
                      f"depend on the output's previous contents (evaluate reads outputs[{i}] before writing "
                      f"it, e.g. '+=' on an output never set)", method_location(cls, "evaluate"))
    return c.result
