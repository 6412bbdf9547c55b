"""The compiled float32 functions of ``_fused.py`` against float64 references (Python's math module).

Their accuracy is stated in ulps of the float32 result; the kernels that use them (GELU, erf,
softmax, statistics, LSTM) are tested against torch in the layer test files.
"""
import math

import numpy as np
import pytest

from workbench.runtime.layers import _fused

GRID = np.concatenate([np.linspace(-90, 90, 200001), np.linspace(-2, 2, 40001),
                       np.logspace(-38, 1.9, 4000), -np.logspace(-38, 1.9, 4000),
                       [0.0, -0.0, 0.625, -0.625, 4.0, -4.0, 50.0, -50.0, 88.72, -87.33]]).astype(np.float32)


def ulps(got, want):
    """Distance in float32 ulps (ordered bit patterns, so it is meaningful across signs). Results
    below the normal range count as exact when both are there: a subnormal may round to 0
    (Core ML's GPU and Neural Engine flush them anyway)."""
    def ordered(a):
        i = a.astype(np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    tiny = np.finfo(np.float32).tiny
    both_subnormal = (np.abs(got) < tiny) & (np.abs(want) < tiny)
    return np.where(both_subnormal, 0, np.abs(ordered(got) - ordered(want)))


def apply(kernel, x):
    return _fused.flat_map(kernel, x)


def reference(fn, x):
    out = []
    for v in x.astype(np.float64):
        try:
            out.append(fn(float(v)))
        except OverflowError:
            out.append(math.inf)
    return np.array(out).astype(np.float32)


def sigmoid64(v):
    return 1.0 / (1.0 + math.exp(-v)) if v > -700 else 0.0


@pytest.mark.parametrize("kernel, fn, bound", [
    (_fused.map_tanh, math.tanh, 2),
    (_fused.map_sigmoid, sigmoid64, 3),
    (_fused.map_erf, math.erf, 8),
])
def test_functions_are_within_a_few_ulps(kernel, fn, bound):
    got = apply(kernel, GRID)
    assert got.dtype == np.float32
    err = ulps(got, reference(fn, GRID))
    assert err.max() <= bound, GRID[np.argmax(err)]


def test_exp_is_within_one_ulp_over_its_normal_range():
    @_fused.njit
    def map_exp(x, out):
        for k in range(x.size):
            out[k] = _fused.exp(x[k])
    x = GRID[(GRID > -87.3) & (GRID < 88.7)]
    err = ulps(apply(map_exp, x), reference(math.exp, x))
    assert err.max() <= 1


def test_exp_keeps_ieee_limits():
    @_fused.njit
    def map_exp(x, out):
        for k in range(x.size):
            out[k] = _fused.exp(x[k])
    got = apply(map_exp, np.array([np.inf, -np.inf, 89.0, -104.0, np.nan], np.float32))
    assert got[0] == np.inf and got[1] == 0 and got[2] == np.inf and got[3] == 0
    assert np.isnan(got[4])


@pytest.mark.parametrize("kernel, at_inf, at_minus_inf", [
    (_fused.map_tanh, 1.0, -1.0), (_fused.map_sigmoid, 1.0, 0.0), (_fused.map_erf, 1.0, -1.0)])
def test_infinities_saturate_and_nan_propagates(kernel, at_inf, at_minus_inf):
    got = apply(kernel, np.array([np.inf, -np.inf, np.nan], np.float32))
    assert got[0] == at_inf and got[1] == at_minus_inf and np.isnan(got[2])


def test_tanh_and_erf_are_odd_and_exact_at_zero():
    x = GRID[GRID > 0]
    for kernel in (_fused.map_tanh, _fused.map_erf):
        np.testing.assert_array_equal(apply(kernel, -x), -apply(kernel, x))
        assert apply(kernel, np.array([0.0], np.float32))[0] == 0


def test_flat_map_keeps_shape_and_reads_any_layout():
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4).transpose(2, 0, 1) / 10
    got = apply(_fused.map_tanh, x)
    assert got.shape == (4, 2, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.tanh(x), rtol=3e-7)


def test_rows_of_zero_length_are_left_alone():
    x = np.zeros((3, 0), np.float32)
    assert _fused.over_trailing_axes(_fused.softmax_rows, x, 1).shape == (3, 0)


NUMBA_SCRIPT = """
import sys
import numpy as np
import workbench as wb
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder

def model(add):
    b = NeuralNetworkBuilder([("x", datatypes.Array(4))], [("y", None)], disable_rank5_shape_mapping=True)
    add(b)
    return wb.load(b.spec)

model(lambda b: b.add_activation("relu", "RELU", "x", "y")).predict({"x": np.ones(4, np.float32)})
print("after relu:", "numba" in sys.modules)
model(lambda b: b.add_gelu("g", "x", "y")).predict({"x": np.ones(4, np.float32)})
print("after gelu:", "numba" in sys.modules)
"""


def test_numba_is_imported_only_by_models_that_use_compiled_kernels():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", NUMBA_SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "after relu: False" in out.stdout and "after gelu: True" in out.stdout


def test_a_recurrent_sequence_lets_other_threads_run():
    """The recurrent loops run for milliseconds without the GIL: a Python thread keeps running
    meanwhile. Holding the GIL, the call would let it run only once the call has returned (before
    the caller takes the GIL back, at most a switch interval later): never in its first half."""
    import sys
    import threading
    import time

    from workbench.runtime.layers import _gemm
    steps, batch, hidden = 800, 8, 256
    rng = np.random.default_rng(0)
    rt = (rng.standard_normal((hidden, 4 * hidden)) * 0.05).astype(np.float32)
    pre = rng.standard_normal((steps, batch, 4 * hidden)).astype(np.float32)
    out = np.empty((steps, batch, hidden), np.float32)
    state = np.zeros((batch, hidden), np.float32)
    clip = np.float32(50)
    _fused.lstm_sequence(_gemm.ADDRESS, pre.copy(), rt, state, state.copy(), out, clip, clip, False)
    stamps, stop = [], threading.Event()

    def stamping():
        while not stop.is_set():
            stamps.append(time.perf_counter())
            for _ in range(200):
                pass

    thread = threading.Thread(target=stamping)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.001)                    # the call lasts far longer than 4 of these
    thread.start()
    try:
        while len(stamps) < 10:                     # it is running
            time.sleep(0.001)
        start = time.perf_counter()
        _fused.lstm_sequence(_gemm.ADDRESS, pre, rt, state, state.copy(), out, clip, clip, False)
        end = time.perf_counter()
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert end - start > 4 * 0.001
    assert any(start < t < (start + end) / 2 for t in stamps)
