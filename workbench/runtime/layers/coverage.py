"""The layer coverage table: every NeuralNetwork layer kind, the kernel that runs it, the tests that exercise it.

    python -m workbench.runtime.layers.coverage > docs/coverage.md

The kinds are the fields of ``NeuralNetworkLayer``'s ``layer`` oneof, read from the protobuf
classes, so a kind added to the specification shows up as missing instead of going unnoticed.
Tests are found by reading the test files, not by running them: a file exercises a kind when it
calls a ``NeuralNetworkBuilder`` method that writes that kind (learnt by parsing the builder's
own source), names the kind as a string (``"innerProduct"``), or sets a field of it
(``layer.innerProduct.weights``). Kinds reached only inside models converted from PyTorch or read
from the corpus are not seen by this scan. A test file holding the line ``# layer-coverage: skip``
(the tests of this scanner) is not scanned. Conformance results come from
tests/conformance/README.md when it exists: a markdown table whose first column is the kind.
"""
import argparse
import ast
import functools
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
NOT_A_LAYER_TEST = "# layer-coverage: skip"     # a test file holding this line is not scanned

# Builder methods that write one of several kinds depending on an argument: the kind -> the
# token in the test file that selects it (facts from NeuralNetworkBuilder's documented modes).
_MODE_TOKENS = {
    "add_elementwise": {"add": ["ADD"], "multiply": ["MULTIPLY"], "concat": ["CONCAT", "SEQUENCE_CONCAT"],
                        "dot": ["DOT", "COS"], "max": ["MAX"], "min": ["MIN"], "average": ["AVE"]},
    "add_logical": {"logicalAnd": ["AND"], "logicalOr": ["OR"], "logicalXor": ["XOR"], "logicalNot": ["NOT"]},
}
_FLAG_TOKENS = {   # method -> (kind written without the flag, kind written with it, the flag)
    "add_greater_than": ("greaterThan", "greaterEqual", "use_greater_than_equal"),
    "add_less_than": ("lessThan", "lessEqual", "use_less_than_equal"),
}


def layer_kinds():
    """(field number, kind) of every NeuralNetworkLayer kind, in the order of the specification."""
    from .._proto import NeuralNetwork_pb2
    fields = NeuralNetwork_pb2.NeuralNetworkLayer.DESCRIPTOR.oneofs_by_name["layer"].fields
    return [(f.number, f.name) for f in fields]


def runner_of(kind):
    """'module.Class' of what runs a kind: a registered kernel, or the custom layer step."""
    from . import KERNELS
    if kind == "custom":
        return "plan.CustomStep (your implementation, through protocol.py)"
    cls = KERNELS.get(kind)
    if cls is None:
        return None
    return f"layers/{cls.__module__.rsplit('.', 1)[-1]}.py: {cls.__name__}"


@functools.lru_cache(maxsize=None)
def builder_kinds():
    """NeuralNetworkBuilder method name -> the layer kinds its source writes (``spec_layer.<kind>``).

    Parsed once per process (the builder's source is large); treat the answer as read-only.
    """
    from .._proto import _quiet
    with _quiet():
        from coremltools.models.neural_network import builder
    kinds = {name for _, name in layer_kinds()}
    tree = ast.parse(inspect.getsource(builder.NeuralNetworkBuilder))
    methods = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("add_"):
            methods[node.name] = {a.attr for a in ast.walk(node) if isinstance(a, ast.Attribute)
                                  and a.attr in kinds and isinstance(a.value, ast.Name)
                                  and a.value.id in ("spec_layer", "layer")}
    return methods


def kinds_in_test(text, kinds, methods):
    """The layer kinds one test file exercises, by the rules in the module docstring."""
    named = set(re.findall(r"""(?<![\w"'])(["'])(\w+)\1""", text))
    found = {word for _, word in named} | set(re.findall(r"\.(\w+)\.[A-Za-z]", text))
    found &= set(kinds)
    for method in (set(re.findall(r"\b(add_\w+)", text)) | _templated_calls(text, methods)) & set(methods):
        if method in _MODE_TOKENS:
            found.update(k for k, tokens in _MODE_TOKENS[method].items()
                         if any(re.search(rf"""["']{t}["']""", text, re.IGNORECASE) for t in tokens))
        elif method in _FLAG_TOKENS:
            plain, flagged, flag = _FLAG_TOKENS[method]
            found.add(plain)
            if flag in text:
                found.add(flagged)
        else:
            found.update(methods[method])
    return found


def _templated_calls(text, methods):
    """Builder methods called through a template, ``getattr(b, f"add_reduce_{kind}")``, whose every
    filled-in part (``"l1"``) appears as a string in the file."""
    called = set()
    for template in re.findall(r"""f["'](add_\w*\{[^"']*)["']""", text):
        pattern = "".join(r"(\w+?)" if part.startswith("{") else re.escape(part)
                          for part in re.split(r"(\{[^}]*\})", template))
        for method in methods:
            match = re.fullmatch(pattern, method)
            if match and all(re.search(rf"""["']{re.escape(g)}["']""", text, re.IGNORECASE)
                             for g in match.groups()):
                called.add(method)
    return called


def conformance_results(readme):
    """kind -> result text, from the markdown table in tests/conformance/README.md (if any)."""
    results = {}
    if not readme.exists():
        return results
    for line in readme.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and line.lstrip().startswith("|"):
            results.setdefault(cells[0].strip("`* "), "; ".join(c for c in cells[1:] if c))
    return results


def table(tests_dir=ROOT / "tests"):
    """The coverage table as markdown text."""
    kinds = layer_kinds()
    names = [k for _, k in kinds]
    methods = builder_kinds()
    exercised = {k: [] for k in names}
    for path in sorted(Path(tests_dir).rglob("test_*.py")):
        rel = path.relative_to(tests_dir).as_posix()
        text = path.read_text(encoding="utf-8")
        if NOT_A_LAYER_TEST in text:
            continue
        for kind in kinds_in_test(text, names, methods):
            exercised[kind].append(rel)
    conformance = conformance_results(Path(tests_dir) / "conformance" / "README.md")
    runners = {k: runner_of(k) for k in names}
    run = sum(r is not None for r in runners.values())
    tested = sum(bool(v) for v in exercised.values())
    lines = [
        "# Layer coverage",
        "",
        "Generated by `python -m workbench.runtime.layers.coverage > docs/coverage.md`; "
        "tests/test_coverage.py fails when this file is out of date.",
        "",
        f"The runtime runs **{run} of {len(names)}** layer kinds of NeuralNetwork.proto; "
        f"{tested} of them are named by at least one test file.",
        "",
        "How tests are found: a test file exercises a kind when it calls a `NeuralNetworkBuilder` method "
        "that writes the kind, names the kind as a string, or sets one of its fields. Kinds reached only "
        "through models converted from PyTorch (tests/test_pytorch_models.py) or read from the corpus "
        "(tests/test_corpus.py) are not counted.",
        "",
        "| field | layer kind | runs in | tests | conformance |",
        "|---:|---|---|---|---|",
    ]
    for number, kind in kinds:
        runner = runners[kind] or "**not run**"
        tests = ", ".join(exercised[kind]) or "**none**"
        lines.append(f"| {number} | `{kind}` | {runner} | {tests} | {conformance.get(kind, '—')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description="print the layer coverage table (markdown)")
    parser.add_argument("--tests", default=str(ROOT / "tests"), help="the tests folder to scan")
    args = parser.parse_args(argv)
    if not Path(args.tests).is_dir():
        print(f"error: no tests folder at {args.tests} (run from a checkout, or pass --tests)", file=sys.stderr)
        return 2
    sys.stdout.write(table(args.tests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
