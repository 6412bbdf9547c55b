"""Discovery of implementations and live reloading of layer files."""
import os
import textwrap
import types

import numpy as np
import pytest

import workbench as wb
from support import custom_only_model

X = np.arange(6, dtype=np.float32).reshape(2, 3)

SCALE_FILE = '''
import workbench as wb

class Scale(wb.CustomLayer):
    def evaluate(self, inputs, outputs):
        outputs[0][...] = inputs[0] * {factor}
'''


def write(path, text):
    path.write_text(textwrap.dedent(text))
    st = path.stat()                          # make each rewrite visible even within one clock tick
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_folder_discovery_skips_private_files(tmp_path):
    write(tmp_path / "Scale.py", SCALE_FILE.format(factor=3))
    write(tmp_path / "_helpers.py", "raise RuntimeError('never run')")
    model = wb.load(custom_only_model(["Scale"]), layers=tmp_path)
    np.testing.assert_array_equal(model.predict({"x": X})["y"], 3 * X)
    assert model.custom_layers[0].implementation.__module__.startswith("workbench_layers.Scale_")


def test_module_list_and_mapping_sources():
    module = types.ModuleType("user_layers")
    exec(SCALE_FILE.format(factor=5), module.__dict__)
    model = wb.load(custom_only_model(["Scale"]), layers=module)
    np.testing.assert_array_equal(model.predict({"x": X})["y"], 5 * X)
    model = wb.load(custom_only_model(["Other"]), layers=[{"Other": module.Scale}])
    np.testing.assert_array_equal(model.predict({"x": X})["y"], 5 * X)


def test_reload_replaces_the_class_in_the_loaded_model(tmp_path):
    path = tmp_path / "Scale.py"
    write(path, SCALE_FILE.format(factor=2))
    model = wb.load(custom_only_model(["Scale"]), layers=tmp_path)
    np.testing.assert_array_equal(model.predict({"x": X})["y"], 2 * X)
    assert model.reload() == []
    write(path, SCALE_FILE.format(factor=7))
    assert model.reload() == ["Scale"]
    np.testing.assert_array_equal(model.predict({"x": X})["y"], 7 * X)


def test_syntax_error_names_file_and_line_and_keeps_the_old_class(tmp_path):
    path = tmp_path / "Scale.py"
    write(path, SCALE_FILE.format(factor=2))
    model = wb.load(custom_only_model(["Scale"]), layers=tmp_path)
    write(path, SCALE_FILE.format(factor="(2"))
    with pytest.raises(wb.ImplementationError, match=r"Scale.py:6: syntax error"):
        model.reload()
    np.testing.assert_array_equal(model.predict({"x": X})["y"], 2 * X)


def test_runtime_error_in_reloaded_init_keeps_the_old_class(tmp_path):
    path = tmp_path / "Scale.py"
    write(path, SCALE_FILE.format(factor=2))
    model = wb.load(custom_only_model(["Scale"]), layers=tmp_path)
    write(path, SCALE_FILE.format(factor=3) + "\n    def __init__(self, parameters):\n        1 / 0\n")
    with pytest.raises(wb.LayerError, match=r"in __init__: ZeroDivisionError.*Scale.py:9"):
        model.reload()
    np.testing.assert_array_equal(model.predict({"x": X})["y"], 2 * X)


def test_traceback_points_at_the_users_file(tmp_path):
    path = tmp_path / "Scale.py"
    write(path, SCALE_FILE.format(factor="undefined_name"))
    model = wb.load(custom_only_model(["Scale"]), layers=path)
    with pytest.raises(wb.LayerError, match=r"NameError.*Scale.py:6\)") as info:
        model.predict({"x": X})
    frames = []
    tb = info.value.__cause__.__traceback__
    while tb:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    assert (str(path.resolve()), 6) in frames


def test_use_swaps_a_redefined_class_safely():
    model = wb.load(custom_only_model(["Scale"]))
    for factor in (2, 4):                        # a notebook cell redefined and re-run
        Scale = type("Scale", (wb.CustomLayer,), {"evaluate": lambda self, i, o, f=factor: o[0].__setitem__(
            Ellipsis, i[0] * f)})
        model.use(Scale)
        np.testing.assert_array_equal(model.predict({"x": X})["y"], factor * X)


@pytest.mark.parametrize("source, message", [
    (42, "cannot take implementations from a int"),
    ("/nonexistent/folder", "is neither a folder nor a .py file"),
    ({"Scale": "not a class"}, "not a class"),
    (int, "int is not a custom layer"),
])
def test_bad_sources(source, message):
    with pytest.raises(wb.ImplementationError, match=message):
        wb.load(custom_only_model(["Scale"]), layers=source)


def test_file_without_layer_classes(tmp_path):
    write(tmp_path / "empty.py", "x = 1\n")
    with pytest.raises(wb.ImplementationError, match="empty.py: defines no custom layer class"):
        wb.load(custom_only_model(["Scale"]), layers=tmp_path / "empty.py")


def test_reload_picks_up_new_files_and_drops_deleted_ones(tmp_path):
    write(tmp_path / "Scale.py", SCALE_FILE.format(factor=2))
    model = wb.load(custom_only_model(["Scale", "Shift"]), layers=tmp_path)
    assert model.missing_implementations() == ["Shift"]
    write(tmp_path / "Shift.py", "import workbench as wb\n\nclass Shift(wb.CustomLayer):\n"
                                 "    def evaluate(self, inputs, outputs):\n        outputs[0][...] = inputs[0] + 1\n")
    assert model.reload() == ["Shift"]
    np.testing.assert_array_equal(model.predict({"x": X})["y"], 2 * X + 1)
    (tmp_path / "Scale.py").unlink()
    assert model.reload() == ["Scale"]
    assert model.missing_implementations() == ["Scale"]


def test_two_files_with_one_class_name_are_refused(tmp_path):
    write(tmp_path / "Scale.py", SCALE_FILE.format(factor=2))
    write(tmp_path / "Scale2.py", SCALE_FILE.format(factor=3))
    with pytest.raises(wb.ImplementationError, match="defines className 'Scale', which .*Scale.py defines too"):
        wb.load(custom_only_model(["Scale"]), layers=tmp_path)


def test_helper_modules_in_a_folder_are_allowed(tmp_path):
    write(tmp_path / "Scale.py", SCALE_FILE.format(factor=2))
    write(tmp_path / "constants.py", "FACTOR = 2\n")
    model = wb.load(custom_only_model(["Scale"]), layers=tmp_path)
    np.testing.assert_array_equal(model.predict({"x": X})["y"], 2 * X)


def test_a_subclass_implements_its_own_class_name(tmp_path):
    write(tmp_path / "layers.py", '''
import workbench as wb

@wb.custom_layer("Scale")
class Doubling(wb.CustomLayer):
    def evaluate(self, inputs, outputs):
        outputs[0][...] = 2 * inputs[0]

class Tripling(Doubling):
    def evaluate(self, inputs, outputs):
        outputs[0][...] = 3 * inputs[0]
''')
    model = wb.load(custom_only_model(["Scale", "Tripling"]), layers=tmp_path / "layers.py")
    np.testing.assert_array_equal(model.predict({"x": X})["y"], 6 * X)
    assert [r.implementation.__name__ for r in model.custom_layers] == ["Doubling", "Tripling"]
    assert "Scale" not in wb.runtime.registry.GLOBAL or wb.runtime.registry.GLOBAL["Scale"].__name__ != "Doubling"


def test_layer_files_support_dataclasses_and_getsource(tmp_path):
    import inspect
    write(tmp_path / "Scale.py", '''
from __future__ import annotations
from dataclasses import dataclass
import workbench as wb

@dataclass
class Factor:
    value: float

class Scale(wb.CustomLayer):
    factor = Factor(4.0)
    def evaluate(self, inputs, outputs):
        outputs[0][...] = inputs[0] * self.factor.value
''')
    model = wb.load(custom_only_model(["Scale"]), layers=tmp_path)
    np.testing.assert_array_equal(model.predict({"x": X})["y"], 4 * X)
    assert "self.factor.value" in inspect.getsource(model.custom_layers[0].implementation)


def test_a_package_that_re_exports_its_layers(tmp_path, monkeypatch):
    package = tmp_path / "mylayers"
    package.mkdir()
    write(package / "scale.py", SCALE_FILE.format(factor=6))
    write(package / "__init__.py", "from .scale import Scale\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    module = importlib.import_module("mylayers")
    model = wb.load(custom_only_model(["Scale"]), layers=module)
    np.testing.assert_array_equal(model.predict({"x": X})["y"], 6 * X)
    with pytest.raises(wb.ImplementationError, match="module 'textwrap' defines no custom layer class"):
        wb.load(custom_only_model(["Scale"]), layers=textwrap)
