"""copy, rangeStatic, rangeDynamic, loop, loopBreak, loopContinue and branch through wb.load(...).predict.

References: numpy.arange, and plain Python loops written from the pseudo-code in NeuralNetwork.proto's
LoopLayerParams / BranchLayerParams comments.
"""
import numpy as np
import pytest
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder

import workbench as wb


def top(inputs, outputs=("out",)):
    return NeuralNetworkBuilder([(n, datatypes.Array(*s)) for n, s in inputs], [(o, None) for o in outputs],
                                disable_rank5_shape_mapping=True)


def nested(net):
    """A builder writing into a nested NeuralNetwork message (loop body, branch arm)."""
    return NeuralNetworkBuilder(nn_spec=net, disable_rank5_shape_mapping=True)


def add_const(bld, name, blob, value, into):
    """into = blob + value (elementwise ADD with alpha)."""
    bld.add_elementwise(name, input_names=[blob], output_name=into, mode="ADD", alpha=float(value))


def scalar(v):
    return np.array([v], np.float32)


# ---------------------------------------------------------------- copy

def test_copy():
    bld = top([("x", (2, 3))])
    bld.add_copy("copy", "x", "out")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(wb.load(bld.spec).predict({"x": x})["out"], x)


def test_copy_overwrites_an_existing_blob():
    bld = top([("x", (1,))])
    bld.add_copy("first", "x", "out")
    add_const(bld, "plus", "x", 5, "x5")
    bld.add_copy("overwrite", "x5", "out")
    assert wb.load(bld.spec).predict({"x": scalar(2)})["out"].tolist() == [7]


# ---------------------------------------------------------------- ranges

RANGES = [(-10.4, 23, 12.2), (0, 1000, 1), (50.5, 90.5, 1.5), (5, 8, 2), (5, 8, 98), (5, 8, 1.5),
          (10, 5, -0.6), (24, -65, -2), (3, 3, 1)]


def _f32_arange(start, end, step):
    """numpy.arange of the float32 values the model stores, rounded to float32."""
    start, end, step = (float(np.float32(v)) for v in (start, end, step))
    return np.arange(start, end, step).astype(np.float32)


@pytest.mark.parametrize("start,end,step", RANGES)
def test_range_static(start, end, step):
    bld = top([("x", (1,))])
    bld.add_range_static("range", "r", end=end, start=start, step=step)
    bld.add_multiply_broadcastable("mul", ["x", "r"], "out")
    got = wb.load(bld.spec).predict({"x": scalar(1)})["out"]
    want = _f32_arange(start, end, step)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("start,end,step", RANGES)
@pytest.mark.parametrize("num_inputs", [1, 2, 3])
def test_range_dynamic(start, end, step, num_inputs):
    """Input 0 is the end, input 1 the start, input 2 the step; missing ones come from the parameters."""
    names = ["end", "start", "step"][:num_inputs]
    bld = top([(n, (1,)) for n in names])
    params = {"start": start, "step": step}
    bld.add_range_dynamic("range", names, "out", **{k: v for k, v in params.items() if k not in names})
    values = {"end": end, "start": start, "step": step}
    got = wb.load(bld.spec).predict({n: scalar(values[n]) for n in names})["out"]
    want = _f32_arange(start, end, step)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_range_with_zero_step_names_the_layer():
    bld = top([("end", (1,))])
    bld.add_range_dynamic("range", ["end"], "out", start=0, step=0)
    with pytest.raises(wb.LayerError, match="range"):
        wb.load(bld.spec).predict({"end": scalar(4)})


# ---------------------------------------------------------------- loop

def counting_loop(max_iterations=None, count_input=False, condition_below=None, condition_counter=False,
                  step=1.0):
    """out starts at x; the body adds ``step`` to out and 1 to 'iters'.

    With ``condition_below`` the condition network computes cond = out < condition_below (and, with
    ``condition_counter``, counts its own runs in 'cond_runs').
    """
    inputs = [("x", (1,))] + ([("n", (1,))] if count_input else [])
    bld = top(inputs, outputs=("out", "iters", "cond_runs"))
    bld.add_copy("init", "x", "out")
    bld.add_load_constant_nd("zero_iters", "iters", constant_value=np.zeros(1), shape=(1,))
    bld.add_load_constant_nd("zero_runs", "cond_runs", constant_value=np.zeros(1), shape=(1,))
    loop = bld.add_loop("loop", input_name="n" if count_input else None, max_iterations=max_iterations,
                        condition="cond" if condition_below is not None else None)
    if condition_below is not None:
        cond = nested(loop.loop.conditionNetwork)
        cond.add_less_than("lt", ["out"], "cond", alpha=float(condition_below))
        if condition_counter:
            add_const(cond, "runs_plus", "cond_runs", 1, "runs1")
            cond.add_copy("runs_back", "runs1", "cond_runs")
    body = nested(loop.loop.bodyNetwork)
    add_const(body, "step", "out", step, "out_next")
    body.add_copy("out_back", "out_next", "out")
    add_const(body, "count", "iters", 1, "iters_next")
    body.add_copy("iters_back", "iters_next", "iters")
    return bld.spec


def reference_loop(x, step, max_iterations=None, condition_below=None):
    """The proto's three cases; returns (out, body runs, condition runs)."""
    out, iters, cond_runs = x, 0, 0

    def condition():
        nonlocal cond_runs
        cond_runs += 1
        return out < condition_below

    if condition_below is None:                       # case 1: for loop
        for _ in range(max_iterations):
            out, iters = out + step, iters + 1
    elif not max_iterations:                          # case 2: while loop
        while condition():
            out, iters = out + step, iters + 1
    else:                                             # case 3: while with a joint bound
        while condition() and iters < max_iterations:
            out, iters = out + step, iters + 1
    return out, iters, cond_runs


def _run(spec, **inputs):
    got = wb.load(spec).predict({k: scalar(v) for k, v in inputs.items()})
    return got["out"].item(), got["iters"].item(), got["cond_runs"].item()


@pytest.mark.parametrize("n", [0, 1, 5])
def test_loop_for_max_iterations(n):
    assert _run(counting_loop(max_iterations=n, step=2), x=1) == reference_loop(1, 2, max_iterations=n)


@pytest.mark.parametrize("n", [0, 3, 4])
def test_loop_for_count_from_input_overrides_max_iterations(n):
    spec = counting_loop(max_iterations=100, count_input=True, step=2)
    assert _run(spec, x=1, n=n) == reference_loop(1, 2, max_iterations=n)


@pytest.mark.parametrize("x", [0, 7, 10, 25])
def test_loop_while(x):
    spec = counting_loop(condition_below=10, condition_counter=True, step=3)
    assert _run(spec, x=x) == reference_loop(x, 3, condition_below=10)


@pytest.mark.parametrize("x,bound", [(0, 2), (0, 50), (9, 50), (11, 3)])
def test_loop_while_with_bound(x, bound):
    """The condition runs once more after the last body, before the bound is checked."""
    spec = counting_loop(max_iterations=bound, condition_below=10, condition_counter=True, step=3)
    assert _run(spec, x=x) == reference_loop(x, 3, max_iterations=bound, condition_below=10)


def test_loop_while_with_bound_from_input():
    spec = counting_loop(max_iterations=100, count_input=True, condition_below=10, condition_counter=True, step=1)
    assert _run(spec, x=0, n=4) == reference_loop(0, 1, max_iterations=4, condition_below=10)


def _loop_with_branch(signal, threshold, max_iterations):
    """Body: out += 1; if out > threshold: <signal>; after the branch: counted += 1."""
    bld = top([("x", (1,))], outputs=("out", "counted"))
    bld.add_copy("init", "x", "out")
    bld.add_load_constant_nd("zero", "counted", constant_value=np.zeros(1), shape=(1,))
    loop = bld.add_loop("loop", max_iterations=max_iterations)
    body = nested(loop.loop.bodyNetwork)
    add_const(body, "inc", "out", 1, "out1")
    body.add_copy("out_back", "out1", "out")
    body.add_greater_than("gt", ["out"], "hit", alpha=float(threshold))
    branch = body.add_branch("branch", "hit")
    arm = nested(branch.branch.ifBranch)
    (arm.add_loop_break if signal == "break" else arm.add_loop_continue)(signal)
    add_const(body, "count", "counted", 1, "counted1")
    body.add_copy("counted_back", "counted1", "counted")
    return bld.spec


def test_loop_break_from_inside_a_branch():
    got = wb.load(_loop_with_branch("break", threshold=4, max_iterations=100)).predict({"x": scalar(0)})
    # iterations with out = 1..4 finish; out = 5 breaks before counting
    assert (got["out"].item(), got["counted"].item()) == (5, 4)


def test_loop_continue_skips_the_rest_of_the_body():
    got = wb.load(_loop_with_branch("continue", threshold=3, max_iterations=6)).predict({"x": scalar(0)})
    # all 6 iterations run; only those with out <= 3 reach the counter
    assert (got["out"].item(), got["counted"].item()) == (6, 3)


def test_nested_loops_break_only_the_inner_one():
    bld = top([("x", (1,))], outputs=("out",))
    bld.add_copy("init", "x", "out")
    outer = nested(bld.add_loop("outer", max_iterations=3).loop.bodyNetwork)
    inner = nested(outer.add_loop("inner", max_iterations=100).loop.bodyNetwork)
    add_const(inner, "inc", "out", 1, "out1")
    inner.add_copy("back", "out1", "out")
    inner.add_loop_break("break")          # the inner loop body runs once per outer iteration
    assert wb.load(bld.spec).predict({"x": scalar(0)})["out"].item() == 3


def test_endless_loop_hits_the_iteration_limit():
    spec = counting_loop(condition_below=10, step=0)
    with pytest.raises(wb.LayerError, match=r"loop.*50.*max_loop_iterations") as info:
        wb.load(spec, limits={"max_loop_iterations": 50}).predict({"x": scalar(0)})
    assert "limits=" in str(info.value)


def test_loop_within_the_limit_runs():
    spec = counting_loop(max_iterations=50, step=1)
    assert _run_limited(spec, 50) == 50


def _run_limited(spec, limit):
    return wb.load(spec, limits={"max_loop_iterations": limit}).predict({"x": scalar(0)})["out"].item()


def test_loop_break_outside_a_loop_is_a_format_error():
    bld = top([("x", (1,))])
    bld.add_copy("copy", "x", "out")
    bld.add_loop_break("stray")
    with pytest.raises(wb.ModelFormatError, match="stray"):
        wb.load(bld.spec)


# ---------------------------------------------------------------- branch

def branch_model(with_else=True):
    """out = x * 10 if |cond| > 1e-6 else x + 10 (else: out stays x)."""
    bld = top([("x", (3,)), ("cond", (1,))])
    bld.add_copy("init", "x", "out")
    layer = bld.add_branch("branch", "cond")
    arm_if = nested(layer.branch.ifBranch)
    arm_if.add_elementwise("mul", ["x"], "x10", mode="MULTIPLY", alpha=10.0)
    arm_if.add_copy("if_out", "x10", "out")
    if with_else:
        arm_else = nested(layer.branch.elseBranch)
        add_const(arm_else, "add", "x", 10, "xp10")
        arm_else.add_copy("else_out", "xp10", "out")
    return bld.spec


@pytest.mark.parametrize("cond,taken", [(1.0, True), (0.0, False), (-1.0, True), (1e-7, False),
                                        (-5e-7, False), (2e-6, True), (-2e-6, True)])
@pytest.mark.parametrize("with_else", [True, False])
def test_branch(cond, taken, with_else):
    x = np.array([1, 2, 3], np.float32)
    got = wb.load(branch_model(with_else)).predict({"x": x, "cond": scalar(cond)})["out"]
    want = x * 10 if taken else (x + 10 if with_else else x)
    np.testing.assert_array_equal(got, want)


def test_branch_condition_must_be_a_scalar():
    bld = top([("x", (3,)), ("cond", (2,))])
    bld.add_copy("init", "x", "out")
    bld.add_branch("branch", "cond")
    with pytest.raises(wb.LayerError, match="branch.*scalar"):
        wb.load(bld.spec).predict({"x": np.ones(3, np.float32), "cond": np.ones(2, np.float32)})
