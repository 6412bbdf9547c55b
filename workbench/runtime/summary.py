"""A plain-text description of a loaded model: what `workbench inspect` prints and notebooks show."""
import os
import sys
from collections import Counter


def summary(model):
    lines = [f"{model.name}: {model.type}, specification version {model.spec_version}, "
             f"{'rank-5 array mapping [Seq, Batch, C, H, W]' if model.rank5 else 'exact-rank arrays'}"]
    lines += _features(model)
    kinds = Counter(kind for _, kind, _, _ in model.layers)
    lines.append(f"layers: {len(model.layers)} (" + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) + ")")
    if not model.custom_layers:
        lines.append("custom layers: none")
    else:
        lines.append(f"custom layers: {len(model.custom_layers)}")
    for r in model.custom_layers:
        impl = f"implemented by {_where(r.implementation)}" if r.implementation else "MISSING implementation"
        lines.append(f"  {r.name}: className {r.class_name} ({impl})")
        if r.description:
            lines.append(f"    description: {r.description}")
        for key, value in r.parameters.items():
            lines.append(f"    parameter {key} = {value!r} ({r.parameter_types[key]})")
        for i, w in enumerate(r.weights):
            lines.append(f"    weights[{i}]: {w.size} values")
        ins = [f"{n} {model.blob_shapes.get(n, '?')}" for n in r.inputs]
        outs = [f"{n} {model.blob_shapes.get(n, '?')}" for n in r.outputs]
        lines.append(f"    inputs: {', '.join(ins)}; outputs: {', '.join(outs)}")
    missing = model.missing_implementations()
    if missing:
        lines.append("missing implementations: " + ", ".join(missing))
    return "\n".join(lines)


def _features(model):
    lines = ["inputs:"] + [f"  {name}: {desc}" for name, desc in model.input_description.items()]
    return lines + ["outputs:"] + [f"  {name}: {desc}" for name, desc in model.output_description.items()]


def pipeline_summary(model):
    """A pipeline's own features, then each stage's summary, indented; blobs are '<stage>/<blob>'."""
    lines = [f"{model.name}: {model.type} of {len(model.stages)} stages, specification version "
             f"{model.spec_version} (blobs are named '<stage>/<blob>')"]
    lines += _features(model)
    for stage in model.stages:
        lines += ["  " + line for line in stage.model.summary().splitlines()]
    missing = model.missing_implementations()
    if missing:
        lines.append("missing implementations (all stages): " + ", ".join(missing))
    return "\n".join(lines)


def _where(cls):
    """'Name in File.py' for classes from layer files, 'Name in module' otherwise (stable across machines)."""
    file = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if cls.__module__.startswith("workbench_layers.") and file:
        return f"{cls.__name__} in {os.path.basename(file)}"
    return f"{cls.__name__} in {cls.__module__}"
