"""Compare one actual value with its expected value: arrays, images, classifier labels and dicts.

Every comparison uses numpy.isclose's rule, ``|actual - expected| <= atol + rtol * |expected|``,
with NaN matching NaN, and keeps the statistics a person needs to judge a mismatch: how many
elements are off, by how much, and where the worst one is (so a plot can show it).
"""
from dataclasses import dataclass, field

import numpy as np

from .cases import _is_image


@dataclass
class Comparison:
    """The verdict and statistics for one output (or intermediate blob) of one case.

    ``kind`` is "array", "image", "label" or "probabilities"; ``expected_array``/``actual_array`` are
    the aligned float64 values that were compared (None for labels). ``worst_index`` is an index
    into ``expected_array`` (a class label for probabilities); ``problem`` explains a failure that is
    not about values (a missing output, a shape that cannot be matched, a different label).
    """
    name: str
    kind: str
    passed: bool
    rtol: float
    atol: float
    expected: object = None
    actual: object = None
    expected_array: np.ndarray = None
    actual_array: np.ndarray = None
    size: int = 0
    mismatched: int = 0
    max_abs_error: float = None
    mean_abs_error: float = None
    max_rel_error: float = None
    worst_index: object = None
    worst_expected: object = None
    worst_actual: object = None
    nan_mismatches: int = 0
    problem: str = None
    labels: list = field(default=None, repr=False)

    @property
    def shape(self):
        return None if self.expected_array is None else tuple(self.expected_array.shape)

    def statistics(self):
        """The numbers as a plain dict (for tables and logs)."""
        return {"output": self.name, "kind": self.kind, "passed": self.passed, "shape": self.shape,
                "size": self.size, "mismatched": self.mismatched, "max_abs_error": self.max_abs_error,
                "mean_abs_error": self.mean_abs_error, "max_rel_error": self.max_rel_error,
                "worst_index": self.worst_index, "worst_expected": self.worst_expected,
                "worst_actual": self.worst_actual, "nan_mismatches": self.nan_mismatches,
                "rtol": self.rtol, "atol": self.atol, "problem": self.problem}

    def describe(self):
        """One line: the verdict and the numbers behind it."""
        verdict = "pass" if self.passed else "FAIL"
        if self.kind == "label" or self.max_abs_error is None:
            return f"{self.name}: {verdict}" + (f" ({self.problem})" if self.problem else "")
        text = (f"{self.name}: {verdict}, {self.mismatched} of {self.size} outside tolerance, max abs error "
                f"{self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g}")
        if self.mismatched:
            text += (f", worst at {format_index(self.worst_index)}: expected {self.worst_expected:.6g}, "
                     f"got {self.worst_actual:.6g}")
        return text + (f" ({self.problem})" if self.problem else "")


def format_index(index):
    if isinstance(index, tuple):
        return "[" + ", ".join(str(i) for i in index) + "]"
    return repr(index)


def _squeezed(shape):
    return tuple(d for d in shape if d != 1)


def _image_array(value):
    """A PIL image as H x W (x C) float64 pixels."""
    return np.asarray(value, dtype=np.float64)


def compare(name, expected, actual, rtol, atol):
    """Compare one value; dispatches on what the expected value is."""
    if actual is None:
        return Comparison(name, "array", False, rtol, atol, expected=expected,
                          problem="missing: the model gave no such output")
    if isinstance(expected, dict):
        return _compare_probabilities(name, expected, actual, rtol, atol)
    if isinstance(expected, (str, np.str_, int, np.integer)) and not isinstance(expected, bool):
        return _compare_label(name, expected, actual, rtol, atol)
    if _is_image(expected) or _is_image(actual):
        return _compare_image(name, expected, actual, rtol, atol)
    return compare_arrays(name, expected, actual, rtol, atol)


def _compare_label(name, expected, actual, rtol, atol):
    same = ((isinstance(expected, str) and isinstance(actual, str))
            or (isinstance(expected, (int, np.integer)) and isinstance(actual, (int, np.integer))))
    passed = bool(same and expected == actual)
    return Comparison(name, "label", passed, rtol, atol, expected=expected, actual=actual, size=1,
                      mismatched=0 if passed else 1, worst_expected=expected, worst_actual=actual,
                      problem=None if passed else f"expected label {expected!r}, got {actual!r}")


def _compare_probabilities(name, expected, actual, rtol, atol):
    if not isinstance(actual, dict):
        return Comparison(name, "probabilities", False, rtol, atol, expected=expected, actual=actual,
                          problem=f"expected a dict of label -> probability, got {type(actual).__name__}")
    labels = list(expected)
    missing = [k for k in labels if k not in actual]
    extra = [k for k in actual if k not in expected]
    if missing or extra:
        parts = ([f"labels missing from the output: {missing[:5]}"] if missing else []) + \
                ([f"labels not expected: {extra[:5]}"] if extra else [])
        return Comparison(name, "probabilities", False, rtol, atol, expected=expected, actual=actual,
                          problem="; ".join(parts))
    result = compare_arrays(name, np.array([expected[k] for k in labels], np.float64),
                            np.array([actual[k] for k in labels], np.float64), rtol, atol)
    result.kind, result.expected, result.actual, result.labels = "probabilities", expected, actual, labels
    if result.worst_index is not None:
        result.worst_index = labels[result.worst_index[0]]
    return result


def _compare_image(name, expected, actual, rtol, atol):
    e = _image_array(expected) if _is_image(expected) else np.asarray(expected, np.float64)
    a = _image_array(actual) if _is_image(actual) else np.asarray(actual, np.float64)
    # An image given as a C x H x W array compares with a PIL image's H x W x C pixels.
    if e.ndim == 3 and a.ndim == 3 and e.shape != a.shape and e.shape == (a.shape[2],) + a.shape[:2]:
        e = e.transpose(1, 2, 0)
    if a.ndim == 3 and e.ndim == 3 and e.shape != a.shape and a.shape == (e.shape[2],) + e.shape[:2]:
        a = a.transpose(1, 2, 0)
    result = compare_arrays(name, e, a, rtol, atol)
    result.kind, result.expected, result.actual = "image", expected, actual
    return result


def compare_arrays(name, expected, actual, rtol, atol):
    """Element-wise comparison of two numeric arrays of matching (or squeeze-equal) shapes."""
    try:
        e = np.asarray(expected, dtype=np.float64)
        a = np.asarray(actual, dtype=np.float64)
    except (TypeError, ValueError) as err:
        return Comparison(name, "array", False, rtol, atol, expected=expected, actual=actual,
                          problem=f"not numeric: {err}")
    base = Comparison(name, "array", False, rtol, atol, expected=expected, actual=actual, size=e.size)
    if a.shape != e.shape:
        # Rank-5 blobs ([Seq, Batch, C, H, W]) against a framework's NCHW values: same data, extra unit axes.
        if _squeezed(a.shape) != _squeezed(e.shape):
            base.problem = f"shape {a.shape} does not match the expected {e.shape}"
            return base
        a = a.reshape(e.shape)
    base.expected_array, base.actual_array = e, a
    if e.size == 0:
        base.passed, base.max_abs_error, base.mean_abs_error, base.max_rel_error = True, 0.0, 0.0, 0.0
        return base
    both_nan = np.isnan(e) & np.isnan(a)
    same = (a == e) | both_nan                               # also matches equal infinities
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        error = np.where(same, 0.0, np.abs(a - e))            # NaN where exactly one side is NaN
        relative = np.where(same, 0.0, error / np.abs(e))     # inf where expected is 0
        bad = ~same & ~(error <= atol + rtol * np.abs(e))
    nan_bad = np.isnan(error)
    base.mismatched = int(bad.sum())
    base.nan_mismatches = int(nan_bad.sum())
    base.passed = base.mismatched == 0
    if base.nan_mismatches:
        flat = int(np.flatnonzero(nan_bad)[0])
        base.max_abs_error = base.max_rel_error = base.mean_abs_error = float("nan")
    else:
        flat = int(np.argmax(error))
        base.max_abs_error = float(error.reshape(-1)[flat])
        base.mean_abs_error = float(error.mean())
        base.max_rel_error = float(relative.max())
    index = np.unravel_index(flat, e.shape)
    base.worst_index = tuple(int(i) for i in index)
    base.worst_expected, base.worst_actual = float(e[index]), float(a[index])
    return base
