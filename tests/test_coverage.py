"""The layer coverage table: every kind of NeuralNetwork.proto runs, and docs/coverage.md is current.

The list of kinds comes from the protobuf descriptor (the specification), not from the runtime's
registry, so a kind the registry lacks is caught here.
"""
# layer-coverage: skip   (this file names kinds to test the scanner; it runs none of them)
import difflib

import numpy as np
import pytest

import workbench as wb
from support import ROOT, custom_only_model
from workbench.runtime.layers import KERNELS, coverage


def spec_kinds():
    from coremltools.proto import NeuralNetwork_pb2
    return [f.name for f in NeuralNetwork_pb2.NeuralNetworkLayer.DESCRIPTOR.oneofs_by_name["layer"].fields]


def test_all_158_kinds_of_the_specification_are_run():
    kinds = spec_kinds()
    assert len(kinds) == 158
    assert sorted(set(kinds) - set(KERNELS)) == ["custom"]      # custom layers are the planner's CustomStep
    assert sorted(set(KERNELS) - set(kinds)) == []
    assert all(coverage.runner_of(k) for k in kinds)


def test_custom_kind_is_run_by_the_users_implementation():
    class Triple(wb.CustomLayer):
        def evaluate(self, inputs, outputs):
            outputs[0][...] = 3 * inputs[0]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(wb.load(custom_only_model(["Triple"]), layers=Triple).predict({"x": x})["y"], 3 * x)


def test_committed_table_is_current():
    committed = (ROOT / "docs" / "coverage.md").read_text(encoding="utf-8")
    generated = coverage.table(ROOT / "tests")
    if committed != generated:
        diff = "\n".join(list(difflib.unified_diff(committed.splitlines(), generated.splitlines(),
                                                   "docs/coverage.md", "generated", lineterm=""))[:40])
        pytest.fail("docs/coverage.md is out of date; regenerate it with\n"
                    "    python -m workbench.runtime.layers.coverage > docs/coverage.md\n" + diff)
    assert "runs **158 of 158** layer kinds" in committed
    assert "**not run**" not in committed


def test_builder_methods_map_to_the_kinds_they_write():
    methods = coverage.builder_kinds()
    assert methods["add_inner_product"] == {"innerProduct"}
    assert methods["add_custom"] == {"custom"}
    assert methods["add_reduce_l1"] == {"reduceL1"}
    assert {"add", "multiply", "concat", "dot", "max", "min", "average"} <= methods["add_elementwise"]
    assert set().union(*methods.values()) == set(spec_kinds())        # the builder can write every kind


@pytest.mark.parametrize("source,expected", [
    ('b.add_inner_product("ip", w, b, 3, 4, True, "x", "y")', {"innerProduct"}),
    ('b.add_elementwise("e", ["a", "b"], "y", mode="MULTIPLY")', {"multiply"}),
    ('b.add_elementwise("e", ["a", "b"], "y", mode="COS")', {"dot"}),
    ('b.add_greater_than("g", ["a", "b"], "y")', {"greaterThan"}),
    ('b.add_less_than("g", ["a", "b"], "y", use_less_than_equal=True)', {"lessThan", "lessEqual"}),
    ('b.add_logical("l", ["a"], "y", mode="NOT")', {"logicalNot"}),
    ('K = ["l1", "l2"]\ngetattr(b, f"add_reduce_{k}")("r", "x", "y")', {"reduceL1", "reduceL2"}),
    ('layer.convolution.weights.floatValue.extend(w)', {"convolution"}),
    ('assert layer.WhichOneof("layer") == "batchnorm"', {"batchnorm"}),
    ('np.max(x); spec.layers.add(); registry.add_source(folder)', set()),
    ('mode = "max"   # a quoted kind name counts, even where it means something else', {"max"}),
])
def test_scan_rules(source, expected):
    assert coverage.kinds_in_test(source, spec_kinds(), coverage.builder_kinds()) == expected


def test_conformance_results_are_read_from_the_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Conformance\n\n| kind | passed | failed |\n|---|---|---|\n"
                      "| `convolution` | 120 | 0 |\n| pooling | 30 | 2 (padding) |\n", encoding="utf-8")
    results = coverage.conformance_results(readme)
    assert results["convolution"] == "120; 0"
    assert results["pooling"] == "30; 2 (padding)"
    assert coverage.conformance_results(tmp_path / "absent.md") == {}


def test_command_without_a_tests_folder_says_so(tmp_path, capsys):
    assert coverage.main(["--tests", str(tmp_path / "nowhere")]) == 2
    assert "no tests folder" in capsys.readouterr().err
