"""Test cases and their .npz files (workbench/testing/cases.py).

References: the bundled example's npz as numpy reads it (written by build_example.py from PyTorch),
the example's own reader ``examples.example_cases`` (which our files must satisfy), and the
values put into a file (what comes out must be exactly them).
"""
import numpy as np
import pytest
from PIL import Image

import workbench as wb
from workbench import examples
from workbench.testing import CaseError

EXAMPLE_NPZ = examples.HERE / "example_cases.npz"


def test_loads_the_bundled_example_layout():
    cases = wb.load_cases(EXAMPLE_NPZ)
    with np.load(EXAMPLE_NPZ) as raw:
        keys = raw.files
        assert [c.name for c in cases] == list(dict.fromkeys(k.split("/")[0] for k in keys))
        for case in cases:
            for kind, values in (("input", case.inputs), ("expected", case.expected),
                                 ("intermediate", case.intermediates)):
                names = [k.split("/", 2)[2] for k in keys if k.startswith(f"{case.name}/{kind}/")]
                assert list(values) == names
                for name in names:
                    np.testing.assert_array_equal(values[name], raw[f"{case.name}/{kind}/{name}"])
    assert set(cases[0].intermediates) == {"16", "scaled_swish", "39", "pixel_norm"}
    assert cases[0].rtol == 1e-4 and cases[0].atol == 1e-4 and cases[0].description == ""


def test_round_trip_keeps_every_kind_of_value(tmp_path):
    rng = np.random.default_rng(3)
    photo = Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), mode="RGB")
    gray = Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8), mode="L")
    x = rng.normal(size=(1, 3, 4)).astype(np.float32)
    cases = [
        wb.TestCase("arrays", {"x": x}, {"y": x * 2}, rtol=1e-3, atol={"y": 1e-2},
                    intermediates={"blob/with/slashes": x + 1}, description="doubling"),
        wb.TestCase("classifier", {"image": photo}, {"label": "dog", "probs": {"cat": 0.25, "dog": 0.75}}),
        wb.TestCase("ints", {"n": np.float64(3.5)}, {"class": 7, "scores": {1: 0.5, 2: 0.5}, "out": gray}),
    ]
    path = wb.save_cases(tmp_path / "cases.npz", cases)
    back = wb.load_cases(path)
    assert [c.name for c in back] == ["arrays", "classifier", "ints"]
    a, c, i = back
    np.testing.assert_array_equal(a.inputs["x"], x)
    np.testing.assert_array_equal(a.expected["y"], x * 2)
    np.testing.assert_array_equal(a.intermediates["blob/with/slashes"], x + 1)
    assert a.rtol == 1e-3 and a.atol == {"y": 1e-2} and a.description == "doubling"
    assert a.tolerance("y") == (1e-3, 1e-2) and a.tolerance("other") == (1e-3, 1e-4)
    assert isinstance(c.inputs["image"], Image.Image) and c.inputs["image"].mode == "RGB"
    np.testing.assert_array_equal(np.asarray(c.inputs["image"]), np.asarray(photo))
    assert c.expected["label"] == "dog" and isinstance(c.expected["label"], str)
    assert c.expected["probs"] == {"cat": 0.25, "dog": 0.75}
    assert i.expected["class"] == 7 and isinstance(i.expected["class"], int)
    assert i.expected["scores"] == {1: 0.5, 2: 0.5}
    assert i.expected["out"].mode == "L"
    np.testing.assert_array_equal(np.asarray(i.expected["out"]), np.asarray(gray))
    assert float(i.inputs["n"]) == 3.5


def test_saved_files_are_read_by_the_examples_own_reader(tmp_path, monkeypatch):
    original = examples.example_cases(include_intermediates=True)
    cases = [wb.TestCase(name, inputs, {"logits": expected["logits"]},
                         intermediates={k: v for k, v in expected.items() if k != "logits"})
             for name, inputs, expected in original]
    wb.save_cases(tmp_path / "example_cases.npz", cases)
    monkeypatch.setattr(examples, "HERE", tmp_path)
    again = examples.example_cases(include_intermediates=True)
    assert [name for name, _, _ in again] == [name for name, _, _ in original]
    for (_, inputs, expected), (_, inputs0, expected0) in zip(again, original):
        assert inputs.keys() == inputs0.keys() and expected.keys() == expected0.keys()
        for key in expected0:
            np.testing.assert_array_equal(expected[key], expected0[key])


def test_bad_cases_and_files_raise_the_packages_error(tmp_path):
    with pytest.raises(CaseError, match="without '/'"):
        wb.TestCase("a/b", {}, {})
    with pytest.raises(CaseError, match="rtol"):
        wb.TestCase("a", {}, {}, rtol=-1)
    with pytest.raises(CaseError, match="unique"):
        wb.save_cases(tmp_path / "x.npz", [wb.TestCase("a", {}, {}), wb.TestCase("a", {}, {})])
    with pytest.raises(CaseError, match="plain .npz"):
        wb.save_cases(tmp_path / "x.npz", [wb.TestCase("a", {"x": object()}, {})])
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CaseError, match="cannot read"):
        wb.load_cases(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(CaseError, match="not of the form"):
        wb.load_cases(tmp_path / "other.npz")
    # Object arrays need unpickling, which loading never does (files are data, not code).
    np.savez(tmp_path / "pickled.npz", **{"a/input/x": np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(CaseError, match="unpickling"):
        wb.load_cases(tmp_path / "pickled.npz")


def test_run_tests_reads_a_case_file_and_agrees_with_pytorch(tmp_path):
    """The example's expected outputs and intermediates are PyTorch's (build_example.py)."""
    model = wb.load(examples.example_path(), layers=examples.example_layers_dir())
    report = wb.run_tests(model, EXAMPLE_NPZ)
    assert report.passed and [r.name for r in report.results] == ["noise", "waves", "checker"]
    for result in report.results:
        assert result.max_abs_error < 1e-5
        assert set(result.intermediates) == {"16", "scaled_swish", "39", "pixel_norm", "logits"}
        assert all(c.passed for c in result.intermediates.values())
        assert result.first_divergence is None


def test_a_progress_bar_shows_on_long_suites_only(capsys):
    model = wb.load(examples.example_path(), layers=examples.example_layers_dir())
    name, inputs, expected = examples.example_cases()[0]
    many = [wb.TestCase(f"copy{i}", inputs, expected) for i in range(8)]
    assert wb.run_tests(model, many).passed
    assert "8/8" in capsys.readouterr().err
    assert wb.run_tests(model, many[:2]).passed
    assert "2/2" not in capsys.readouterr().err
