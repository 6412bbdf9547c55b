"""The protobuf classes (workbench/runtime/_proto.py): loaded without coremltools' package, shared
with it once it is imported."""
import subprocess
import sys

SCRIPT = """
import sys, time
start = time.perf_counter()
import workbench as wb
from workbench.runtime import _proto
print("coremltools imported:", "coremltools" in sys.modules)
import coremltools as ct
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder
import numpy as np
print("same classes:", ct.proto.Model_pb2 is _proto.Model_pb2 and ct.proto.NeuralNetwork_pb2 is _proto.NeuralNetwork_pb2)
b = NeuralNetworkBuilder([("x", datatypes.Array(3))], [("y", None)], disable_rank5_shape_mapping=True)
b.add_activation("relu", "RELU", "x", "y")
print("spec:", wb.load(b.spec).predict({"x": np.array([-1, 0, 2], np.float32)})["y"].tolist())
print("MLModel:", wb.load(ct.models.MLModel(b.spec, skip_model_load=True)).predict({"x": np.ones(3, np.float32)})["y"].tolist())
"""


def test_import_workbench_leaves_coremltools_alone_and_shares_its_classes_later():
    """``import workbench`` used to run coremltools' package __init__ (and with it torch: 5 of 8 s).
    Now it loads only the generated modules; a later ``import coremltools`` uses the same ones, so
    specs built by coremltools load as before."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if ":" in line]
    assert "coremltools imported: False" in lines
    assert "same classes: True" in lines
    assert "spec: [0.0, 0.0, 2.0]" in lines
    assert "MLModel: [1.0, 1.0, 1.0]" in lines
