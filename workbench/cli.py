"""The `workbench` command: inspect, run, test and check a model; run the bundled demo; export Swift."""
import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(prog="workbench", description="Core ML custom layer workbench")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="inputs, outputs, layers and custom layers of a model")
    p.add_argument("model")
    p.add_argument("--layers", help="folder or .py file with custom layer implementations")

    p = sub.add_parser("run", help="run a model on inputs from .npy/.png files, write outputs to .npz")
    p.add_argument("model")
    p.add_argument("--layers", help="folder or .py file with custom layer implementations")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE",
                   help="an input: .npy for arrays, .png/.jpg for images (repeat for several)")
    p.add_argument("--out", required=True, help="output .npz file")

    sub.add_parser("demo", help="load the bundled example, run it, compare with its PyTorch outputs")

    p = sub.add_parser("export-swift", help="Swift MLCustomLayer skeletons per className; with --cases also "
                                             "the model, JSON test vectors and an XCTest")
    p.add_argument("model")
    p.add_argument("out_dir")
    p.add_argument("--cases", metavar="FILE.npz", help="test cases (wb.save_cases layout) for the vectors and XCTest")
    p.add_argument("--layers", help="folder or .py file with implementations (their shapes and Python code "
                                    "go into the Swift comments)")

    p = sub.add_parser("test", help="run test cases (.npz) against a model; exit status 0 when all pass")
    p.add_argument("model")
    p.add_argument("--layers", help="folder or .py file with custom layer implementations")
    p.add_argument("--cases", required=True, metavar="FILE.npz", help="test cases (wb.save_cases layout)")
    p.add_argument("--plots", metavar="DIR", help="write a diff plot (PNG) per case and output here")

    p = sub.add_parser("check", help="check every custom layer against MLCustomLayer's contract")
    p.add_argument("model")
    p.add_argument("--layers", help="folder or .py file with custom layer implementations")

    args = parser.parse_args(argv)
    from .errors import WorkbenchError
    try:
        return {"inspect": _inspect, "run": _run, "demo": _demo, "export-swift": _export_swift,
                "test": _test, "check": _check}[args.command](args)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _test(args):
    import workbench as wb
    model = wb.load(args.model, layers=args.layers)
    report = wb.run_tests(model, wb.load_cases(args.cases))
    print(report.summary())
    if args.plots:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        for result in report.results:
            for output in result.outputs:
                figure = report.plot(result.name, output)
                path = out / f"{_safe(result.name)}-{_safe(output)}.png"
                figure.savefig(path, dpi=80)
                plt.close(figure)
                print(f"wrote {path}")
    return 0 if report.passed else 1


def _check(args):
    import workbench as wb
    result = wb.load(args.model, layers=args.layers).check()
    print(result.describe())
    return 0 if result.ok else 1


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def _inspect(args):
    import workbench as wb
    model = wb.load(args.model, layers=args.layers)
    print(model.summary())
    return 0


def _run(args):
    import workbench as wb
    from .errors import InputError
    model = wb.load(args.model, layers=args.layers)
    inputs = {}
    for item in args.input:
        name, sep, file = item.partition("=")
        if not sep:
            raise InputError(f"--input {item!r}: write it as NAME=FILE")
        path = Path(file)
        if not path.is_file():
            raise InputError(f"--input {name}: no file '{file}'")
        if path.suffix.lower() == ".npy":
            try:
                inputs[name] = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise InputError(f"--input {name}: '{file}' is not a readable numeric .npy file ({e})") from None
        else:
            from PIL import Image
            try:
                inputs[name] = Image.open(path)
            except OSError as e:
                raise InputError(f"--input {name}: '{file}' is neither .npy nor a readable image ({e})") from None
    outputs = model.predict(inputs)
    arrays = {}
    for name, value in outputs.items():
        if isinstance(value, dict):
            arrays[name + ".labels"] = np.array([str(k) for k in value])
            arrays[name + ".values"] = np.array(list(value.values()))
        elif hasattr(value, "convert"):
            arrays[name] = np.asarray(value)
        else:
            arrays[name] = np.asarray(value)
    np.savez(args.out, **arrays)
    for name, value in arrays.items():
        print(f"{name}: {value.dtype} {value.shape}")
    print(f"wrote {args.out}")
    return 0


def _export_swift(args):
    import workbench as wb
    from .export import export_swift
    model = wb.load(args.model, layers=args.layers)
    for path in export_swift(model, args.out_dir, cases=args.cases):
        print(f"wrote {path}")
    return 0


def _demo(args):
    from .examples.demo import run_demo
    ok, report = run_demo()
    print(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
