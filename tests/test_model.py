"""wb.load's sources and its errors; predict's and trace's contract."""
import numpy as np
import pytest

import workbench as wb
from support import Double, Negate, corpus, custom_only_model


X = np.arange(6, dtype=np.float32).reshape(2, 3)


@pytest.mark.parametrize("form", ["path", "bytes", "spec", "mlmodel"])
def test_load_from_every_source_form(tmp_path, form):
    import coremltools as ct
    spec = custom_only_model(["Double", "Negate"])
    path = tmp_path / "m.mlmodel"
    path.write_bytes(spec.SerializeToString())
    source = {"path": str(path), "bytes": path.read_bytes(), "spec": spec,
              "mlmodel": ct.models.MLModel(spec, skip_model_load=True)}[form]
    model = wb.load(source, layers=[Double, Negate])
    np.testing.assert_array_equal(model.predict({"x": X})["y"], -2 * X)


def test_trace_has_every_intermediate():
    model = wb.load(custom_only_model(["Double", "Negate"]), layers={"Double": Double, "Negate": Negate})
    blobs = model.trace({"x": X})
    assert set(blobs) == {"x", "t0", "y"}
    np.testing.assert_array_equal(blobs["t0"], 2 * X)


def test_missing_implementations_load_and_predict_names_them():
    model = wb.load(custom_only_model(["Double", "Negate", "Mystery"]), layers=[Double])
    assert [r.class_name for r in model.custom_layers] == ["Double", "Negate", "Mystery"]
    assert model.custom_layers[1].implementation is None
    with pytest.raises(wb.MissingImplementationError, match="Mystery, Negate"):
        model.predict({"x": X})


def test_class_name_is_never_imported():
    spec = custom_only_model(["os.system"])
    model = wb.load(spec)
    assert model.missing_implementations() == ["os.system"]
    with pytest.raises(wb.MissingImplementationError, match="os.system"):
        model.predict({"x": X})


def test_not_protobuf(tmp_path):
    path = tmp_path / "bad.mlmodel"
    path.write_bytes(b"\xff\xfe this is not a model at all \x00\x01")
    with pytest.raises(wb.ModelFormatError, match=r"bad.mlmodel: not a Core ML model"):
        wb.load(path)


def test_truncated_file(tmp_path):
    data = custom_only_model(["Double"], weights=[np.arange(100)]).SerializeToString()
    path = tmp_path / "cut.mlmodel"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(wb.ModelFormatError, match=r"cut.mlmodel: not a Core ML model.*truncated"):
        wb.load(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.mlmodel").write_bytes(b"")
    with pytest.raises(wb.ModelFormatError, match="empty.mlmodel: the file is empty"):
        wb.load(tmp_path / "empty.mlmodel")
    with pytest.raises(wb.ModelFormatError, match="cannot read the model file"):
        wb.load(tmp_path / "absent.mlmodel")


def test_not_a_neural_network():
    from coremltools.proto import Model_pb2
    spec = Model_pb2.Model()
    spec.specificationVersion = 1
    spec.treeEnsembleRegressor.SetInParent()
    with pytest.raises(wb.WorkbenchError, match="type 'treeEnsembleRegressor'; this runtime runs neural networks"):
        wb.load(spec)


def test_layer_reading_a_blob_nothing_produces():
    spec = custom_only_model(["Double", "Negate"])
    spec.neuralNetwork.layers[1].input[0] = "ghost"
    with pytest.raises(wb.ModelFormatError, match="layer 'layer1' .* reads blob 'ghost', which no model input"):
        wb.load(spec)


def test_output_produced_by_no_layer():
    spec = custom_only_model(["Double"])
    spec.description.output[0].name = "nowhere"
    with pytest.raises(wb.ModelFormatError, match="nowhere are produced by no layer"):
        wb.load(spec)


def test_inputs_are_checked():
    model = wb.load(custom_only_model(["Double"]), layers=Double)
    with pytest.raises(wb.InputError, match="missing input 'x'"):
        model.predict({})
    with pytest.raises(wb.InputError, match="unknown input"):
        model.predict({"x": X, "typo": X})
    with pytest.raises(wb.InputError, match=r"has shape \(4,\); the model allows \(2, 3\)"):
        model.predict({"x": np.zeros(4, np.float32)})


def test_summary_lists_custom_layers_and_missing():
    model = wb.load(custom_only_model(["Double", "Mystery"], parameters={"beta": 0.5}), layers=Double)
    text = model.summary()
    assert "className Double" in text and "parameter beta = 0.5 (doubleValue)" in text
    assert "missing implementations: Mystery" in text
    assert repr(model) == "<workbench.Model '<spec>': neuralNetwork, spec 4, 2 layers, custom: Double, Mystery>"


def test_corpus_swish_model_loads_without_implementation():
    model = wb.load(corpus("hollance_NeuralMcNeuralNet.mlmodel"))
    (record,) = model.custom_layers
    assert record.class_name == "Swish" and record.parameters == {"beta": pytest.approx(0.01)}
    assert record.implementation is None


def test_callers_arrays_and_weights_survive_a_layer_that_forces_them_writable():
    class Vandal(wb.CustomLayer):
        def set_weight_data(self, weights):
            self.w = weights[0]

        def evaluate(self, inputs, outputs):
            for arr in (inputs[0], self.w):
                base = arr.base if arr.base is not None else arr
                try:
                    base.flags.writeable = True
                    base[...] = -99.0
                except ValueError:
                    pass
            outputs[0][...] = inputs[0]

    x = X.copy()
    model = wb.load(custom_only_model(["Vandal"], weights=[[1, 2, 3]]), layers=Vandal)
    model.predict({"x": x})
    np.testing.assert_array_equal(x, X)                       # the caller's array is untouched
    assert model.custom_layers[0].weights[0].tolist() == [1, 2, 3]


def test_unwritten_output_elements_are_nan():
    class Lazy(wb.CustomLayer):
        def evaluate(self, inputs, outputs):
            outputs[0][0] = inputs[0][0]

    y = wb.load(custom_only_model(["Lazy"]), layers=Lazy).predict({"x": X})["y"]
    np.testing.assert_array_equal(y[0], X[0])
    assert np.isnan(y[1]).all()


def test_custom_layer_outputs_are_preallocated_and_refilled_with_nan():
    """As in Core ML, predict hands evaluate the same output arrays every time (allocated once
    output_shapes answered); an element this call does not write is NaN, not last call's value."""
    class Shrinking(wb.CustomLayer):
        handed, calls = [], 0

        def evaluate(self, inputs, outputs):
            Shrinking.handed.append(outputs[0])
            Shrinking.calls += 1
            outputs[0][:len(inputs[0]) // Shrinking.calls] = inputs[0][:len(inputs[0]) // Shrinking.calls]

    model = wb.load(custom_only_model(["Shrinking"]), layers=Shrinking)
    first = model.predict({"x": X})["y"]
    second = model.predict({"x": X})["y"]
    assert Shrinking.handed[0] is Shrinking.handed[1]
    np.testing.assert_array_equal(first, X)                   # answers are copies: the first survives
    half = len(X) // 2
    np.testing.assert_array_equal(second[:half], X[:half])
    assert np.isnan(second[half:]).all()
    model.trace({"x": X})                                     # trace's blobs are its own
    assert Shrinking.handed[2] is not Shrinking.handed[1]


def test_a_layer_that_makes_its_output_read_only_gets_a_new_one_next_time():
    class Freezer(wb.CustomLayer):
        def evaluate(self, inputs, outputs):
            outputs[0][...] = inputs[0]
            outputs[0].flags.writeable = False

    model = wb.load(custom_only_model(["Freezer"]), layers=Freezer)
    for _ in range(3):
        np.testing.assert_array_equal(model.predict({"x": X})["y"], X)


def test_user_line_skips_library_frames():
    class Reshaper(wb.CustomLayer):
        def evaluate(self, inputs, outputs):
            outputs[0][...] = np.reshape(inputs[0], (7, 7))      # numpy raises inside its own code

    with pytest.raises(wb.LayerError, match=r"test_model.py:\d+\)"):
        wb.load(custom_only_model(["Reshaper"]), layers=Reshaper).predict({"x": X})


def test_float16_grayscale_images_keep_their_values():
    from PIL import Image
    spec = custom_only_model(["Double"], input_shape=(1, 2, 2))
    for feature in (spec.description.input[0], spec.description.output[0]):
        feature.type.imageType.width = feature.type.imageType.height = 2
        feature.type.imageType.colorSpace = 40                      # GRAYSCALE_FLOAT16
    image = Image.fromarray(np.array([[0.25, 0.5], [1.5, -2.0]], np.float32), mode="F")
    out = wb.load(spec, layers=Double).predict({"x": image})["y"]
    assert out.mode == "F"
    np.testing.assert_array_equal(np.asarray(out), [[0.5, 1.0], [3.0, -4.0]])


def test_a_custom_layer_reading_an_absent_optional_input_is_named():
    spec = custom_only_model(["Double"])
    spec.description.input[0].type.isOptional = True
    with pytest.raises(wb.LayerError, match=r"'Double'.*input blob\(s\) x have no value"):
        wb.load(spec, layers=Double).predict({})


def test_two_preprocessing_entries_for_one_image_are_refused():
    spec = wb.load(corpus("hollance_NeuralMcNeuralNet.mlmodel")).spec
    spec.neuralNetwork.preprocessing.add().CopyFrom(spec.neuralNetwork.preprocessing[0])
    with pytest.raises(wb.ModelFormatError, match="image input 'image' has two preprocessing entries"):
        wb.load(spec)


def test_a_dropped_model_is_freed_at_once():
    """No reference cycles between a model and its plan: its weights go when the last reference
    does, not at the next cyclic garbage collection (reloading a large model in a loop)."""
    import gc
    import weakref
    from workbench import examples
    gc.disable()
    try:
        model = wb.load(examples.example_path(), layers=examples.example_layers_dir())
        model.predict(examples.example_cases()[0][1])
        ref = weakref.ref(model)
        del model
        assert ref() is None
    finally:
        gc.enable()


class ChannelCheck(wb.CustomLayer):
    """A layer whose output_shapes insists on 2 channels on axis -3, as real layers check."""

    def __init__(self, parameters):
        self.seen = []

    def set_weight_data(self, weights):
        pass

    def output_shapes(self, input_shapes):
        self.seen.append(tuple(input_shapes[0]))
        if len(input_shapes[0]) < 3 or input_shapes[0][-3] != 2:
            raise ValueError(f"input shape {input_shapes[0]} must have 2 channels on axis -3")
        return [tuple(input_shapes[0])]

    def evaluate(self, inputs, outputs):
        outputs[0][...] = inputs[0] * 2


@pytest.mark.parametrize("arithmetic", ["concatND", "addBroadcastable"])
def test_load_time_shapes_follow_shape_arithmetic(arithmetic):
    """getShape -> (concatND | addBroadcastable) -> fillDynamic -> custom layer: the shape vector is
    a value that decides a shape downstream, so the load-time pass computes it (it is tiny) and the
    custom layer's output_shapes sees the true shape at load, as Core ML would call it."""
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    from coremltools.proto import NeuralNetwork_pb2
    b = NeuralNetworkBuilder([("x", datatypes.Array(2, 3))], [("y", None)], disable_rank5_shape_mapping=True)
    b.add_get_shape("shape", "x", "s")                                                 # [2, 3]
    if arithmetic == "concatND":
        b.add_load_constant_nd("four", "c", np.array([4.0], np.float32), shape=[1])
        b.add_concat_nd("shape_math", ["s", "c"], "shp", axis=0)                       # [2, 3, 4]
        expected = (2, 3, 4)
    else:
        b.add_load_constant_nd("ones", "c", np.array([0.0, 1.0], np.float32), shape=[2])
        b.add_add_broadcastable("shape_math", ["s", "c"], "s2")                        # [2, 4]
        b.add_load_constant_nd("five", "c5", np.array([5.0], np.float32), shape=[1])
        b.add_concat_nd("cat", ["s2", "c5"], "shp", axis=0)                            # [2, 4, 5]
        expected = (2, 4, 5)
    b.add_fill_dynamic("fill", "shp", "f", value=1.0)
    params = NeuralNetwork_pb2.CustomLayerParams()
    params.className = "ChannelCheck"
    b.add_custom(name="custom", input_names=["f"], output_names=["y"], custom_proto_spec=params)
    model = wb.load(b.spec, layers=[ChannelCheck])
    assert model.custom_layers[0].instance.seen == [expected]
    assert model.blob_shapes["f"] == expected
    assert model.predict({"x": np.zeros((2, 3), np.float32)})["y"].shape == expected


# ---------------------------------------------------------------- arrays reused across predictions

def _reusing_model():
    """conv (im2col, padded) -> clip -> add, and a 1x1 conv; outputs are a blob itself ('clipped'),
    a reshape view of one ('flat') and a depthwise result ('dw')."""
    import torch
    import torch.nn.functional as F
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    rng = np.random.default_rng(5)
    w3 = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    w1 = rng.standard_normal((6, 6, 1, 1)).astype(np.float32)
    wd = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    b = NeuralNetworkBuilder([("x", datatypes.Array(4, 9, 9))], [("clipped", None), ("flat", None), ("dw", None)])

    def conv(name, w, src, groups, pad):
        b.add_convolution(name, kernel_channels=w.shape[1], output_channels=6, height=w.shape[2],
                          width=w.shape[3], stride_height=1, stride_width=1, border_mode="valid",
                          groups=groups, W=w.transpose(2, 3, 1, 0), b=None, has_bias=False,
                          input_name=src, output_name=name, padding_top=pad, padding_bottom=pad,
                          padding_left=pad, padding_right=pad)
    conv("c3", w3, "x", 1, 1)
    b.add_clip("clip", "c3", "clipped", min_value=-1.0, max_value=2.0)
    conv("c1", w1, "clipped", 1, 0)
    b.add_elementwise("sum", ["c1", "clipped"], "sum", mode="ADD")
    conv("dw", wd, "sum", 6, 1)
    b.add_flatten("flat", 0, "sum", "flat")
    for output in b.spec.description.output:        # float32: the answer could be the blob itself
        output.type.multiArrayType.dataType = output.type.multiArrayType.FLOAT32

    def reference(x):
        t = torch.from_numpy(x)[None]
        clipped = F.conv2d(t, torch.from_numpy(w3), padding=1).clamp(-1, 2)
        total = F.conv2d(clipped, torch.from_numpy(w1)) + clipped
        dw = F.conv2d(total, torch.from_numpy(wd), padding=1, groups=6)
        return {"clipped": clipped[0].numpy(), "flat": total.reshape(-1).numpy(), "dw": dw[0].numpy()}
    return wb.load(b.spec), reference


def test_answers_survive_later_predictions():
    model, reference = _reusing_model()
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((4, 9, 9)).astype(np.float32) for _ in range(3)]
    answers = [model.predict({"x": x}) for x in xs]            # each later run reuses the arrays
    for x, got in zip(xs, answers):
        want = reference(x)
        for name in want:
            np.testing.assert_allclose(got[name].reshape(want[name].shape), want[name], rtol=1e-5, atol=1e-5)


def test_trace_blobs_are_never_reused():
    model, _ = _reusing_model()
    rng = np.random.default_rng(7)
    first = model.trace({"x": rng.standard_normal((4, 9, 9)).astype(np.float32)})
    kept = {name: value.copy() for name, value in first.items()}
    model.predict({"x": rng.standard_normal((4, 9, 9)).astype(np.float32)})
    model.trace({"x": rng.standard_normal((4, 9, 9)).astype(np.float32)})
    for name, value in kept.items():
        np.testing.assert_array_equal(first[name], value)


def test_concurrent_predictions_agree_with_sequential_ones():
    import threading
    model, reference = _reusing_model()
    rng = np.random.default_rng(8)
    xs = [rng.standard_normal((4, 9, 9)).astype(np.float32) for _ in range(8)]
    results = [None] * len(xs)

    def work(i):
        for _ in range(5):
            results[i] = model.predict({"x": xs[i]})
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, got in zip(xs, results):
        np.testing.assert_allclose(got["dw"], reference(x)["dw"], rtol=1e-5, atol=1e-5)


def test_reused_arrays_follow_a_flexible_input_from_size_to_size():
    """SAME padding makes a 10-wide input pad (0, 1) and a 9-wide one (1, 1): the same padded
    size, different borders. A reused padded array must not keep the previous call's border."""
    import torch
    import torch.nn.functional as F
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    from coremltools.models.neural_network import flexible_shape_utils as fsu
    rng = np.random.default_rng(9)
    w = rng.standard_normal((3, 3, 3, 3)).astype(np.float32)
    wd = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    b = NeuralNetworkBuilder([("x", datatypes.Array(3, 10, 10))], [("y", None)])
    for name, weights, src, groups in (("conv", w, "x", 1), ("y", wd, "conv", 3)):
        b.add_convolution(name, kernel_channels=weights.shape[1], output_channels=3, height=3, width=3,
                          stride_height=2, stride_width=2, border_mode="same", groups=groups,
                          W=weights.transpose(2, 3, 1, 0), b=None, has_bias=False, input_name=src,
                          output_name=name)
    r = fsu.NeuralNetworkMultiArrayShapeRange()
    r.add_channel_range((3, 3))
    r.add_height_range((9, 10))
    r.add_width_range((9, 10))
    fsu.update_multiarray_shape_range(b.spec, "x", r)
    model = wb.load(b.spec)

    def same(t, weights, groups):             # bottom/right-heavy SAME padding, stride 2
        total = max(0, (-(-t.shape[-1] // 2) - 1) * 2 + 3 - t.shape[-1])
        return F.conv2d(F.pad(t, (total // 2, total - total // 2) * 2), torch.from_numpy(weights),
                        stride=2, groups=groups)
    for size in (10, 9, 10, 9):
        x = rng.standard_normal((3, size, size)).astype(np.float32)
        want = same(same(torch.from_numpy(x)[None], w, 1), wd, 3)[0].numpy()
        got = model.predict({"x": x})["y"]
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5)


def test_check_and_custom_layers_calling_back_leave_a_prediction_intact():
    """Model.check steps through the network under the model's run lock, and a custom layer
    that predicts with its own model gets fresh arrays: the outer prediction's blobs survive."""
    import threading
    model, reference = _reusing_model()
    x = np.random.default_rng(10).standard_normal((4, 9, 9)).astype(np.float32)
    want = reference(x)["dw"]
    stop, bad = threading.Event(), []

    def predicting():
        while not stop.is_set():
            got = model.predict({"x": x})["dw"]
            if not np.allclose(got, want, rtol=1e-5, atol=1e-5):
                bad.append(got)
    worker = threading.Thread(target=predicting)
    worker.start()
    try:
        for _ in range(20):
            model.check({"x": np.zeros((4, 9, 9), np.float32)})
    finally:
        stop.set()
        worker.join()
    assert not bad


def test_shallow_copies_predicting_at_once_agree_with_torch():
    """copy.copy shares the network and its reused buffers, so it shares the run lock too:
    the original and the copy predicting from two threads never overwrite each other's."""
    import copy
    import threading
    model, reference = _reusing_model()
    twin = copy.copy(model)
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal((4, 9, 9)).astype(np.float32) for _ in range(2)]
    wrong = []

    def work(m, x):
        want = reference(x)["dw"]
        for _ in range(40):
            got = m.predict({"x": x})["dw"]
            if not np.allclose(got, want, rtol=1e-5, atol=1e-5):
                wrong.append(float(np.abs(got - want).max()))
    threads = [threading.Thread(target=work, args=(m, x)) for m, x in ((model, xs[0]), (twin, xs[1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_a_model_loaded_from_a_file_can_be_deep_copied(tmp_path):
    """Kernels with compiled loops (LSTM, GELU, tanh) keep no module object, which deepcopy
    cannot copy; the copy has its own network and run state, and both predict as torch does."""
    import copy
    import torch
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4)
    w_ih, w_hh = lstm.weight_ih_l0.detach().numpy(), lstm.weight_hh_l0.detach().numpy()
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy()
    gates = lambda m: [m[k * 4:(k + 1) * 4] for k in (0, 1, 3, 2)]    # torch i f g o -> Core ML i f o z
    b = NeuralNetworkBuilder([("x", datatypes.Array(3))], [("y", None)])
    b.add_unilstm("lstm", gates(w_hh), gates(w_ih), gates(bias), hidden_size=4, input_size=3,
                  input_names=["x"], output_names=["h", "h_out", "c_out"], output_all=True)
    b.add_gelu("gelu", "h", "g", mode="EXACT")
    b.add_activation("tanh", "TANH", "g", "y")
    path = tmp_path / "lstm_gelu.mlmodel"
    path.write_bytes(b.spec.SerializeToString())
    model = wb.load(path)
    twin = copy.deepcopy(model)
    assert twin.network is not model.network and twin.state is not model.state
    x = np.random.default_rng(10).standard_normal((5, 1, 3, 1, 1)).astype(np.float32)
    with torch.no_grad():
        h, _ = lstm(torch.from_numpy(x.reshape(5, 1, 3)))
        want = torch.tanh(torch.nn.functional.gelu(h)).numpy()
    for m in (twin, model):
        got = m.predict({"x": x})["y"]
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-6)


def test_a_model_can_be_copied():
    import copy
    model, reference = _reusing_model()
    x = np.ones((4, 9, 9), np.float32)
    model.predict({"x": x})
    twin = copy.deepcopy(model)
    np.testing.assert_allclose(twin.predict({"x": x})["dw"], reference(x)["dw"], rtol=1e-5, atol=1e-5)
