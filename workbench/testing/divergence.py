"""Where a model first goes wrong: the first layer, in execution order, whose output leaves the reference.

A final output that disagrees says little about which of hundreds of layers is at fault. Given
reference values of intermediate blobs (from the original framework: the example's
``intermediate/`` entries, or PyTorch forward hooks via ``capture_torch``), the blobs of
``model.trace`` are compared in the order the network produced them; the first one outside
tolerance names the layer to look at, and whether its own inputs still agreed says if the fault is
in that layer or came in through an input without a reference.
"""
from dataclasses import dataclass, field

import numpy as np

from .cases import CaseError
from .compare import compare_arrays


@dataclass
class LayerInfo:
    name: str
    kind: str
    class_name: str
    inputs: list
    outputs: list


def layer_producers(model, prefix=""):
    """blob name -> LayerInfo of the layer that writes it, nested networks (loops, branches) included.

    In a pipeline, blob and layer names carry the stage's name, as ``trace`` gives them ("<stage>/<blob>").
    """
    producers = {}
    for stage in getattr(model, "stages", ()):
        producers.update(layer_producers(stage.model, f"{prefix}{stage.name}/"))
    if not hasattr(model, "nn"):
        return producers

    def walk(layers, layer_prefix):
        for layer in layers:
            kind = layer.WhichOneof("layer")
            info = LayerInfo(layer_prefix + layer.name, kind,
                             layer.custom.className if kind == "custom" else None,
                             [prefix + b for b in layer.input], [prefix + b for b in layer.output])
            for blob in info.outputs:
                producers.setdefault(blob, info)
            params = getattr(layer, kind) if kind else None
            for descriptor, value in (params.ListFields() if params is not None else []):
                if descriptor.message_type is not None and hasattr(value, "layers"):
                    walk(value.layers, f"{layer_prefix}{layer.name}/{descriptor.name}/")

    walk(model.nn.layers, prefix)
    return producers


def match_references(model, scope, references):
    """Map reference names onto blobs: a blob name as is, a layer name to its first output.

    Returns (blob -> reference array, [names that match neither]).
    """
    producers = layer_producers(model)
    by_layer = {info.name: info.outputs[0] for info in producers.values() if info.outputs}
    matched, unmatched = {}, []
    for name, value in references.items():
        blob = name if name in scope else by_layer.get(name)
        if blob is None or blob not in scope:
            unmatched.append(name)
        else:
            matched[blob] = value
    return matched, unmatched


@dataclass
class FirstDivergence:
    """The first layer whose output leaves the reference, and the evidence."""
    case: str
    blob: str
    layer: str
    kind: str
    class_name: str
    comparison: object
    input_status: dict = field(default_factory=dict)   # input blob -> "agrees" | "differs" | "no reference"
    last_agreeing: str = None

    @property
    def max_abs_error(self):
        return self.comparison.max_abs_error

    @property
    def inputs_agree(self):
        """True when every input of the layer was compared and agreed: the fault is in this layer."""
        return bool(self.input_status) and all(s == "agrees" for s in self.input_status.values())

    def describe(self, with_case=True):
        what = f"layer '{self.layer}' ({self.kind}" + (f", className {self.class_name}" if self.class_name else "") + ")"
        if self.layer is None:
            what = "the model input"
        c = self.comparison
        found = c.problem if c.max_abs_error is None else (
            f"{c.mismatched} of {c.size} elements outside tolerance, max abs error {c.max_abs_error:.3g}")
        text = (f"case '{self.case}': " if with_case else "") + f"first divergence at {what}, blob '{self.blob}': {found}"
        if self.input_status:
            text += "; its inputs: " + ", ".join(f"'{b}' {s}" for b, s in self.input_status.items())
        return text

    def plot(self):
        """Expected / actual / difference of the diverging blob, as a matplotlib Figure."""
        from .plots import plot_comparison
        where = f"layer '{self.layer}'" + (f" ({self.class_name})" if self.class_name else f" ({self.kind})")
        return plot_comparison(self.comparison, title=f"case '{self.case}': first divergence at {where}, "
                                                      f"blob '{self.blob}'")

    def __repr__(self):
        return f"<FirstDivergence {self.describe()}>"


def first_divergence(model, case_name, scope, references, tolerance):
    """Compare referenced blobs in execution order; return (FirstDivergence or None, {blob: Comparison}).

    ``scope`` is ``model.trace``'s answer (its order is the order blobs were produced); ``references``
    maps blob names to arrays; ``tolerance(blob)`` gives (rtol, atol).
    """
    producers = layer_producers(model)
    comparisons, status, found, last_ok = {}, {}, None, None
    for blob, actual in scope.items():
        if blob not in references:
            continue
        rtol, atol = tolerance(blob)
        result = compare_arrays(blob, references[blob], actual, rtol, atol)
        comparisons[blob] = result
        status[blob] = "agrees" if result.passed else "differs"
        if result.passed and found is None:
            last_ok = blob
        if not result.passed and found is None:
            info = producers.get(blob)
            found = FirstDivergence(
                case=case_name, blob=blob, comparison=result, last_agreeing=last_ok,
                layer=info.name if info else None, kind=info.kind if info else "input",
                class_name=info.class_name if info else None,
                input_status={b: status.get(b, "no reference") for b in (info.inputs if info else [])})
    return found, comparisons


def capture_torch(module, inputs, modules=None, rename=None):
    """Outputs of a PyTorch module's submodules on ``inputs``, by name, caught with forward hooks.

    ``modules``: the submodule names to capture (default: every submodule). ``rename`` maps
    submodule names to the Core ML blob or layer names the conversion gave them, where it kept a
    correspondence (e.g. ``{"conv1": "16", "swish": "scaled_swish"}``). A submodule called more
    than once keeps its first output. Tuple outputs give ``name:0``, ``name:1``, ...
    """
    import torch

    rename = dict(rename or {})
    wanted = None if modules is None else set(modules)
    captured, handles = {}, []

    def store(name, value):
        if isinstance(value, torch.Tensor):
            captured.setdefault(rename.get(name, name), value.detach().cpu().numpy().copy())
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                if isinstance(item, torch.Tensor):
                    key = f"{name}:{i}"
                    captured.setdefault(rename.get(key, key), item.detach().cpu().numpy().copy())

    for name, sub in module.named_modules():
        if not name or (wanted is not None and name not in wanted):
            continue
        handles.append(sub.register_forward_hook(lambda _m, _i, out, name=name: store(name, out)))
    if wanted is not None:
        absent = sorted(wanted - {n for n, _ in module.named_modules()})
        if absent:
            for h in handles:
                h.remove()
            raise CaseError(f"capture_torch: {type(module).__name__} has no submodule(s) {', '.join(absent)}")
    args = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    args = [torch.from_numpy(np.asarray(a)) if isinstance(a, np.ndarray) else a for a in args]
    try:
        with torch.no_grad():
            module(*args)
    finally:
        for h in handles:
            h.remove()
    return captured
