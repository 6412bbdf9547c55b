"""Route coremltools' own test suites' predictions to the workbench runtime.

coremltools' layer tests build a model, call ``MLModel.predict`` and compare with their own numpy
or PyTorch references. Off macOS they skip themselves (``_is_macos()``, ``_IS_MACOS``) and
``MLModel`` has no Core ML proxy to predict with. Inside ``routed()`` the tests see a macOS that
can predict, and every neural network ``MLModel`` gets a proxy that predicts with
``workbench.load`` of the model's file (its spec where it has none); coremltools' own input checks and the tests' references and tolerances
stay as they are. The patches are undone outside ``routed()``, so the rest of the session sees the
real platform.
"""
import contextlib
import warnings

import coremltools.models.model as ct_model
import pytest
import coremltools.models.utils as ct_utils

import workbench as wb

CLAIMED_MACOS_VERSION = (15, 0)   # new enough for every neural network layer test (the newest need 11.0)
NEURAL_NETWORK_TYPES = ("neuralNetwork", "neuralNetworkClassifier", "neuralNetworkRegressor")


def claimed_is_macos():
    return True


def claimed_macos_version():
    return CLAIMED_MACOS_VERSION


class WorkbenchProxy:
    """Stands where coremltools keeps its Core ML framework proxy (``MLModel.__proxy__``).

    Core ML compiles a model when ``MLModel`` is built; if that fails, coremltools warns and
    ``predict`` raises. The proxy does the same with the workbench: the load error, if any, is
    raised by ``predict``, so a test that only inspects the model is unaffected by it.
    """

    def __init__(self, spec, filename=None):
        self.load_error = None
        self.model = None
        try:
            # the file, where there is one, as Core ML compiles it: the runtime then reads weights
            # as views of the file's bytes, the path every model a user loads from disk takes
            self.model = wb.load(filename if _is_model_file(filename) else spec)
        except Exception as error:  # noqa: BLE001  (re-raised, unchanged, by predict)
            self.load_error = error
            warnings.warn(f"workbench could not load this model: {error}", RuntimeWarning)

    def predict(self, data, state=None):
        if self.load_error is not None:
            raise self.load_error
        if state is not None:
            raise wb.InputError("neural network models have no state; predict was given one")
        return self.model.predict(data)

    def batchPredict(self, data):  # noqa: N802  (the name coremltools calls)
        return [self.predict(one) for one in data]


_original_get_proxy_and_spec = ct_model.MLModel._get_proxy_and_spec
_original_is_macos = ct_utils._is_macos
_original_macos_version = ct_utils._macos_version


def _routed_get_proxy_and_spec(self, filename, compute_units, skip_model_load=False, optimization_hints=None):
    proxy, spec, error = _original_get_proxy_and_spec(
        self, filename, compute_units, skip_model_load=skip_model_load, optimization_hints=optimization_hints)
    if proxy is None and not skip_model_load:
        kind = spec.WhichOneof("Type")
        proxy, error = (WorkbenchProxy(spec, filename) if kind in NEURAL_NETWORK_TYPES
                        else NotANeuralNetwork(kind)), None
    return proxy, spec, error


def _is_model_file(filename):
    import os
    return isinstance(filename, (str, os.PathLike)) and str(filename).endswith(".mlmodel") and os.path.isfile(filename)


class NotANeuralNetwork:
    """The proxy of a model the workbench does not run (GLM, tree ensemble, pipeline...): the test
    that predicts with it is skipped, visibly, rather than failing on a missing Core ML."""

    def __init__(self, kind):
        self.kind = kind

    def predict(self, data, state=None):
        pytest.skip(f"the model is a '{self.kind}', not a neural network: the workbench runs neural networks only")

    def batchPredict(self, data):  # noqa: N802
        self.predict(data)


def _patches():
    """(object, attribute, value) for every predicate and hook the routing replaces.

    coremltools modules import ``_is_macos``/``_macos_version`` by name, so each loaded module's
    reference is replaced (the original ``_macos_version`` runs ``sw_vers`` once ``_is_macos`` is
    true, which is why it cannot be left in place anywhere).
    """
    import sys

    import coremltools.converters.mil.testing_utils as mil_testing_utils   # what compare_backend reads
    claimed = {"_is_macos": (_original_is_macos, claimed_is_macos),
               "_macos_version": (_original_macos_version, claimed_macos_version)}
    patches = [(mil_testing_utils, "_IS_MACOS", True),
               (ct_model.MLModel, "_get_proxy_and_spec", _routed_get_proxy_and_spec)]
    for name, module in list(sys.modules.items()):
        if name.startswith("coremltools") and module is not None:
            for attribute, (original, replacement) in claimed.items():
                if module.__dict__.get(attribute) is original:
                    patches.append((module, attribute, replacement))
    return patches


@contextlib.contextmanager
def routed():
    """Within: coremltools believes it runs on macOS and predicts neural networks with the workbench.

    Test modules imported within keep the claimed ``_is_macos``/``_macos_version`` they imported by
    name, which is what their ``skipIf`` decorators and in-test checks need.
    """
    patches = _patches()
    saved = [(obj, name, obj.__dict__[name]) for obj, name, _ in patches]
    for obj, name, value in patches:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
