"""Test cases: inputs, the outputs the original framework gave, tolerances; saved as plain .npz files.

The file layout is the bundled example's (``workbench/examples/example_cases.npz``), one entry per
value, so any numpy user can read it and ``examples.example_cases`` reads ours::

    <case>/input/<name>          an input (arrays; images as uint8 HxWxC arrays)
    <case>/expected/<name>       an expected output (arrays; images; labels as 0-d arrays; dicts as values)
    <case>/intermediate/<blob>   a reference value of an intermediate blob (arrays)
    <case>/meta/json             what arrays cannot say: tolerances, description, which entries are
                                 images, labels or probability dicts (with their keys)

Files are data: they are read with ``allow_pickle=False``, so loading one runs no code.
"""
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import WorkbenchError

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-4
KINDS = ("input", "expected", "intermediate")


class CaseError(WorkbenchError):
    """A test case, case file or reference cannot be used (bad name, unreadable file, unknown value type)."""


def _is_image(value):
    return hasattr(value, "convert") and hasattr(value, "size") and hasattr(value, "mode")


@dataclass
class TestCase:
    """One test case: ``inputs`` for predict, the ``expected`` outputs, and how close is close enough.

    An output passes when every element satisfies ``|actual - expected| <= atol + rtol * |expected|``
    (numpy.isclose's rule; NaN matches NaN). ``rtol``/``atol`` are numbers, or dicts by output or
    blob name with the defaults for names they omit (images often want ``atol=1``: one grey level).
    ``intermediates`` maps blob (or layer) names to reference values, to find where a model first
    goes wrong.
    """
    __test__ = False                      # not a pytest test class, though its name says Test

    name: str
    inputs: dict
    expected: dict
    rtol: object = DEFAULT_RTOL
    atol: object = DEFAULT_ATOL
    intermediates: dict = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise CaseError(f"test case name {self.name!r}: must be a non-empty string without '/' "
                            f"(it is the first part of each key in the .npz file)")
        for attr in ("inputs", "expected", "intermediates"):
            value = getattr(self, attr)
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise CaseError(f"test case '{self.name}': {attr} must be a dict of name -> value, "
                                f"got {type(value).__name__}")
            setattr(self, attr, dict(value))
        for attr in ("rtol", "atol"):
            value = getattr(self, attr)
            values = value.values() if isinstance(value, dict) else [value]
            if any(not isinstance(v, (int, float, np.floating, np.integer)) or v < 0 for v in values):
                raise CaseError(f"test case '{self.name}': {attr} must be a non-negative number or a dict "
                                f"of them, got {value!r}")

    def tolerance(self, name):
        """(rtol, atol) for one output or blob."""
        def pick(value, default):
            return float(value.get(name, default)) if isinstance(value, dict) else float(value)
        return pick(self.rtol, DEFAULT_RTOL), pick(self.atol, DEFAULT_ATOL)


def as_cases(cases, output_names=None):
    """TestCases from a list of TestCase, (name, inputs, expected) triples, or a path to a .npz file.

    In a triple (as ``examples.example_cases`` gives), expected entries that are not among
    ``output_names`` are reference intermediates.
    """
    if isinstance(cases, (str, os.PathLike)):
        return load_cases(cases)
    if isinstance(cases, TestCase):
        return [cases]
    out = []
    for i, case in enumerate(cases):
        if isinstance(case, TestCase):
            out.append(case)
        elif isinstance(case, (tuple, list)) and len(case) == 3:
            name, inputs, expected = case
            outputs = {k: v for k, v in expected.items() if output_names is None or k in output_names}
            rest = {k: v for k, v in expected.items() if k not in outputs}
            out.append(TestCase(name, inputs, outputs, intermediates=rest))
        else:
            raise CaseError(f"test case #{i}: expected a wb.TestCase or a (name, inputs, expected) triple, "
                            f"got {type(case).__name__}")
    names = [c.name for c in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CaseError(f"test case names must be unique; repeated: {', '.join(duplicates)}")
    return out


# ------------------------------------------------------------------ saving

def _encode(case, kind, name, value, types):
    """The array to store for one value; records its type in ``types`` when an array cannot say it."""
    if _is_image(value):
        types[f"{kind}/{name}"] = {"type": "image", "mode": value.mode}
        return np.asarray(value)
    if isinstance(value, dict):
        if kind == "intermediate":
            raise CaseError(f"test case '{case}': intermediate '{name}' must be an array, got a dict")
        keys = list(value)
        if not all(isinstance(k, (str, int)) for k in keys):
            raise CaseError(f"test case '{case}': {kind} '{name}': dict keys must be str or int labels")
        types[f"{kind}/{name}"] = {"type": "dict", "keys": [int(k) if isinstance(k, int) else k for k in keys]}
        return np.asarray([float(value[k]) for k in keys], np.float64)
    if isinstance(value, (str, np.str_)) or (isinstance(value, (int, np.integer)) and kind == "expected"):
        types[f"{kind}/{name}"] = {"type": "label"}
        return np.asarray(value)
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise CaseError(f"test case '{case}': {kind} '{name}' cannot be stored: {e}") from None
    if arr.dtype == object:
        raise CaseError(f"test case '{case}': {kind} '{name}' is a {type(value).__name__}, which a plain "
                        f".npz file cannot hold (give arrays, PIL images, labels or dicts of label -> number)")
    return arr


def save_cases(path, cases):
    """Write cases to a compressed .npz file in the layout described above; return the path."""
    cases = as_cases(cases)
    arrays = {}
    for case in cases:
        types = {}
        for kind, values in (("input", case.inputs), ("expected", case.expected),
                             ("intermediate", case.intermediates)):
            for name, value in values.items():
                arrays[f"{case.name}/{kind}/{name}"] = _encode(case.name, kind, name, value, types)
        meta = {"rtol": case.rtol, "atol": case.atol, "description": case.description, "types": types}
        arrays[f"{case.name}/meta/json"] = np.asarray(json.dumps(meta, sort_keys=True))
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


# ------------------------------------------------------------------ loading

def _decode(array, info):
    if not info:
        return array
    kind = info.get("type")
    if kind == "image":
        from PIL import Image
        return Image.fromarray(np.ascontiguousarray(array), mode=info.get("mode"))
    if kind == "dict":
        return {k: float(v) for k, v in zip(info["keys"], array.reshape(-1))}
    if kind == "label":
        return array.item()
    return array


def load_cases(path):
    """Read cases from a .npz file written by save_cases, or in the bundled example's layout."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CaseError(f"{os.fspath(path)}: cannot read test cases: {e}") from None
    entries, metas = {}, {}
    with data:
        if not hasattr(data, "files"):
            raise CaseError(f"{os.fspath(path)}: holds a single array, not a .npz file of test cases")
        for key in data.files:
            parts = key.split("/", 2)
            if len(parts) != 3 or parts[1] not in KINDS + ("meta",):
                raise CaseError(f"{os.fspath(path)}: entry '{key}' is not of the form "
                                f"<case>/(input|expected|intermediate)/<name>")
            case, kind, name = parts
            values = entries.setdefault(case, {k: {} for k in KINDS})
            if kind == "meta":
                try:
                    metas[case] = json.loads(str(data[key]))
                except ValueError as e:
                    raise CaseError(f"{os.fspath(path)}: entry '{key}' is not valid JSON: {e}") from None
            else:
                try:
                    values[kind][name] = data[key]
                except ValueError as e:           # an object array: would need unpickling, which we never do
                    raise CaseError(f"{os.fspath(path)}: entry '{key}' cannot be read without "
                                    f"unpickling ({e})") from None
    cases = []
    for case, values in entries.items():
        meta = metas.get(case, {})
        types = meta.get("types", {})
        decoded = {kind: {name: _decode(v, types.get(f"{kind}/{name}")) for name, v in values[kind].items()}
                   for kind in KINDS}
        cases.append(TestCase(case, decoded["input"], decoded["expected"],
                              rtol=meta.get("rtol", DEFAULT_RTOL), atol=meta.get("atol", DEFAULT_ATOL),
                              intermediates=decoded["intermediate"], description=meta.get("description", "")))
    return cases
