"""The coremltools side of wb.convert: one MIL custom op per occurrence of a designated PyTorch op.

Why a module of its own: this is where the PyTorch op's arguments (named by its schema) are sorted
into the custom layer's inputs, weights and parameters, where PyTorch is asked for the op's output
shapes (on meta tensors), and where coremltools' global registries are changed for one conversion
and put back afterwards. coremltools' NeuralNetwork backend turns each MIL custom op's ``bindings``
(className, input order, parameters, weights, description) into ``CustomLayerParams``.
"""
import contextlib
import itertools
import json
from dataclasses import dataclass
from typing import Any, Mapping, Tuple

import numpy as np

from .errors import WorkbenchError

PARAMETER_TYPES = {float: "doubleValue", int: "intValue", bool: "boolValue", str: "stringValue"}
INT32 = np.iinfo(np.int32)
_OP_COUNTER = itertools.count()               # unique MIL op type names, never reused in a process
_REGISTERED_MIL_OPS = []                      # op types registered during the current conversion


class ConversionError(WorkbenchError):
    """The module, its designated custom ops or the conversion target cannot give a model with custom layers."""


@dataclass(frozen=True)
class RuntimeTensor:
    """A tensor argument known only at run time: what a parameter function sees of it."""
    shape: Tuple[int, ...]
    dtype: Any


def _pick_schema(schemas, values, where):
    """The schema whose arguments fit the node's inputs (overloads differ in count and tensor-ness)."""
    for schema in schemas:
        args = schema.arguments
        if len(args) == len(values) and all(
                not _is_tensor_type(a.type) or v is None or _is_var(v) for a, v in zip(args, values)):
            return schema
    raise ConversionError(f"{where}: none of its schemas ({'; '.join(map(str, schemas)) or 'none'}) fits "
                          f"its {len(values)} traced inputs")


def _is_tensor_type(t):
    return str(t).rstrip("?") == "Tensor"


def _is_var(v):
    return hasattr(v, "op") and hasattr(v, "val")


# ---------------------------------------------------------------- one occurrence -> one custom layer

class Designation:
    """A designated op, its schemas in the trace, and the layers made for it during one conversion."""

    def __init__(self, qualname, custom_op, schemas):
        if not custom_op.class_name or not str(custom_op.class_name).isidentifier():
            raise ConversionError(f"custom_ops[{qualname!r}]: className {custom_op.class_name!r} must be an "
                                  f"identifier (it names a Swift class)")
        self.qualname, self.spec, self.schemas = qualname, custom_op, schemas
        self.parameters = _parameter_sources(qualname, custom_op.parameters)
        self.layers = []

    def translate(self, context, node):
        from coremltools.converters.mil import Builder as mb
        where = f"{self.qualname} (traced node {node.name}, className {self.spec.class_name})"
        values = [context[name] if name in context else None for name in node.inputs]
        schema = _pick_schema(self.schemas, values, where)
        inputs, constants, tensors, arguments = {}, {}, {}, {}
        for arg, value in zip(schema.arguments, values):
            if isinstance(value, (list, tuple)):
                raise ConversionError(f"{where}: argument '{arg.name}' is a list of tensors; a custom layer "
                                      f"takes tensors only as separate inputs")
            if value is None:
                continue
            if value.val is None:
                if not _is_tensor_type(arg.type):
                    raise ConversionError(f"{where}: argument '{arg.name}' ({arg.type}) is computed at run "
                                          f"time; a custom layer parameter must be a constant")
                inputs[arg.name] = value
                arguments[arg.name] = RuntimeTensor(tuple(value.shape), value.dtype)
                continue
            if _is_tensor_type(arg.type):
                tensors[arg.name] = value
                constants[arg.name] = np.asarray(value.val)
            else:
                constants[arg.name] = value.val.item() if isinstance(value.val, np.generic) else value.val
            arguments[arg.name] = constants[arg.name]
        parameters = {name: source(arguments, where) for name, source in self.parameters.items()}
        weight_names = self._weight_names(tensors, parameters, where)
        for name, var in tensors.items():              # constant tensors not stored as weights stay inputs
            if name not in weight_names and name not in parameters:
                inputs[name] = var
        ordered = [a.name for a in schema.arguments if a.name in inputs]
        layer_name = self._layer_name(node.name)
        output_types = _output_types(self.qualname, schema, values, where)
        op_type = _mil_custom_op(self, ordered, inputs, parameters,
                                 [np.asarray(constants[n], np.float32).ravel() for n in weight_names],
                                 output_types, where)
        kwargs = {f"input_{i}": inputs[n] for i, n in enumerate(ordered)}
        kwargs.update({n: _mil_value(v) for n, v in parameters.items()})
        out = getattr(mb, op_type)(name=layer_name, **kwargs)
        outs = out if isinstance(out, (list, tuple)) else [out]
        for var, torch_name in zip(outs, node.outputs):
            context.add(var, torch_name=torch_name)
        self.layers.append(layer_name)

    def _weight_names(self, tensors, parameters, where):
        chosen = self.spec.weights
        if chosen is None:
            return [n for n in tensors if n not in parameters]
        for name in chosen:
            if name not in tensors:
                raise ConversionError(f"{where}: weights names '{name}', which is not a constant tensor argument "
                                      f"(constant tensors here: {sorted(tensors) or 'none'})")
        return list(chosen)

    def _layer_name(self, node_name):
        if not self.spec.layer_name:
            return node_name
        k = len(self.layers)
        return self.spec.layer_name if k == 0 else f"{self.spec.layer_name}_{k}"


def _parameter_sources(qualname, parameters):
    """{name: source(arguments, where) -> python value of the declared type} from CustomOp.parameters."""
    from coremltools.converters.mil.mil import Operation
    if isinstance(parameters, str):                 # parameters="epsilon": one name, not its letters
        parameters = [parameters]
    items = parameters.items() if isinstance(parameters, Mapping) else (
        p if isinstance(p, tuple) else (p, None) for p in parameters)
    sources = {}
    for name, how in items:
        if not isinstance(name, str) or not name.isidentifier() or name.startswith(("_", "input_")) \
                or name in ("name", "before_op") or hasattr(Operation, name):
            raise ConversionError(f"custom_ops[{qualname!r}]: parameter name {name!r} is not usable (an identifier, "
                                  f"not starting with '_' or 'input_', not a MIL Operation attribute)")
        if how is None or how in PARAMETER_TYPES:
            sources[name] = _argument_source(name, how)
        elif callable(how):
            sources[name] = _function_source(name, how)
        else:
            sources[name] = _fixed_source(name, how)
    return sources


def _argument_source(name, declared):
    def read(arguments, where):
        if name not in arguments:
            raise ConversionError(f"{where}: parameter '{name}' names no constant argument of the op "
                                  f"(its arguments here: {', '.join(arguments) or 'none'})")
        if isinstance(arguments[name], RuntimeTensor):
            raise ConversionError(f"{where}: parameter '{name}' is a tensor computed at run time; a parameter "
                                  f"must be a constant")
        return _coerce(arguments[name], declared, f"{where}: parameter '{name}'")
    return read


def _function_source(name, function):
    def compute(arguments, where):
        return _coerce(function(arguments), None, f"{where}: parameter '{name}' (computed)")
    return compute


def _fixed_source(name, value):
    return lambda arguments, where: _coerce(value, None, f"{where}: parameter '{name}'")


def _coerce(value, declared, where):
    """A parameter value as a Python bool, int, float or str (Core ML's four parameter types)."""
    if isinstance(value, np.ndarray) and value.size == 1 and declared is not str:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if declared is None:
        declared = next((t for t in (bool, int, float, str) if isinstance(value, t)), None)
        if declared is None:
            raise ConversionError(f"{where}: value {value!r} is not a bool, int, float or str; declare its type "
                                  f"(str records a list as JSON)")
    if declared is str and not isinstance(value, str):
        value = json.dumps(np.asarray(value).tolist())
    elif declared is bool:
        value = bool(value)
    elif declared is int:
        if isinstance(value, float) and not value.is_integer() or not isinstance(value, (int, float)):
            raise ConversionError(f"{where}: {value!r} is not an integer")
        value = int(value)
        if not INT32.min <= value <= INT32.max:
            raise ConversionError(f"{where}: {value} does not fit the int32 that MIL keeps integers in")
    elif declared is float:
        if not isinstance(value, (int, float)):
            raise ConversionError(f"{where}: {value!r} is not a number")
        value = float(value)
    return value


def _mil_value(value):
    if isinstance(value, bool) or isinstance(value, str):
        return value
    return np.int32(value) if isinstance(value, int) else np.float32(value)


def _output_types(qualname, schema, values, where):
    """MIL output types of the op, from PyTorch itself: on meta tensors, else on zeros."""
    import torch
    from coremltools.converters.mil.mil import types
    namespace, _, name = qualname.partition("::")
    op = getattr(getattr(torch.ops, namespace), name)
    results = None
    for device in ("meta", "cpu"):
        args, kwargs = [], {}
        for arg, value in zip(schema.arguments, values):
            value = _torch_argument(value, device)
            if arg.kwarg_only:
                kwargs[arg.name] = value
            else:
                args.append(value)
        try:
            with torch.no_grad():
                results = op(*args, **kwargs)
            break
        except Exception as e:                      # no meta kernel: run it on zeros; else report
            error = e
    if results is None:
        raise ConversionError(f"{where}: PyTorch cannot run the op on the traced shapes to find its output "
                              f"shapes: {type(error).__name__}: {error}")
    results = list(results) if isinstance(results, (list, tuple)) else [results]
    out = []
    for r in results:
        dtype = {torch.float16: types.fp16, torch.bool: types.bool}.get(
            r.dtype, types.int32 if not r.dtype.is_floating_point else types.fp32)
        out.append(types.tensor(dtype, tuple(r.shape)) if r.dim() else dtype)
    return out


def _torch_argument(value, device):
    import torch
    from coremltools.converters.mil.mil import types
    if value is None:
        return None
    if value.val is None:                            # a run-time tensor: only its shape and dtype matter
        np_dtype = types.nptype_from_builtin(value.dtype)
        return torch.zeros(tuple(value.shape), dtype=torch.from_numpy(np.zeros(0, np_dtype)).dtype, device=device)
    val = value.val
    if isinstance(val, np.ndarray) and _is_tensor_var(value):
        return torch.from_numpy(np.array(val)).to(device)
    return val.tolist() if isinstance(val, (np.ndarray, np.generic)) else val


def _is_tensor_var(var):
    from coremltools.converters.mil.mil import types
    return types.is_tensor(var.sym_type)


def _mil_custom_op(designation, ordered, inputs, parameters, weights, output_types, where):
    """Register a MIL custom op for this one occurrence; return its op type (the builder's method name)."""
    from coremltools.converters.mil import register_op
    from coremltools.converters.mil.mil import Operation, types
    from coremltools.converters.mil.mil.input_type import InputSpec, TensorInputType

    spec = {f"input_{i}": TensorInputType(type_domain=inputs[n].dtype) for i, n in enumerate(ordered)}
    for name, value in parameters.items():
        dtype = {bool: types.bool, int: types.int32, float: types.fp32, str: types.str}[type(value)]
        spec[name] = TensorInputType(const=True, type_domain=dtype)
    if not ordered:
        raise ConversionError(f"{where}: the op has no tensor input computed at run time; Core ML custom "
                              f"layers need at least one input")
    bindings = {
        "class_name": designation.spec.class_name,
        "input_order": [f"input_{i}" for i in range(len(ordered))],
        "parameters": list(parameters),
        "weights": weights,
        "description": designation.spec.description or f"PyTorch op {designation.qualname}",
    }
    op_type = f"workbench_custom_op_{next(_OP_COUNTER)}"
    single = output_types[0] if len(output_types) == 1 else None
    cls = type(op_type, (Operation,), {
        "input_spec": InputSpec(**spec),
        "bindings": bindings,
        "type_inference": lambda self: single if single is not None else tuple(output_types),
        "__module__": __name__,
        "__doc__": f"MIL custom op for {designation.qualname} -> {designation.spec.class_name}",
    })
    register_op(cls, is_custom_op=True)
    _REGISTERED_MIL_OPS.append(op_type)
    return op_type


@contextlib.contextmanager
def registered(designations):
    """Register a torch translation per designated op for the duration of one conversion, then undo it all."""
    from coremltools.converters.mil import Builder
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY
    from coremltools.converters.mil.frontend.torch.utils import sanitize_op_kind
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    table = _TORCH_OPS_REGISTRY.name_to_func_mapping
    keys = {sanitize_op_kind(d.qualname): d for d in designations}
    saved = {key: table[key] for key in keys if key in table}
    try:
        for key, d in keys.items():
            _TORCH_OPS_REGISTRY.set_func_by_name(d.translate, key)
        yield
    finally:
        for key in keys:
            if key in saved:
                table[key] = saved[key]
            else:
                table.pop(key, None)
        while _REGISTERED_MIL_OPS:
            op_type = _REGISTERED_MIL_OPS.pop()
            SSAOpRegistry.custom_ops.pop(op_type, None)
            if op_type in vars(Builder):
                delattr(Builder, op_type)


