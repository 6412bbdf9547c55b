"""Run coremltools' own layer test suites, from the installed wheel, against the workbench runtime.

``suites.txt`` (beside this file) lists the test files, as globs relative to the installed
``coremltools`` package; collecting it collects them. Each runs inside ``_route.routed()``: the
tests believe they are on macOS and their ``MLModel.predict`` goes through ``workbench.load``. Their
references and tolerances are untouched. The MIL op tests run on the neuralnetwork backend only.

    pytest tests/conformance --conformance=full     # every case but coremltools' slow ones (make conformance)
    pytest tests/conformance --conformance=all      # those too (the conv3d sweep alone takes hours)
    pytest tests                                    # a representative slice (make test)
"""
import hashlib
import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SUITES_FILE = "suites.txt"
MODES = ("slice", "full", "all", "off")

_spec = importlib.util.spec_from_file_location("workbench_conformance_route", HERE / "_route.py")
_route = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_route)


def pytest_addoption(parser):
    # Registered only when tests/conformance is named on the command line (pytest's rule for the
    # options of non-root conftests); elsewhere the default, "slice", applies.
    parser.addoption("--conformance", choices=MODES, default="slice",
                     help="coremltools' suites: a representative slice (default), every case but those coremltools "
                          "marks slow (full), every case (all), or none (off)")
    parser.addoption("--conformance-suites", default="", metavar="TEXT",
                     help="run only the lines of suites.txt that contain TEXT (e.g. neural_network, ops/tests)")


def pytest_configure(config):
    config.addinivalue_line("markers", "conformance: a case of coremltools' own suites, run by the workbench")
    config.addinivalue_line("markers", "slow: coremltools' mark for its longer cases")
    if not config.pluginmanager.has_plugin("workbench-conformance"):
        config.pluginmanager.register(ConformancePlugin(config), "workbench-conformance")


def pytest_collect_file(file_path, parent):
    if file_path.name == SUITES_FILE and parent.config.getoption("conformance", default="slice") != "off":
        return CoremltoolsSuites.from_parent(parent, path=file_path)
    return None


class CoremltoolsSuites(pytest.File):
    """The test modules that suites.txt names, collected from the installed coremltools package."""

    def collect(self):
        import coremltools
        package = Path(coremltools.__file__).resolve().parent
        for pattern in self.path.read_text().splitlines():
            pattern = pattern.split("#")[0].strip()
            if not pattern or self.config.getoption("conformance_suites", default="") not in pattern:
                continue
            found = sorted(package.glob(pattern))
            if not found:
                raise pytest.UsageError(f"{self.path.name}: '{pattern}' matches no file in {package} "
                                        f"(coremltools {coremltools.__version__})")
            for path in found:
                nodeid = "coremltools/" + path.relative_to(package).as_posix()
                yield pytest.Module.from_parent(self, path=path, nodeid=nodeid)


#: Cases that fail for a reason that is known and written down (README.md here): run, reported as
#: xfail with the reason, and reported as XPASS once they pass. Keys are test ids without parameters.
KNOWN_FAILURES = {
    "coremltools/test/neural_network/test_numpy_nn_layers.py::NewLayersSimpleTest::test_topk_cpu":
        "the reference, np.argsort(-data) on random integers, orders ties by numpy's SIMD sort (x86-simd-sort "
        "on this CPU, not stable); the runtime returns tied elements in index order",
    "coremltools/test/neural_network/test_numpy_nn_layers.py::NewLayersSimpleTest::test_topk_gpu":
        "as test_topk_cpu: tie order of the numpy reference",
}
_IMAGE_RANK = ("image input in an exact-rank network with RANK4_IMAGE_MAPPING: the runtime feeds [1,C,H,W] as "
               "NeuralNetwork.proto says; these tests expect a rank-3 [C,H,W] blob (a transpose with 3 axes "
               "on it, a (C,H,W) output)")
for _name in ("test_multiarray_to_image_input_util", "test_multiarray_to_image_input_util_HWC_format",
              "test_multiarray_to_image_input_util_transpose_elimination", "test_rename_image_input"):
    KNOWN_FAILURES[f"coremltools/test/neural_network/test_model.py::MLModelTest::{_name}"] = _IMAGE_RANK


#: Cases whose model is not a neural network (MLModelTest's GLM regressor): skipped before they run,
#: since skipping at predict would leave the class's shared spec renamed for the next case.
NOT_NEURAL_NETWORKS = {
    f"coremltools/test/neural_network/test_model.py::MLModelTest::{_name}":
        "predicts a glmRegressor model: the workbench runs neural networks only"
    for _name in ("test_predict_api", "test_rename_input", "test_rename_input_bad", "test_rename_output",
                  "test_rename_output_bad")
}


def in_suites(node):
    return any(isinstance(n, CoremltoolsSuites) for n in node.listchain())


def backend_of(item):
    """'neuralnetwork', 'mlprogram' or None: the backend a parametrized MIL test runs on."""
    for value in getattr(getattr(item, "callspec", None), "params", {}).values():
        name = getattr(value, "backend", None)
        if name is None and isinstance(value, tuple) and value and isinstance(value[0], str):
            name = value[0]
        if name in ("neuralnetwork", "mlprogram"):
            return name
    return None


def is_mlprogram(item):
    return backend_of(item) == "mlprogram" or "mlprogram" in item.name.lower()


#: Cases that take over 5 s each (sweeps of hundreds of models): in the full run only.
HEAVY = ("StressTest", "test_random_normal_like", "test_pool3d", "test_upsample_pytorch", "test_pixel_shuffle",
         "test_conv3d", "test_slice_static", "test_gather_scatter_multiple_axis")
#: One case in N of each suite goes into the slice (the MIL op suites have ten times more cases).
SLICE_EVERY = {"coremltools/test/": 4, "coremltools/converters/": 32}


def in_slice(item):
    """A stable sample spread over every test class and function, a few minutes on 2 cores."""
    if any(name in item.nodeid for name in HEAVY):
        return False
    every = next((n for prefix, n in SLICE_EVERY.items() if item.nodeid.startswith(prefix)), 8)
    return hashlib.sha1(item.nodeid.encode()).digest()[0] % every == 0


class ConformancePlugin:
    """Global hooks (conftest hooks do not reach nodes outside tests/conformance/)."""

    def __init__(self, config):
        self.mode = config.getoption("conformance", default="slice")

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector):
        if in_suites(collector):
            with _route.routed():
                return (yield)
        return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        if in_suites(item):
            with _route.routed():
                return (yield)
        return (yield)

    def pytest_collection_modifyitems(self, config, items):
        keep, drop = [], []
        for item in items:
            if not in_suites(item):
                keep.append(item)
                continue
            item.add_marker(pytest.mark.conformance)
            if item.nodeid in NOT_NEURAL_NETWORKS:
                item.add_marker(pytest.mark.skip(reason=NOT_NEURAL_NETWORKS[item.nodeid]))
            reason = KNOWN_FAILURES.get(item.nodeid.split("[")[0])
            if reason:
                item.add_marker(pytest.mark.xfail(reason=reason, strict=False))
            if (is_mlprogram(item) or (self.mode == "slice" and not in_slice(item))
                    or (self.mode != "all" and item.get_closest_marker("slow"))):
                drop.append(item)
            else:
                keep.append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
