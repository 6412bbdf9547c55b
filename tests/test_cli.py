"""The `workbench` command: inspect, run and demo, with verdicts as exit statuses."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from support import LAYERS, corpus, custom_only_model
from workbench.cli import main
from workbench.examples import example_cases, example_path


def test_inspect_names_custom_layers_and_missing_implementations(capsys):
    assert main(["inspect", str(example_path())]) == 0
    out = capsys.readouterr().out
    assert "className ScaledSwish (MISSING implementation)" in out
    assert "parameter channels = 8 (intValue)" in out and "weights[1]: 8 values" in out
    assert "missing implementations: PixelNorm, ScaledSwish" in out


def test_run_with_npy_input_matches_pytorch(tmp_path, capsys):
    from workbench.examples import example_layers_dir
    name, inputs, expected = example_cases()[0]
    np.save(tmp_path / "image.npy", inputs["image"])
    out = tmp_path / "out.npz"
    code = main(["run", str(example_path()), "--layers", str(example_layers_dir()),
                 "--input", f"image={tmp_path / 'image.npy'}", "--out", str(out)])
    assert code == 0 and "wrote" in capsys.readouterr().out
    with np.load(out) as result:
        np.testing.assert_allclose(result["logits"], expected["logits"], rtol=1e-4, atol=1e-4)


def test_run_with_png_input_on_a_corpus_model(tmp_path):
    model = corpus("hollance_NeuralMcNeuralNet.mlmodel")
    Image.open(corpus("floortje.png")).convert("RGB").resize((256, 256)).save(tmp_path / "in.png")
    out = tmp_path / "out.npz"
    assert main(["run", str(model), "--layers", str(LAYERS), "--input", f"image={tmp_path / 'in.png'}",
                 "--out", str(out)]) == 0
    with np.load(out) as result:
        assert result["output"].shape == (10,) and result["output"].sum() == pytest.approx(1.0, abs=1e-5)


def test_run_errors_are_one_line_with_status_2(tmp_path, capsys):
    path = tmp_path / "m.mlmodel"
    path.write_bytes(custom_only_model(["Nowhere"]).SerializeToString())
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    assert main(["run", str(path), "--input", f"x={tmp_path / 'x.npy'}", "--out", str(tmp_path / "o.npz")]) == 2
    assert "error: m.mlmodel: no implementation for custom layer className(s) Nowhere" in capsys.readouterr().err
    assert main(["run", str(path), "--input", "x", "--out", "o.npz"]) == 2
    assert "write it as NAME=FILE" in capsys.readouterr().err


def test_demo_passes_as_an_installed_command():
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "demo"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("-> pass") == len(example_cases())
    assert "verdict: all cases agree with PyTorch" in done.stdout
    assert "Failed to load" not in done.stdout + done.stderr


def _example_cases_file(tmp_path, perturb=None):
    import workbench as wb
    cases = [wb.TestCase(name, inputs, expected) for name, inputs, expected in example_cases()]
    if perturb is not None:
        cases[perturb].expected["logits"] = cases[perturb].expected["logits"] + 1.0
    path = tmp_path / "cases.npz"
    wb.save_cases(path, cases)
    return path


def test_test_command_verdict_is_the_exit_status_and_plots_are_written(tmp_path, capsys):
    from workbench.examples import example_layers_dir
    layers = str(example_layers_dir())
    good = _example_cases_file(tmp_path)
    assert main(["test", str(example_path()), "--layers", layers, "--cases", str(good)]) == 0
    assert "3 passed, 0 failed" in capsys.readouterr().out
    bad = _example_cases_file(tmp_path, perturb=1)        # PyTorch's outputs, one case shifted by 1
    plots = tmp_path / "plots"
    assert main(["test", str(example_path()), "--layers", layers, "--cases", str(bad), "--plots", str(plots)]) == 1
    out = capsys.readouterr().out
    assert "2 passed, 1 failed" in out and "case 'waves': FAIL" in out
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == ["checker-logits.png", "noise-logits.png", "waves-logits.png"]
    assert all((plots / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_check_command_finds_a_layer_that_writes_its_input(tmp_path, capsys):
    from workbench.examples import example_layers_dir
    assert main(["check", str(example_path()), "--layers", str(example_layers_dir())]) == 0
    assert "2 custom layer(s) checked, 0 with problems" in capsys.readouterr().out
    broken = tmp_path / "layers"
    broken.mkdir()
    (broken / "PixelNorm.py").write_text(
        "import workbench as wb\n\nclass PixelNorm(wb.CustomLayer):\n"
        "    def evaluate(self, inputs, outputs):\n        inputs[0][...] = 0\n        outputs[0][...] = 0\n")
    (broken / "ScaledSwish.py").write_text((example_layers_dir() / "ScaledSwish.py").read_text())
    assert main(["check", str(example_path()), "--layers", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "mutated-input" in out and "PixelNorm.py:5" in out


def test_run_refuses_a_pickled_npy_with_a_clear_error(tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code = main(["run", str(example_path()), "--input", f"image={tmp_path / 'bad.npy'}",
                 "--out", str(tmp_path / "o.npz")])
    assert code == 2 and "is not a readable numeric .npy file" in capsys.readouterr().err
