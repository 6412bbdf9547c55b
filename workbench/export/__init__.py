"""Hand verified custom layers to the app: Swift MLCustomLayer skeletons, an XCTest and JSON test vectors.

    paths = wb.export_swift(model, "Export/", cases=cases)

writes ``<ClassName>.swift`` for each className of the model and, when test cases are given,
``<Model>.mlmodel`` (the model itself), ``<Model>_vectors.json`` and ``<Model>CustomLayerTests.swift``,
an XCTest that runs the model in Core ML on the vectors with their tolerances.
"""
import re
from pathlib import Path

from .swift import layer_class_source, layer_classes
from .vectors import ExportError, read_vectors, vector_document, write_vectors  # noqa: F401
from .xctest import xctest_source


def _stem(model, model_name):
    """A file stem for the model: the given name, its file's stem, or 'Model'; safe in Swift literals."""
    name = model_name or (Path(model.path).stem if getattr(model, "path", None) else None)
    if name is None:
        name = model.name if not model.name.startswith("<") else "Model"      # "<spec>", "<bytes>": unnamed
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "Model"
    return name


def _test_class(stem):
    words = re.split(r"[^A-Za-z0-9]+", stem)
    name = "".join(w[:1].upper() + w[1:] for w in words if w)
    if not name or name[0].isdigit():
        name = "Model" + name
    return name + "CustomLayerTests"


def export_swift(model, out_dir, cases=None, model_name=None):
    """Write the Swift files (and, with ``cases``, the model, the JSON vectors and an XCTest); return their paths.

    ``model``: a loaded ``wb.Model`` (or anything ``wb.load`` takes). ``cases``: wb.TestCase objects,
    (name, inputs, expected) triples or a .npz case file; expected values that are not model outputs
    (reference intermediates) are left out of the vectors.
    """
    if not hasattr(model, "custom_layers"):
        from ..runtime.model import load
        model = load(model)
    classes = layer_classes(model)
    if not classes:
        raise ExportError(f"{model.name}: the model has no custom layers; there is no Swift to write")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = _stem(model, model_name)
    paths = []
    for layer in classes:
        path = out / f"{layer.class_name}.swift"
        path.write_text(layer_class_source(layer, f"{stem}.mlmodel"), encoding="utf-8")
        paths.append(path)
    if cases is not None:
        from ..testing import as_cases
        output_names = [f.name for f in model.spec.description.output]
        cases = as_cases(cases, output_names=output_names)
        model_path = out / f"{stem}.mlmodel"
        model_path.write_bytes(model.spec.SerializeToString(deterministic=True))
        vectors_path = write_vectors(out / f"{stem}_vectors.json", cases, model_path.name, output_names)
        test_class = _test_class(stem)
        test_path = out / f"{test_class}.swift"
        test_path.write_text(xctest_source(test_class, stem, vectors_path.stem, [c.class_name for c in classes]),
                             encoding="utf-8")
        paths += [model_path, vectors_path, test_path]
    return paths


__all__ = ["export_swift", "ExportError", "read_vectors", "write_vectors", "vector_document"]
