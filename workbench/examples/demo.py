"""`workbench demo`: load the bundled example, run its PyTorch cases, print a verdict."""
import numpy as np

RELATIVE_TOLERANCE = 1e-4          # of the output's scale, as the test suite uses


def run_demo():
    """Return (all cases passed, report text)."""
    import workbench as wb
    from . import example_cases, example_layers_dir, example_path

    model = wb.load(example_path(), layers=example_layers_dir())
    lines = [model.summary(), "", "PyTorch test cases:"]
    ok = True
    for name, inputs, expected in example_cases():
        outputs = model.predict(inputs)
        for key, ref in expected.items():
            scale = max(1.0, float(np.abs(ref).max()))
            error = float(np.abs(outputs[key] - ref).max()) / scale
            passed = error <= RELATIVE_TOLERANCE
            ok &= passed
            lines.append(f"  {name:10s} {key}: max error {error:.2e} of the output scale "
                         f"-> {'pass' if passed else 'FAIL'}")
    lines.append("verdict: " + ("all cases agree with PyTorch" if ok else "some cases disagree with PyTorch"))
    return ok, "\n".join(lines)
