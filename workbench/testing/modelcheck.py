"""``model.check()``: every custom layer of a loaded model checked on inputs of the model's own shapes.

The network runs layer by layer on the given inputs (or seeded random ones of the model's default
shapes: zeros would hide a layer that writes ``x *= 2`` into its input); each custom layer is
checked (see checks.py) on the very values it receives there. A layer whose check gives no outputs
(it raised) stops the run; layers after it, whose inputs were never computed, are listed as
skipped with the reason.
"""
import html

import numpy as np

from ..errors import InputError, WorkbenchError
from ..runtime.spec import feature_kind
from .checks import check_layer

SEED = 20240611


class ModelCheck:
    """The LayerChecks of a model's custom layers: ``ok``, ``checks``, ``problems``, ``skipped``."""

    def __init__(self, model_name, checks, skipped):
        self.model_name = model_name
        self.checks = list(checks)
        self.skipped = dict(skipped)             # layer name -> why it was not checked

    @property
    def ok(self):
        return not self.skipped and all(c.ok for c in self.checks)

    @property
    def problems(self):
        return [p for c in self.checks for p in c.problems]

    def __getitem__(self, layer):
        for c in self.checks:
            if c.layer == layer:
                return c
        raise KeyError(f"no checked custom layer named {layer!r}; checked: {[c.layer for c in self.checks]}")

    def __iter__(self):
        return iter(self.checks)

    def __len__(self):
        return len(self.checks)

    def describe(self):
        lines = [f"{self.model_name}: {len(self.checks)} custom layer(s) checked, "
                 f"{sum(not c.ok for c in self.checks)} with problems, {len(self.skipped)} skipped"]
        lines += [c.describe() for c in self.checks]
        lines += [f"layer '{name}': skipped: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)

    def __repr__(self):
        state = "ok" if self.ok else f"{len(self.problems)} problem(s), {len(self.skipped)} skipped"
        return f"<ModelCheck {self.model_name}: {len(self.checks)} custom layer(s), {state}>"

    def _repr_html_(self):
        return layer_check_html(self.checks, self.skipped, title=self.model_name)


def default_inputs(model, seed=SEED):
    """Seeded random inputs of the model's default shapes: normal arrays, 0-255 images (as arrays)."""
    zeros = model.io.default_inputs()
    if zeros is None:
        raise InputError(f"{model.name}: the model declares no default shape for every input (flexible "
                         f"shapes without defaults); give inputs: model.check(inputs)")
    rng = np.random.default_rng(seed)
    out = {}
    for f in model.io.inputs:
        shape = zeros[f.name].shape
        if feature_kind(f) == "imageType":
            out[f.name] = rng.uniform(0, 255, shape).astype(np.float32)
        else:
            out[f.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _check_record(record, scope):
    return check_layer(record.implementation, [scope[b] for b in record.inputs], record.parameters,
                       record.weights, layer=record.name, n_outputs=len(record.outputs))


def check_model(model, inputs=None):
    """Check every custom layer of ``model`` on its inputs in a run on ``inputs``; return a ModelCheck.

    The top-level network runs step by step; a custom layer is checked where it stands, and its
    outputs from the check (computed on writable copies, where the runtime would have stopped a
    layer that writes its input) feed the layers after it, so one faulty layer does not hide the
    next. Custom layers inside loops and branches are checked on their last inputs of the run.
    """
    if hasattr(model, "stages"):
        return _check_pipeline(model, inputs)
    if inputs is None:
        scope = model.io.to_blobs(default_inputs(model), raw_images=True)
    else:
        scope = model.io.to_blobs(inputs)
    checks, failure = {}, None
    with model.running(), np.errstate(all="ignore"):
        for step in model.network.steps:
            record = getattr(step, "record", None)
            if record is not None and record.implementation is not None:
                checks[record.name] = check = _check_record(record, scope)
                if len(check.outputs) == len(step.outputs):
                    scope.update(zip(step.outputs, check.outputs))
                    continue
                failure = f"layer '{record.name}' ({record.class_name}) gave no outputs in its check"
                break
            try:
                step.run(scope)
            except WorkbenchError as e:
                failure = str(e)
                break
    skipped = {}
    for record in model.custom_layers:
        if record.name in checks:
            continue
        absent = [b for b in record.inputs if b not in scope]
        if record.implementation is None:
            skipped[record.name] = f"no implementation for className {record.class_name}"
        elif absent:
            skipped[record.name] = (f"its input blob(s) {', '.join(absent)} were not computed"
                                    + (f": {failure}" if failure else ""))
        else:
            checks[record.name] = _check_record(record, scope)
    order = [r.name for r in model.custom_layers]
    return ModelCheck(model.name, sorted(checks.values(), key=lambda c: order.index(c.layer)), skipped)


def _check_pipeline(model, inputs):
    """Each stage checked in turn, its layers named "<stage>/<layer>" as the pipeline's trace names blobs.

    With ``inputs``, a stage gets the features the stages before it predicted; without them, or once
    a stage's prediction fails, a stage is checked on random inputs of its own default shapes.
    """
    checks, skipped = [], {}
    pool = None if inputs is None else dict(inputs)
    for stage in model.stages:
        reads = None
        if pool is not None:
            reads = {f.name: pool[f.name] for f in stage.model._structure.description.input if f.name in pool}
        result = check_model(stage.model, reads)
        for c in result.checks:
            c.layer = f"{stage.name}/{c.layer}"
            checks.append(c)
        skipped.update((f"{stage.name}/{name}", why) for name, why in result.skipped.items())
        if pool is not None:
            try:
                pool.update(stage.model.predict(reads))
            except WorkbenchError:
                pool = None
    return ModelCheck(model.name, checks, skipped)


# ------------------------------------------------------------------ HTML

def layer_check_html(checks, skipped=None, title=None):
    """One row per problem (or per clean layer), green for clean and red for problems; stable text."""
    e = html.escape
    ok_style, bad_style = "background:#e6f4ea;color:#137333", "background:#fce8e6;color:#a50e0e"
    rows = []
    for c in checks:
        name = e(c.layer or "") + (" " if c.layer else "") + f"({e(c.class_name)})"
        if c.ok:
            rows.append(f'<tr style="{ok_style}"><td>{name}</td><td>ok</td><td></td>'
                        f'<td>inputs {e(str(c.input_shapes))} &rarr; outputs {e(str(c.output_shapes))}</td>'
                        f'<td></td></tr>')
        for p in c.problems:
            rows.append(f'<tr style="{bad_style}"><td>{name}</td><td>{e(p.kind)}</td><td>{e(p.method)}</td>'
                        f'<td>{e(p.message)}</td><td>{e(p.location or "")}</td></tr>')
    for layer, why in (skipped or {}).items():
        rows.append(f'<tr style="{bad_style}"><td>{e(layer)}</td><td>skipped</td><td></td><td>{e(why)}</td>'
                    f'<td></td></tr>')
    header = "<tr><th>layer</th><th>kind</th><th>method</th><th>message</th><th>where</th></tr>"
    head = f"<p><b>{e(title)}</b></p>" if title else ""
    return f'<div class="workbench-layer-check">{head}<table>{header}{"".join(rows)}</table></div>'
