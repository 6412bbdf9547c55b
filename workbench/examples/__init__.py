"""The bundled example: a tiny CNN with two custom layers, its test cases, and their implementations.

It is the default model of the tour notebook and of ``workbench demo``::

    import workbench as wb
    from workbench import examples
    model = wb.load(examples.example_path(), layers=examples.example_layers_dir())
    for name, inputs, expected in examples.example_cases():
        outputs = model.predict(inputs)

The model file and cases are built by ``python -m workbench.examples.build_example`` (needs torch);
loading them needs only numpy.
"""
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# The repository's user-editable folder of implementations (one file per className), where the tour
# has the user write or edit the example's layers. Absent in a pip-installed package.
EXAMPLE_LAYERS_DIR = Path(__file__).parents[2] / "layers"

# The example's own implementations, shipped inside the package so the demo runs anywhere.
BUNDLED_LAYERS_DIR = HERE / "layers"

EXAMPLE_CLASS_NAMES = ("ScaledSwish", "PixelNorm")


def example_path():
    """Path of the example .mlmodel."""
    return HERE / "example.mlmodel"


def example_layers_dir():
    """EXAMPLE_LAYERS_DIR when it holds a file for every example className, else the bundled copies."""
    if all((EXAMPLE_LAYERS_DIR / f"{name}.py").is_file() for name in EXAMPLE_CLASS_NAMES):
        return EXAMPLE_LAYERS_DIR
    return BUNDLED_LAYERS_DIR


def example_cases(include_intermediates=False):
    """The PyTorch test cases, in file order: a list of ``(name, inputs, expected)``.

    ``inputs`` and ``expected`` map feature names to float32 arrays. With ``include_intermediates``,
    ``expected`` also holds PyTorch's values of the custom layers' input and output blobs, keyed by
    blob name (what ``model.trace`` reports), for per-layer comparisons.
    """
    cases = {}
    with np.load(HERE / "example_cases.npz") as data:
        for key in data.files:
            case, kind, name = key.split("/", 2)
            inputs, expected = cases.setdefault(case, ({}, {}))
            if kind == "input":
                inputs[name] = data[key]
            elif kind == "expected" or (kind == "intermediate" and include_intermediates):
                expected[name] = data[key]
    return [(case, inputs, expected) for case, (inputs, expected) in cases.items()]
