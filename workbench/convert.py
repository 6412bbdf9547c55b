"""PyTorch -> Core ML NeuralNetwork, with chosen PyTorch ops emitted as custom layers, plus PyTorch's test cases.

    model, cases = wb.convert(module, torch.randn(1, 3, 32, 32), custom_ops={
        "aten::mish": wb.CustomOp("Mish"),
        torch.ops.mylib.pixel_norm: wb.CustomOp("PixelNorm", parameters={"epsilon": float}),
    })

Why: the ops Core ML lacks (or that an app wants to implement itself) must become custom layers at
conversion time, and the only oracle for their implementations is PyTorch. This does coremltools'
"custom operators" workflow in one call: each designated op gets a MIL op registered with
``is_custom_op=True`` (its ``bindings`` carry className, input order, parameters, weights and
description) and a ``register_torch_op`` translation; coremltools' NeuralNetwork backend then writes
``CustomLayerParams``. The registrations live only for the call and are undone afterwards, so
coremltools' global registries look the same before and after (convert_mil.py holds that side).

What becomes what, per occurrence of a designated op (arguments named by the op's schema):
- tensor arguments computed at run time -> the layer's inputs, in argument order;
- constant tensor arguments (module parameters, buffers) -> the layer's weights, in argument order
  (``CustomOp.weights`` names them explicitly; constant tensors not named stay inputs);
- constant arguments named in ``CustomOp.parameters`` -> the layer's parameters. Float parameters
  pass through MIL, which keeps float constants in fp32: the doubleValue holds the float32 nearest
  the argument, the value PyTorch applies to a float32 tensor.
"""
import difflib
import inspect
import threading
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from .convert_mil import ConversionError, Designation, RuntimeTensor, registered
from .errors import WorkbenchError

_LOCK = threading.Lock()                      # the coremltools registries are global: one conversion at a time


@dataclass
class CustomOp:
    """How one PyTorch op becomes a Core ML custom layer.

    ``parameters``: which constant values the layer records, as
    - a list of argument names (``["epsilon"]``) or of ``(name, type)`` pairs, or
    - a mapping name -> ``float | int | bool | str`` (read the op argument of that name, as that type),
      name -> a fixed value (``{"channel_axis": -3}``), or name -> a function of the op's arguments
      (``{"channels": lambda args: args["beta"].size}``; constants are given as values, run-time
      tensors as ``RuntimeTensor(shape, dtype)``).
    A list argument (``int[]``) is recorded as a JSON string when its type is ``str``.
    ``weights``: names of constant tensor arguments to store as weights (None: every constant tensor).
    ``layer_name``: the layer's name in the model (further occurrences get ``_1``, ``_2``, ...);
    by default coremltools' name for the traced node.
    """
    class_name: str
    parameters: Union[Sequence, Mapping] = ()
    description: str = ""
    weights: Optional[Sequence[str]] = None
    layer_name: Optional[str] = None


# ---------------------------------------------------------------- naming the ops

def qualified_name(op):
    """'namespace::name' of an op given as a string, a torch op (packet or overload) or a torch function."""
    if isinstance(op, str):
        name = op.strip()
        if "::" not in name:
            ns, _, rest = name.rpartition(".")        # "aten.gelu" -> aten::gelu; "gelu" -> aten::gelu
            name = f"{ns or 'aten'}::{rest}"
    elif hasattr(op, "_qualified_op_name"):          # torch.ops.ns.name (OpOverloadPacket)
        name = op._qualified_op_name
    elif "::" in str(getattr(op, "_qualname", "")):  # what torch.library.custom_op returns
        name = op._qualname
    elif hasattr(getattr(op, "_schema", None), "name"):   # torch.ops.ns.name.overload (OpOverload)
        name = op._schema.name
    elif callable(op) and getattr(op, "__name__", None):           # torch.nn.functional.mish, torch.sigmoid
        import torch
        if not hasattr(torch.ops.aten, op.__name__):
            raise ConversionError(f"custom_ops: {op!r} is a Python function with no aten op of the same name; "
                                  f"designate the op by its qualified name, e.g. 'aten::{op.__name__}'")
        name = f"aten::{op.__name__}"
    else:
        raise ConversionError(f"custom_ops: cannot tell which op {op!r} is; give 'namespace::name', "
                              f"a torch.ops op or a torch function")
    if name.endswith("_") and not name.endswith("__"):  # in-place variants are converted with the op
        name = name[:-1]
    return name


def _nearest_first(wanted, kinds):
    short = wanted.split("::")[-1]
    return sorted(kinds, key=lambda k: (-difflib.SequenceMatcher(None, short, k.split("::")[-1]).ratio(), k))


# ---------------------------------------------------------------- the traced graph

def _graph_ops(traced):
    """{kind: [schema, ...]} of every op node in the traced (inlined) graph, in-place suffix removed."""
    import torch
    ops = {}
    for node in traced.inlined_graph.nodes():
        kind = node.kind()
        if kind.startswith("prim::"):
            continue
        kind = kind[:-1] if kind.endswith("_") and not kind.endswith("__") else kind
        schema = node.schema()
        schemas = ops.setdefault(kind, [])
        if schema != "(no schema)" and all(str(s) != schema for s in schemas):
            schemas.append(torch._C.parse_schema(schema))
    return ops


# ---------------------------------------------------------------- the public call

def convert(module, example_inputs, custom_ops=None, *, input_names=None, output_names=None, random_cases=3,
            seed=0, convert_to="neuralnetwork", minimum_deployment_target=None, layers=None, rtol=1e-4,
            atol=None):
    """Trace ``module``, convert it to a NeuralNetwork with ``custom_ops`` as custom layers; return (model, cases).

    ``example_inputs``: a tensor or array, a tuple of them, or a mapping name -> tensor (names the inputs).
    ``custom_ops``: {op: wb.CustomOp(...)}; op as 'namespace::name', a torch.ops op or a torch function.
    ``model`` is ``wb.load`` of the converted spec (with ``layers``); ``cases`` are PyTorch's outputs on the
    example and on ``random_cases`` random inputs (seeded), as ``wb.TestCase`` objects with tolerances
    ``rtol``/``atol`` (``atol`` None: 1e-4 of each output's largest magnitude, at least 1e-4).
    """
    import torch
    _check_target(convert_to, minimum_deployment_target)
    if isinstance(module, torch.nn.Module) and module.training:
        raise ConversionError(f"{type(module).__name__} is in training mode (dropout, batch statistics); call "
                              f".eval() before converting")
    names, examples = _named_inputs(module, example_inputs, input_names)
    with torch.no_grad():
        traced = torch.jit.trace(module, _torch_inputs(examples))
    reference = _run(module, examples)
    output_names = list(output_names) if output_names else (
        ["output"] if len(reference) == 1 else [f"output_{i}" for i in range(len(reference))])
    if len(output_names) != len(reference):
        raise ConversionError(f"output_names gives {len(output_names)} names; the module returns "
                              f"{len(reference)} tensors")
    ops = _graph_ops(traced)
    designations = []
    for op, custom_op in (custom_ops or {}).items():
        qualname = qualified_name(op)
        if qualname not in ops:
            raise ConversionError(f"custom_ops: {qualname} does not occur in the traced graph of "
                                  f"{type(module).__name__}; its ops, nearest first: "
                                  f"{', '.join(_nearest_first(qualname, ops))}")
        if not isinstance(custom_op, CustomOp):
            raise ConversionError(f"custom_ops[{qualname!r}]: expected wb.CustomOp(...), got {type(custom_op).__name__}")
        designations.append(Designation(qualname, custom_op, ops[qualname]))
    spec = _coreml_spec(traced, names, examples, output_names, designations, convert_to, minimum_deployment_target)
    for shape, feature in zip((r.shape for r in reference), spec.description.output):
        t = feature.type.multiArrayType
        if feature.type.WhichOneof("Type") == "multiArrayType" and not len(t.shape) and t.WhichOneof(
                "ShapeFlexibility") is None:
            t.shape[:] = shape                        # the converter leaves output shapes open
    from .runtime.model import Model
    model = Model(spec, name=type(module).__name__, layers=layers)     # what wb.load gives, named for errors
    cases = _cases(module, names, examples, output_names, random_cases, seed, rtol, atol)
    return model, cases


def _check_target(convert_to, minimum_deployment_target):
    if convert_to != "neuralnetwork":
        raise ConversionError(f"convert_to={convert_to!r}: custom layers exist only in NeuralNetwork models "
                              f"(an ML Program has no CustomLayerParams); use convert_to='neuralnetwork'")
    if minimum_deployment_target is not None:
        import coremltools as ct
        if minimum_deployment_target >= ct.target.iOS15:
            raise ConversionError(f"minimum_deployment_target={minimum_deployment_target.name}: coremltools "
                                  f"converts targets from iOS 15 / macOS 12 on to ML Program, which cannot hold "
                                  f"custom layers; use iOS14 / macOS11 or earlier (or leave it out)")


def _named_inputs(module, example_inputs, input_names):
    """(names, float32/int32 arrays) of the example inputs, names from the mapping, input_names or forward's."""
    if isinstance(example_inputs, Mapping):
        names, values = list(example_inputs), list(example_inputs.values())
    else:
        values = list(example_inputs) if isinstance(example_inputs, (tuple, list)) else [example_inputs]
        if input_names is None:
            params = list(inspect.signature(getattr(module, "forward", module)).parameters.values())
            input_names = [p.name for p in params[:len(values)]
                           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = list(input_names)
    if input_names is not None and isinstance(example_inputs, Mapping):
        names = list(input_names)
    if len(names) != len(values):
        raise ConversionError(f"{len(values)} example inputs but {len(names)} input names ({names})")
    arrays = []
    for name, value in zip(names, values):
        a = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        if np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)
        elif np.issubdtype(a.dtype, np.integer):
            a = a.astype(np.int32)
        else:
            raise ConversionError(f"input '{name}': dtype {a.dtype}; Core ML inputs are float or integer arrays")
        arrays.append(a)
    return names, arrays


def _torch_inputs(arrays):
    """Tensors for PyTorch: float32 as is, integers as int64 (PyTorch's index type)."""
    import torch
    return tuple(torch.from_numpy(a).long() if a.dtype == np.int32 else torch.from_numpy(a) for a in arrays)


def _run(module, arrays):
    import torch
    with torch.no_grad():
        result = module(*_torch_inputs(arrays))
    results = list(result) if isinstance(result, (tuple, list)) else [result]
    return [r.detach().cpu().numpy().astype(np.float32) if r.dtype.is_floating_point else r.detach().cpu().numpy()
            for r in results]


def _coreml_spec(traced, names, examples, output_names, designations, convert_to, minimum_deployment_target):
    import coremltools as ct
    inputs = [ct.TensorType(name=n, shape=x.shape, dtype=x.dtype.type) for n, x in zip(names, examples)]
    outputs = [ct.TensorType(name=n) for n in output_names]
    with _LOCK, registered(designations):
        try:
            mlmodel = ct.convert(traced, inputs=inputs, outputs=outputs, convert_to=convert_to,
                                 minimum_deployment_target=minimum_deployment_target)
        except WorkbenchError:
            raise
        except Exception as e:
            raise ConversionError(f"coremltools could not convert the traced module: {type(e).__name__}: {e}") from e
    for d in designations:
        if not d.layers:
            raise ConversionError(f"custom_ops: {d.qualname} occurs in the trace but coremltools never translated "
                                  f"it (it was folded into a constant or removed as unused)")
    return mlmodel.get_spec()


def _cases(module, names, examples, output_names, random_cases, seed, rtol, atol):
    """PyTorch's outputs on the example and on seeded random inputs, as test cases."""
    rng = np.random.default_rng(seed)
    inputs_list = [("example", examples)]
    for k in range(random_cases):
        drawn = []
        for x in examples:
            if x.dtype == np.int32:
                drawn.append(rng.integers(x.min(), x.max() + 1, size=x.shape, dtype=np.int32))
            else:
                std = float(x.std()) or 1.0
                drawn.append(rng.normal(float(x.mean()), std, size=x.shape).astype(np.float32))
        inputs_list.append((f"random_{k + 1}", drawn))
    from .testing import TestCase
    cases = []
    for case_name, arrays in inputs_list:
        expected = dict(zip(output_names, _run(module, arrays)))
        case_atol = atol if atol is not None else {
            name: 1e-4 * max([1.0] + [float(np.abs(v).max())] * bool(v.size)) for name, v in expected.items()}
        description = "PyTorch on the example inputs" if case_name == "example" else \
            f"PyTorch on random inputs (seed {seed}), drawn with the example's mean and spread"
        cases.append(TestCase(case_name, dict(zip(names, arrays)), expected, rtol=rtol, atol=case_atol,
                              description=description))
    return cases

__all__ = ["convert", "CustomOp", "RuntimeTensor", "ConversionError", "qualified_name"]
