"""The Core ML protobuf classes, taken from coremltools' generated modules (``coremltools.proto``).

Why not ``from coremltools.proto import ...``: that first runs coremltools' package ``__init__``,
which imports its converters and through them torch, scikit-learn and friends (5 s of an 8 s
``import workbench``, measured with ``python -X importtime``), and prints 'Failed to load
_MLModelProxy' lines on Linux. The runtime needs only the generated message classes, so unless
coremltools is already imported, ``coremltools.proto`` is loaded on its own, as the real package
from its installed folder: a later ``import coremltools`` finds it in ``sys.modules`` and uses it.
"""
import contextlib
import importlib.util
import io
import logging
import os
import sys
import types
import warnings


@contextlib.contextmanager
def _quiet():
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logger.setLevel(level)


def _load_proto_modules():
    """The three generated modules, without running ``coremltools/__init__.py``.

    The generated modules import each other with ``from . import X_pb2``, and Python's import
    statement then also resolves the top-level package: so while they load, ``coremltools`` is a
    bare placeholder package over the installed folder, removed again at once. A later
    ``import coremltools`` runs the real package, which picks up this ``coremltools.proto``."""
    names = [f"coremltools.proto.{m}" for m in __all__]
    if "coremltools" in sys.modules:
        with _quiet():
            return [importlib.import_module(n) for n in names]
    found = importlib.util.find_spec("coremltools")          # finds, does not import
    if found is None or not found.submodule_search_locations:
        raise ImportError("coremltools is not installed: pip install coremltools")
    root = list(found.submodule_search_locations)[0]
    placeholder = types.ModuleType("coremltools")
    placeholder.__path__ = [root]
    sys.modules["coremltools"] = placeholder
    try:
        with _quiet():
            return [importlib.import_module(n) for n in names]
    except BaseException:
        for name in [n for n in sys.modules if n.startswith("coremltools.proto")]:
            del sys.modules[name]
        raise
    finally:
        if sys.modules.get("coremltools") is placeholder:
            del sys.modules["coremltools"]


__all__ = ["FeatureTypes_pb2", "Model_pb2", "NeuralNetwork_pb2"]

FeatureTypes_pb2, Model_pb2, NeuralNetwork_pb2 = _load_proto_modules()
