"""pytest configuration for tests/: helpers live in support.py (imported by name by the tests).

Every prediction in the session also checks the load-time shape rules: where a built-in kernel
declares ``output_shapes``, what it declares must equal what its ``compute`` returned. The rules
stand in for computing at load, so a wrong one would give custom layers wrong shapes there.
"""
import numpy as np
import pytest

import support  # noqa: F401  (silences coremltools' import-time messages once, before any test)
from workbench.runtime import plan


@pytest.fixture(autouse=True, scope="session")
def shape_rules_match_compute():
    original = plan.BuiltinStep.run

    def checked(step, scope):
        original(step, scope)
        state = step.state
        if step.shape_rule is None or state is None or state.shapes_only or step.kernel.uses_scope:
            return
        shapes = [None if v is None else tuple(np.shape(v)) for v in (scope.get(n) for n in step.inputs)]
        declared = step.shape_rule(shapes)
        if declared is None:
            return
        actual = [tuple(np.shape(scope[n])) for n in step.outputs]
        assert [tuple(int(d) for d in s) for s in declared] == actual, (
            f"layer '{step.name}' ({step.kind}): output_shapes({shapes}) declared {declared}, "
            f"compute returned {actual}")

    plan.BuiltinStep.run = checked
    yield
    plan.BuiltinStep.run = original
