"""Testing custom layers and models: test cases, comparisons, reports with diff plots, layer checks.

    report = wb.run_tests(model, wb.load_cases("cases.npz"))
    report.passed, report.results, report.first_divergence, report.plot()
    wb.check_layer(MyLayer, [x], parameters={...}).problems
    model.check()

It builds on the runtime and never on the widgets (``widgets -> testing -> runtime``).
"""
from .cases import CaseError, TestCase, as_cases, load_cases, save_cases  # noqa: F401
from .checks import KINDS, LayerCheck, Problem, check_layer  # noqa: F401
from .compare import Comparison, compare  # noqa: F401
from .divergence import FirstDivergence, capture_torch  # noqa: F401
from .modelcheck import ModelCheck, check_model  # noqa: F401
from .report import CaseResult, TestReport, run_tests  # noqa: F401



def __getattr__(name):
    if name == "plot_comparison":          # matplotlib loads on first plot, not on `import workbench`
        from .plots import plot_comparison
        return plot_comparison
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TestCase", "save_cases", "load_cases", "as_cases", "CaseError",
    "run_tests", "TestReport", "CaseResult", "Comparison", "compare", "plot_comparison",
    "FirstDivergence", "capture_torch",
    "check_layer", "LayerCheck", "Problem", "KINDS", "check_model", "ModelCheck",
]
