"""Test vectors as JSON: test cases in a form an XCTest (or anything else) can read without numpy.

Why JSON: the app side has Foundation's JSONDecoder and nothing that reads .npz. Numbers are written
as the shortest decimal that reads back to the same float32 (so the file is exact and readable);
NaN and infinities, which JSON lacks, as the strings "nan", "inf", "-inf" (what the generated
XCTest's decoder is told to accept). Layout::

    {"format": "coreml-workbench test vectors", "version": 1, "model": "Example.mlmodel",
     "cases": [{"name": "noise", "description": "",
                "inputs":   {"image":  {"kind": "array", "dataType": "float32", "shape": [1, 3, 32, 32], "data": [...]}},
                "expected": {"logits": {"kind": "array", "dataType": "float32", "shape": [1, 10], "data": [...],
                                        "rtol": 0.0001, "atol": 0.0001}}}]}

Kinds: "array" (numbers, shape, dataType), "image" (uint8 pixels, height x width x channels, with
the PIL mode), "label" (a classifier's label: string or integer), "probabilities" (labels and
values). Expected entries that are not model outputs (reference intermediates) are left out: an
app sees only the outputs.
"""
import json
import math
import os

import numpy as np

from ..errors import WorkbenchError

FORMAT = "coreml-workbench test vectors"
VERSION = 1
SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class ExportError(WorkbenchError):
    """A model or test case cannot be exported (a className Swift cannot name, a value JSON cannot hold)."""


def _numbers(arr):
    """JSON numbers for an array, row-major: shortest float32 decimals, or ints; non-finite as strings."""
    flat = np.asarray(arr).ravel()
    if flat.dtype.kind in "iub":
        return [int(v) for v in flat.tolist()]
    if flat.dtype != np.float64:
        flat = flat.astype(np.float32)
    texts = flat.astype(str)                      # numpy's shortest round-trip text for the dtype
    return [float(t) if t not in SPECIAL else t for t in texts.tolist()]


def _encode(value, where, expected=False):
    if expected and isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return {"kind": "label", "value": int(value)}       # an int64 output or a classifier's integer label
    if hasattr(value, "convert") and hasattr(value, "mode"):        # a PIL image
        pixels = np.asarray(value)
        if pixels.dtype != np.uint8:
            raise ExportError(f"{where}: image of mode {value.mode} is not 8-bit; give an array instead")
        height, width = pixels.shape[:2]
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        return {"kind": "image", "mode": value.mode, "width": width, "height": height, "channels": channels,
                "data": [int(v) for v in pixels.ravel().tolist()]}
    if isinstance(value, dict):
        labels = list(value)
        if not all(isinstance(k, (str, int, np.integer)) for k in labels):
            raise ExportError(f"{where}: probability labels must be strings or integers")
        return {"kind": "probabilities", "labels": [k if isinstance(k, str) else int(k) for k in labels],
                "data": _numbers(np.array([value[k] for k in labels], np.float64))}
    if isinstance(value, (str, np.str_)):
        return {"kind": "label", "value": str(value)}
    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind not in "iubf":
        raise ExportError(f"{where}: a {type(value).__name__} of dtype {arr.dtype} cannot be a test vector")
    dtype = "float64" if arr.dtype == np.float64 else "float32" if arr.dtype.kind == "f" else "int32"
    return {"kind": "array", "dataType": dtype, "shape": list(arr.shape), "data": _numbers(arr)}


def vector_document(cases, model_file, output_names):
    """The JSON-ready dict for ``cases`` (wb.TestCase objects) of the model saved as ``model_file``."""
    document = {"format": FORMAT, "version": VERSION, "model": model_file, "cases": []}
    for case in cases:
        inputs = {name: _encode(v, f"case '{case.name}' input '{name}'") for name, v in case.inputs.items()}
        expected = {}
        for name, value in case.expected.items():
            if name not in output_names:
                continue
            entry = _encode(value, f"case '{case.name}' expected '{name}'", expected=True)
            entry["rtol"], entry["atol"] = case.tolerance(name)
            expected[name] = entry
        if not expected:
            raise ExportError(f"case '{case.name}': expects none of the model's outputs "
                              f"({', '.join(output_names)}); an XCTest would check nothing")
        document["cases"].append({"name": case.name, "description": case.description,
                                  "inputs": inputs, "expected": expected})
    return document


def write_vectors(path, cases, model_file, output_names):
    """Write the JSON test vectors of ``cases`` to ``path``; return the path."""
    text = json.dumps(vector_document(cases, model_file, output_names), allow_nan=False, separators=(",", ":"))
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return path


def _decode(entry, where):
    kind = entry.get("kind")
    if kind == "image":
        from PIL import Image
        shape = (entry["height"], entry["width"]) + ((entry["channels"],) if entry["channels"] > 1 else ())
        return Image.fromarray(np.array(entry["data"], np.uint8).reshape(shape), mode=entry["mode"])
    if kind == "label":
        return entry["value"]
    data = [SPECIAL[v] if isinstance(v, str) else v for v in entry["data"]]
    if kind == "probabilities":
        return dict(zip(entry["labels"], (float(v) for v in data)))
    if kind == "array":
        return np.array(data, dtype=entry["dataType"]).reshape(entry["shape"])
    raise ExportError(f"{where}: unknown kind {kind!r}")


def read_vectors(path):
    """wb.TestCase objects from a vectors file written by write_vectors (tolerances per output)."""
    from ..testing import TestCase
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"{os.fspath(path)}: cannot read test vectors: {e}") from None
    if document.get("format") != FORMAT:
        raise ExportError(f"{os.fspath(path)}: not a {FORMAT} file")
    cases = []
    for case in document["cases"]:
        where = f"{os.fspath(path)}: case '{case['name']}'"
        inputs = {n: _decode(e, f"{where} input '{n}'") for n, e in case["inputs"].items()}
        expected = {n: _decode(e, f"{where} expected '{n}'") for n, e in case["expected"].items()}
        cases.append(TestCase(case["name"], inputs, expected,
                              rtol={n: e["rtol"] for n, e in case["expected"].items()},
                              atol={n: e["atol"] for n, e in case["expected"].items()},
                              description=case.get("description", "")))
    return cases
