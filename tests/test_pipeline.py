"""Pipelines (pipeline, pipelineClassifier, pipelineRegressor) of neural networks, and updatable models.

Pipelines are built with coremltools' own builders (ct.utils.make_pipeline, models.pipeline's
Pipeline / PipelineClassifier / PipelineRegressor), as users build them. References: PyTorch for
converted stages, numpy formulas for builder stages, the custom layers' own arithmetic.
"""
import os
import textwrap

import numpy as np
import pytest
import torch
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder, SgdParams
from coremltools.models.pipeline import Pipeline, PipelineClassifier, PipelineRegressor
from coremltools.proto import NeuralNetwork_pb2

import workbench as wb
from support import Double, Negate

RNG = np.random.default_rng(7)
W = RNG.standard_normal((3, 4)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)
X = RNG.standard_normal(4).astype(np.float32)


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def dense_stage(input_name="x", output_name="h", w=W, b=B):
    """An exact-rank network: output = w @ input + b."""
    bld = NeuralNetworkBuilder([(input_name, datatypes.Array(w.shape[1]))],
                               [(output_name, datatypes.Array(w.shape[0]))], disable_rank5_shape_mapping=True)
    bld.add_inner_product("dense", w, b, w.shape[1], w.shape[0], True, input_name, output_name)
    return bld.spec


def classifier_stage(labels, input_name="h"):
    """A neuralNetworkClassifier: softmax over its input, answering label + probability dict."""
    bld = NeuralNetworkBuilder([(input_name, datatypes.Array(len(labels)))], [("probs", None)],
                               disable_rank5_shape_mapping=True, mode="classifier")
    bld.add_softmax_nd("softmax", input_name, "probs", axis=-1)
    bld.set_class_labels(labels, predicted_feature_name="label", prediction_blob="probs")
    return bld.spec


def custom_stage(class_name, input_name, output_name, layer_name="custom"):
    bld = NeuralNetworkBuilder([(input_name, datatypes.Array(2, 3))], [(output_name, None)],
                               disable_rank5_shape_mapping=True)
    params = NeuralNetwork_pb2.CustomLayerParams()
    params.className = class_name
    bld.add_custom(name=layer_name, input_names=[input_name], output_names=[output_name], custom_proto_spec=params)
    return bld.spec


def pipeline_of(*stages, inputs=(("x", datatypes.Array(2, 3)),), outputs=(("z", datatypes.Array(2, 3)),), names=None):
    p = Pipeline(list(inputs), list(outputs))
    for s in stages:
        p.add_model(s)
    if names:
        p.spec.pipeline.names.extend(names)
    return p.spec


C = np.arange(6, dtype=np.float32).reshape(2, 3)


# ---------------------------------------------------------------- plain pipelines

@pytest.fixture(scope="module")
def converted_pipeline():
    """Two torch networks converted separately and joined with ct.utils.make_pipeline."""
    import coremltools as ct
    torch.manual_seed(0)
    first = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    second = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 3), torch.nn.Sigmoid()).eval()
    x = torch.rand(1, 3, 8, 8)
    m1 = ct.convert(torch.jit.trace(first, x), inputs=[ct.TensorType(name="x", shape=x.shape)],
                    outputs=[ct.TensorType(name="h")], convert_to="neuralnetwork")
    m2 = ct.convert(torch.jit.trace(second, first(x)), inputs=[ct.TensorType(name="h", shape=(1, 4, 8, 8))],
                    outputs=[ct.TensorType(name="y")], convert_to="neuralnetwork")
    return ct.utils.make_pipeline(m1, m2), first, second


def test_converted_pipeline_agrees_with_torch(converted_pipeline):
    mlmodel, first, second = converted_pipeline
    model = wb.load(mlmodel)
    assert model.type == "pipeline" and [s.kind for s in model.stages] == ["neuralNetwork", "neuralNetwork"]
    x = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)
    with torch.no_grad():
        h = first(torch.from_numpy(x))
        want = second(h).numpy()
    got = model.predict({"x": x})
    assert list(got) == ["y"]
    np.testing.assert_allclose(got["y"], want, rtol=1e-5, atol=1e-6)


def test_trace_namespaces_each_stages_blobs(converted_pipeline):
    """Both converted stages hold a blob called 'input'; the stage prefix keeps them apart."""
    mlmodel, first, second = converted_pipeline
    model = wb.load(mlmodel)
    x = np.random.default_rng(2).random((1, 3, 8, 8), dtype=np.float32)
    blobs = model.trace({"x": x})
    assert {"model0/x", "model0/h", "model1/h", "model1/y"} <= set(blobs)
    assert {"model0/input", "model1/input"} <= set(blobs)               # same name, two stages
    with torch.no_grad():
        h = first(torch.from_numpy(x))
        pre_sigmoid = second[0](h)
    np.testing.assert_allclose(blobs["model0/h"], h.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blobs["model1/input"], pre_sigmoid.numpy(), rtol=1e-5, atol=1e-5)
    assert model.blob_shapes["model1/y"] == (1, 2, 6, 6)
    assert all(name.startswith(("model0/", "model1/")) for name, _, _, _ in model.layers)
    stage0_layers = [l for l in model.layers if l[0].startswith("model0/")]
    assert stage0_layers[-1][3] == ["model0/h"]


def test_stage_names_from_the_pipeline_namespace_blobs():
    spec = pipeline_of(custom_stage("Double", "x", "y"), custom_stage("Negate", "y", "z"), names=["twice", "minus"])
    model = wb.load(spec, layers=[Double, Negate])
    blobs = model.trace({"x": C})
    assert set(blobs) == {"twice/x", "twice/y", "minus/y", "minus/z"}
    np.testing.assert_array_equal(model.predict({"x": C})["z"], -2 * C)


def test_nested_pipeline():
    inner = pipeline_of(custom_stage("Double", "x", "y"), custom_stage("Double", "y", "z"))
    spec = pipeline_of(inner, custom_stage("Negate", "z", "w"), outputs=[("w", datatypes.Array(2, 3))])
    model = wb.load(spec, layers=[Double, Negate])
    np.testing.assert_array_equal(model.predict({"x": C})["w"], -4 * C)
    assert "model0/model1/z" in model.trace({"x": C})
    assert [r.class_name for r in model.custom_layers] == ["Double", "Double", "Negate"]


# ---------------------------------------------------------------- classifier and regressor pipelines

@pytest.mark.parametrize("labels", [["cat", "dog", "eel"], [10, 20, 30]])
def test_pipeline_classifier_answers_like_a_classifier(labels):
    kind = datatypes.String() if isinstance(labels[0], str) else datatypes.Int64()
    p = PipelineClassifier([("x", datatypes.Array(4))], labels,
                           output_features=[("label", kind), ("probs", datatypes.Dictionary(kind))])
    p.add_model(dense_stage())
    p.add_model(classifier_stage(labels))
    model = wb.load(p.spec)
    want = softmax(W.astype(np.float64) @ X + B)
    got = model.predict({"x": X})
    assert set(got) == {"label", "probs"}
    assert got["label"] == labels[int(np.argmax(want))] and type(got["label"]) is type(labels[0])
    assert list(got["probs"]) == labels
    np.testing.assert_allclose([got["probs"][k] for k in labels], want, rtol=1e-5)


def test_pipeline_regressor():
    reg = NeuralNetworkBuilder([("h", datatypes.Array(3))], [("score", None)], mode="regressor")   # rank-5 stage
    w2 = RNG.standard_normal((1, 3)).astype(np.float32)
    reg.add_inner_product("head", w2, None, 3, 1, False, "h", "score")
    p = PipelineRegressor([("x", datatypes.Array(4))], [("score", datatypes.Double())])
    p.add_model(dense_stage())
    p.add_model(reg.spec)
    model = wb.load(p.spec)
    got = model.predict({"x": X})["score"]
    np.testing.assert_allclose(np.ravel(got), w2 @ (W @ X + B), rtol=1e-5)


def test_image_input_reaches_its_stage_with_preprocessing():
    from PIL import Image
    bld = NeuralNetworkBuilder([("img", datatypes.Array(3, 2, 2))], [("h", datatypes.Array(3, 2, 2))])
    bld.set_pre_processing_parameters(image_input_names=["img"], image_scale=1 / 255, red_bias=-0.5)
    bld.add_activation("scale2", "LINEAR", "img", "h", params=[2.0, 0.0])
    spec0 = bld.spec
    spec0.description.input[0].type.imageType.colorSpace = 20       # RGB (set_pre_processing_parameters leaves it)
    p = Pipeline([("img", datatypes.Array(3, 2, 2))], [("h", datatypes.Array(3, 2, 2))])
    p.spec.description.input[0].type.CopyFrom(spec0.description.input[0].type)
    p.add_model(spec0)
    pixels = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 20
    got = wb.load(p.spec).predict({"img": Image.fromarray(pixels, "RGB")})["h"]
    want = 2 * (pixels.transpose(2, 0, 1) / 255.0 + np.array([-0.5, 0, 0])[:, None, None])
    np.testing.assert_allclose(got.reshape(3, 2, 2), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- custom layers across stages

def test_custom_layers_and_missing_implementations_span_stages():
    spec = pipeline_of(custom_stage("Double", "x", "y"), custom_stage("Negate", "y", "z"))
    model = wb.load(spec, layers=[Double])
    assert [(r.class_name, r.implementation) for r in model.custom_layers] == [("Double", Double), ("Negate", None)]
    assert model.missing_implementations() == ["Negate"]
    with pytest.raises(wb.MissingImplementationError, match="Negate"):
        model.predict({"x": C})
    text = model.summary()
    assert "pipeline of 2 stages" in text and "stage 0 'model0'" in text and "stage 1 'model1'" in text
    assert "className Double (implemented by" in text and "className Negate (MISSING implementation)" in text
    assert "missing implementations (all stages): Negate" in text
    model.use(Negate)
    np.testing.assert_array_equal(model.predict({"x": C})["z"], -2 * C)
    assert model.missing_implementations() == []


def test_one_class_serves_the_same_class_name_in_every_stage():
    spec = pipeline_of(custom_stage("Double", "x", "y"), custom_stage("Double", "y", "z"))
    model = wb.load(spec, layers={"Double": Double})
    np.testing.assert_array_equal(model.predict({"x": C})["z"], 4 * C)

    class Triple(wb.CustomLayer):
        class_name = "Double"

        def evaluate(self, inputs, outputs):
            outputs[0][...] = 3 * inputs[0]
    model.use(Triple)
    np.testing.assert_array_equal(model.predict({"x": C})["z"], 9 * C)


def test_failed_use_keeps_every_stages_implementation():
    spec = pipeline_of(custom_stage("Double", "x", "y"), custom_stage("Double", "y", "z"))
    model = wb.load(spec, layers=Double)

    class Broken(wb.CustomLayer):
        class_name = "Double"
        made = 0

        def __init__(self, parameters):
            Broken.made += 1
            if Broken.made == 2:                 # the second stage's layer fails
                raise RuntimeError("second stage refuses")
    with pytest.raises(wb.LayerError, match="second stage refuses"):
        model.use(Broken)
    assert [r.implementation for r in model.custom_layers] == [Double, Double]
    np.testing.assert_array_equal(model.predict({"x": C})["z"], 4 * C)


def test_reload_reaches_every_stage(tmp_path):
    path = tmp_path / "Scale.py"

    def write(factor):
        path.write_text(textwrap.dedent(f'''
            import workbench as wb
            class Scale(wb.CustomLayer):
                def evaluate(self, inputs, outputs):
                    outputs[0][...] = inputs[0] * {factor}
            '''))
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    write(2)
    model = wb.load(pipeline_of(custom_stage("Scale", "x", "y"), custom_stage("Scale", "y", "z")), layers=tmp_path)
    np.testing.assert_array_equal(model.predict({"x": C})["z"], 4 * C)
    write(5)
    assert model.reload() == ["Scale"]
    np.testing.assert_array_equal(model.predict({"x": C})["z"], 25 * C)


def test_cli_inspects_a_pipeline(tmp_path, capsys):
    from workbench.cli import main
    path = tmp_path / "pipe.mlmodel"
    spec = pipeline_of(custom_stage("Double", "x", "y"), custom_stage("Negate", "y", "z"))
    path.write_bytes(spec.SerializeToString())
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("pipe.mlmodel: pipeline of 2 stages")
    assert "missing implementations (all stages): Double, Negate" in out


# ---------------------------------------------------------------- stages the runtime does not run, broken pipelines

def foreign_stage(kind):
    from coremltools.proto import Model_pb2
    spec = Model_pb2.Model()
    spec.specificationVersion = 4
    spec.description.input.add().CopyFrom(dense_stage().description.output[0])     # reads 'h'
    out = spec.description.output.add()
    out.name = "z"
    out.type.doubleType.SetInParent()
    getattr(spec, kind).SetInParent()
    return spec


@pytest.mark.parametrize("kind", ["treeEnsembleRegressor", "featureVectorizer", "mlProgram", "glmRegressor"])
def test_unsupported_stage_names_index_type_and_pipeline(tmp_path, kind):
    spec = pipeline_of(dense_stage(), foreign_stage(kind), inputs=[("x", datatypes.Array(4))],
                       outputs=[("z", datatypes.Double())])
    path = tmp_path / "mixed.mlmodel"
    path.write_bytes(spec.SerializeToString())
    with pytest.raises(wb.UnsupportedLayerError,
                       match=rf"mixed.mlmodel: pipeline stage 1 \('model1'\) is a '{kind}' model"):
        wb.load(path)


def test_stage_reading_an_unknown_feature():
    spec = pipeline_of(custom_stage("Double", "x", "y"), custom_stage("Negate", "ghost", "z"))
    with pytest.raises(wb.ModelFormatError, match=r"stage 1 \('model1'\) reads feature 'ghost', which neither"):
        wb.load(spec)


def test_pipeline_output_no_stage_produces():
    spec = pipeline_of(custom_stage("Double", "x", "y"), outputs=[("nowhere", datatypes.Array(2, 3))])
    with pytest.raises(wb.ModelFormatError, match="nowhere are produced by no pipeline stage"):
        wb.load(spec)


def test_duplicate_stage_names_and_empty_pipelines():
    spec = pipeline_of(custom_stage("Double", "x", "y"), custom_stage("Negate", "y", "z"), names=["a", "a"])
    with pytest.raises(wb.ModelFormatError, match="two pipeline stages are named 'a'"):
        wb.load(spec)
    with pytest.raises(wb.ModelFormatError, match="the pipeline has no models"):
        empty = pipeline_of()
        empty.pipeline.SetInParent()
        wb.load(empty)


def test_pipeline_inputs_are_checked():
    model = wb.load(pipeline_of(custom_stage("Double", "x", "y"), custom_stage("Negate", "y", "z")),
                    layers=[Double, Negate])
    with pytest.raises(wb.InputError, match="missing input 'x'"):
        model.predict({})
    with pytest.raises(wb.InputError, match=r"unknown input\(s\) y; the pipeline's inputs are x"):
        model.predict({"x": C, "y": C})
    with pytest.raises(wb.InputError, match=r"stage 0 'model0': input 'x' has shape \(6,\)"):
        model.predict({"x": C.ravel()})


# ---------------------------------------------------------------- updatable models

def updatable_builder():
    w1, w2 = RNG.uniform(-0.5, 0.5, (3, 3)), RNG.uniform(-0.5, 0.5, (3, 3))
    bld = NeuralNetworkBuilder([("input", datatypes.Array(3))], [("output", None)])     # as coremltools' own tests
    bld.add_inner_product("ip1", w1, None, 3, 3, False, "input", "hidden")
    bld.add_inner_product("ip2", w2, None, 3, 3, False, "hidden", "output")
    bld.make_updatable(["ip1", "ip2"])
    bld.add_softmax("softmax", "output", "probs")          # the loss layer must read a (classic) softmax
    bld.set_categorical_cross_entropy_loss(name="cross_entropy", input="probs")
    bld.set_sgd_optimizer(SgdParams(lr=1e-2, batch=10, momentum=0.0))
    bld.set_epochs(20, allowed_set=[10, 20, 30])
    return bld, w1, w2


def test_updatable_model_predicts_and_ignores_training_parameters():
    bld, w1, w2 = updatable_builder()
    spec = bld.spec
    assert spec.isUpdatable and spec.neuralNetwork.layers[0].innerProduct.weights.isUpdatable
    loss = spec.neuralNetwork.updateParams.lossLayers[0]
    assert loss.WhichOneof("LossLayerType") == "categoricalCrossEntropyLossLayer"
    assert [f.name for f in spec.description.trainingInput] == ["input", "probs_true"]
    x = np.array([0.5, -1.0, 2.0], np.float32)
    got = wb.load(spec).predict({"input": x})                 # no training input needed
    np.testing.assert_allclose(got["output"].ravel(), w2 @ (w1 @ x), rtol=1e-5)


def test_updatable_pipeline_classifier():
    """An updatable classifier as the last stage, the pipeline marked updatable (as coremltools requires)."""
    labels = ["a", "b", "c"]
    w1, w2 = RNG.uniform(-0.5, 0.5, (3, 3)), RNG.uniform(-0.5, 0.5, (3, 3))
    head = NeuralNetworkBuilder([("h", datatypes.Array(3))], [("probs", None)], mode="classifier")
    head.add_inner_product("ip1", w1, None, 3, 3, False, "h", "hidden")
    head.add_inner_product("ip2", w2, None, 3, 3, False, "hidden", "logits")
    head.add_softmax("softmax", "logits", "probs")
    head.set_class_labels(labels, predicted_feature_name="label", prediction_blob="probs")
    head.make_updatable(["ip1", "ip2"])
    head.set_categorical_cross_entropy_loss(name="cross_entropy", input="probs")
    head.set_sgd_optimizer(SgdParams(lr=1e-2, batch=10, momentum=0.0))
    head.set_epochs(5)
    p = PipelineClassifier([("x", datatypes.Array(4))], labels, output_features=["label", "probs"])
    p.add_model(dense_stage())
    p.add_model(head.spec)
    p.make_updatable()
    assert p.spec.isUpdatable
    got = wb.load(p.spec).predict({"x": X})
    want = softmax(w2 @ (w1 @ (W @ X + B)))
    assert got["label"] == labels[int(np.argmax(want))]
    np.testing.assert_allclose([got["probs"][k] for k in labels], want, rtol=1e-5)


def test_a_dropped_pipeline_is_freed_at_once(converted_pipeline):
    """As for models: no reference cycle keeps a pipeline's stages (and weights) alive."""
    import gc
    import weakref
    gc.disable()
    try:
        model = wb.load(converted_pipeline[0])
        model.predict({"x": np.ones((1, 3, 8, 8), np.float32)})
        ref = weakref.ref(model)
        del model
        assert ref() is None
    finally:
        gc.enable()
