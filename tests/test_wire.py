"""Loading from a file's bytes: weights cut from the protobuf and read as views (runtime/_wire.py).

The reference is protobuf's own parse of the whole file: the structure must be that parse with
the weight fields left out, every WeightParams must decode to the same values from its cut
payload, and a model loaded from bytes must predict bit for bit as one loaded from its spec.
Encodings the split does not handle must fall back to protobuf's parse, with its semantics.
"""
import contextlib
import gc
import io
import weakref

import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor

import workbench as wb
from support import custom_only_model, Double
from workbench.runtime import _proto, _wire
from workbench.runtime import spec as specmod

Model = _proto.Model_pb2.Model
NN = _proto.NeuralNetwork_pb2
RNG = np.random.default_rng(0)


def _values(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def conv_net(batchnorm=True):
    """conv (weights, bias) -> batchnorm -> relu -> innerProduct, rank-5 mapping. coremltools'
    quantize_weights fails on its batchnorm (a numpy array where it wants floats): quantized
    variants leave it out."""
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    b = NeuralNetworkBuilder([("x", datatypes.Array(3, 8, 8))], [("y", None)])
    b.add_convolution("conv", kernel_channels=3, output_channels=5, height=3, width=3, stride_height=1,
                      stride_width=1, border_mode="same", groups=1, W=_values(3, 3, 3, 5), b=_values(5),
                      has_bias=True, input_name="x", output_name="c")
    if batchnorm:
        b.add_batchnorm("bn", 5, gamma=_values(5), beta=_values(5), mean=_values(5),
                        variance=np.abs(_values(5)) + 0.5, input_name="c", output_name="n")
    b.add_activation("relu", "RELU", "n" if batchnorm else "c", "r")
    b.add_flatten("flat", 0, "r", "f")
    b.add_inner_product("fc", W=_values(7, 5 * 8 * 8), b=_values(7), input_channels=5 * 8 * 8,
                        output_channels=7, has_bias=True, input_name="f", output_name="y")
    return b.spec


def lstm_net():
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    h, c = 6, 4
    b = NeuralNetworkBuilder([("x", datatypes.Array(c))], [("y", None)])
    b.add_unilstm("lstm", W_h=[_values(h, h) for _ in range(4)], W_x=[_values(h, c) for _ in range(4)],
                  b=[_values(h) for _ in range(4)], hidden_size=h, input_size=c, input_names=["x"],
                  output_names=["y", "h", "c"])
    return b.spec


def quantized(spec, mode, nbits):
    import coremltools as ct
    from coremltools.models.neural_network import quantization_utils
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model = ct.models.MLModel(spec, skip_model_load=True)
        if mode == "float16":
            return quantization_utils.quantize_weights(model, 16).get_spec()
        return quantization_utils.quantize_weights(model, nbits, mode).get_spec()


def loop_net():
    """A loop whose body holds an innerProduct: weights two networks deep."""
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    b = NeuralNetworkBuilder([("x", datatypes.Array(4))], [("y", None)], disable_rank5_shape_mapping=True)
    b.add_copy("init", "x", "y")
    loop = b.add_loop("loop", max_iterations=3)
    body = NeuralNetworkBuilder(nn_spec=loop.loop.bodyNetwork, disable_rank5_shape_mapping=True)
    body.add_inner_product("step", W=_values(4, 4) * 0.3, b=_values(4), input_channels=4, output_channels=4,
                           has_bias=True, input_name="y", output_name="z")
    body.add_copy("carry", "z", "y")
    return b.spec


def pipeline_of(*stages, kind="pipeline"):
    spec = Model()
    spec.specificationVersion = max(s.specificationVersion for s in stages)
    spec.description.input.extend(stages[0].description.input)
    spec.description.output.extend(stages[-1].description.output)
    pipe = spec.pipeline if kind == "pipeline" else getattr(spec, kind).pipeline
    for stage in stages:
        pipe.models.add().CopyFrom(stage)
    return spec


MODELS = {
    "conv net": conv_net,
    "lstm": lstm_net,
    "loop": loop_net,
    "custom layer weights": lambda: custom_only_model(["Double"], weights=[_values(3), _values(2, 2)]),
    "linear 4-bit": lambda: quantized(conv_net(batchnorm=False), "linear", 4),
    "lookup table 2-bit": lambda: quantized(conv_net(batchnorm=False), "linear_lut", 2),
    "linear 8-bit": lambda: quantized(conv_net(batchnorm=False), "linear", 8),
    "float16": lambda: quantized(conv_net(batchnorm=False), "float16", 16),
    "pipeline": lambda: pipeline_of(conv_net(), conv_net()),
    "pipeline regressor": lambda: pipeline_of(conv_net(), kind="pipelineRegressor"),
    "pipeline classifier": lambda: pipeline_of(conv_net(), kind="pipelineClassifier"),
}


def weight_params(message):
    """Every WeightParams in a message, depth first in field order (the same walk for a whole spec
    and for its structure, which keeps every message)."""
    if message.DESCRIPTOR.full_name == "CoreML.Specification.WeightParams":
        yield message
        return
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if field.message_type.GetOptions().map_entry:
            values = value.values()
            if field.message_type.fields_by_name["value"].type != FieldDescriptor.TYPE_MESSAGE:
                continue
        else:
            values = value if repeated else [value]
        for v in values:
            yield from weight_params(v)


def split(spec):
    data = np.frombuffer(spec.SerializeToString(), np.uint8)
    result = _wire.split_weights(data, Model.DESCRIPTOR)
    assert result is not None, "the split fell back on a file coremltools wrote"
    structure, table = result
    return data, Model.FromString(structure), _wire.Payloads(data, table)


@pytest.mark.parametrize("name", MODELS)
def test_the_structure_is_protobufs_parse_without_the_weight_fields(name):
    spec = MODELS[name]()
    data, structure, payloads = split(spec)
    assert len(structure.SerializeToString()) < len(data)
    whole = Model.FromString(spec.SerializeToString())
    for w in weight_params(whole):
        for field in _wire.CUT_FIELDS.values():
            w.ClearField(field)
    structure.DiscardUnknownFields()
    assert structure == whole


@pytest.mark.parametrize("name", MODELS)
def test_every_weight_decodes_from_its_payload_as_from_the_whole_parse(name):
    spec = MODELS[name]()
    data, structure, payloads = split(spec)
    whole = list(weight_params(Model.FromString(spec.SerializeToString())))
    cut = list(weight_params(structure))
    assert len(whole) == len(cut) and len(payloads.table) > 0
    stored = {"linear 4-bit": 30, "lookup table 2-bit": 30, "linear 8-bit": 30, "float16": 2}.get(name, 1)
    assert stored in {number for number, _, _ in payloads.table}
    for i, (w, c) in enumerate(zip(whole, cut)):
        # the stored values themselves, field by field (raw codes need a layer's count to decode)
        for field, expected, got in zip(specmod._STORAGE, specmod._storage(w, None), specmod._storage(c, payloads)):
            if field == "floatValue":
                got_floats = np.asarray(got, np.float32)
                np.testing.assert_array_equal(got_floats, np.asarray(expected, np.float32))
                assert len(got) == 0 or (got.flags.aligned and not got.flags.writeable)
            else:
                assert bytes(got) == bytes(expected), f"weights {i} {field}"
        assert specmod.has_weights(c, payloads) == specmod.has_weights(w)


@pytest.mark.parametrize("name", ["conv net", "lstm", "loop", "linear 4-bit", "lookup table 2-bit", "float16"])
def test_a_model_loaded_from_bytes_predicts_bit_for_bit_as_from_its_spec(name):
    spec = MODELS[name]()
    from_spec, from_bytes = wb.load(spec), wb.load(spec.SerializeToString())
    assert from_spec._payloads is None and from_bytes._payloads is not None
    shape = tuple(specmod.array_shape(spec.description.input[0]))
    x = {spec.description.input[0].name: RNG.standard_normal(shape).astype(np.float32)}
    expected, got = from_spec.predict(x), from_bytes.predict(x)
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_custom_layer_weights_come_from_the_payloads():
    weights = [_values(3), _values(2, 2)]
    model = wb.load(custom_only_model(["Double"], weights=weights).SerializeToString(), layers=[Double])
    assert model._payloads is not None
    got = model.custom_layers[0].weights
    assert [w.tolist() for w in got] == [w.ravel().tolist() for w in weights]


def test_predict_never_parses_the_whole_spec_and_spec_gives_it_whole(tmp_path):
    spec = conv_net()
    path = tmp_path / "net.mlmodel"
    path.write_bytes(spec.SerializeToString())
    model = wb.load(path)
    model.predict({"x": np.ones((3, 8, 8), np.float32)})
    model.trace({"x": np.ones((3, 8, 8), np.float32)})
    assert model._spec is None, "predict or trace parsed the whole file"
    assert model.spec == spec
    assert model.nn.layers[0].convolution.weights.floatValue == spec.neuralNetwork.layers[0].convolution.weights.floatValue


def test_a_pipelines_stages_give_their_whole_specs():
    spec = pipeline_of(conv_net(), conv_net())          # both stages read x and write y
    model = wb.load(spec.SerializeToString())
    x = {"x": np.ones((3, 8, 8), np.float32)}
    np.testing.assert_array_equal(model.predict(x)["y"], wb.load(spec).predict(x)["y"])
    assert model._spec is None and all(s.model._spec is None for s in model.stages)
    assert [s.model.spec for s in model.stages] == list(spec.pipeline.models)
    assert model.spec == spec


@pytest.mark.parametrize("name", MODELS)
def test_float_weights_are_aligned_views_of_the_file_buffer_which_still_gives_the_file(name):
    spec = MODELS[name]()
    file_bytes = spec.SerializeToString()
    data, structure, payloads = split(spec)
    floats = [i for i, (number, _, _) in enumerate(payloads.table) if number == 1]
    for w in weight_params(structure):
        values = payloads.find(w).get("floatValue")
        if values is not None:
            assert values.flags.aligned and not values.flags.writeable
            assert np.shares_memory(values, data)
    assert not payloads.copies                     # coremltools' layouts always leave room to move
    assert not data.flags.writeable
    assert payloads.original().tobytes() == file_bytes
    if name == "conv net":
        assert payloads.moved and set(payloads.moved) <= set(floats)


def test_a_payload_with_no_room_to_move_is_copied_aligned():
    """rawValue then floatValue in one WeightParams (odd, but valid protobuf): two header bytes
    between them, so floats 3 bytes off their boundary cannot move down and are copied."""
    copied = 0
    for pad in range(4):                             # the raw length decides the floats' alignment
        original = (NN.WeightParams(rawValue=bytes(range(5 + pad))).SerializeToString()
                    + _tag(1, 2) + _wire.varint_bytes(16) + FLOATS.tobytes())
        data = np.frombuffer(original, np.uint8).copy()
        structure, table = _wire.split_weights(data, NN.WeightParams.DESCRIPTOR)
        payloads = _wire.Payloads(data, table)
        found = payloads.find(NN.WeightParams.FromString(structure))
        assert bytes(found["rawValue"]) == bytes(range(5 + pad))
        np.testing.assert_array_equal(found["floatValue"], FLOATS)
        assert found["floatValue"].flags.aligned
        assert payloads.original().tobytes() == original
        copied += len(payloads.copies)
    assert copied == 1


@pytest.mark.parametrize("name", ["conv net", "lstm", "loop", "float16"])
def test_a_dropped_model_is_freed_at_once_with_its_file_buffer(name):
    """No reference cycle holds a model's kernels: weights are views of the file's buffer, so a
    cycle would keep the whole file in memory until the next cyclic garbage collection."""
    spec = MODELS[name]()
    model = wb.load(spec.SerializeToString())
    shape = tuple(specmod.array_shape(spec.description.input[0]))
    model.predict({spec.description.input[0].name: np.ones(shape, np.float32)})
    refs = weakref.ref(model), weakref.ref(model._payloads.data)
    gc.disable()
    try:
        del model
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


def test_the_scan_follows_every_message_type_that_can_hold_weights():
    """The scan's table, against the descriptors themselves: every message type reachable from
    Model that has a WeightParams field, or a field of a type that (transitively) has one."""
    tables = _wire._tables(Model.DESCRIPTOR)
    seen, pending, holders = set(), [Model.DESCRIPTOR], set()
    while pending:
        d = pending.pop()
        if d.full_name in seen:
            continue
        seen.add(d.full_name)
        for f in d.fields:
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                pending.append(f.message_type)
                if f.message_type.full_name == "CoreML.Specification.WeightParams":
                    holders.add(d.full_name)
    assert holders and holders <= set(tables)
    for name in ("pipeline", "pipelineClassifier", "pipelineRegressor", "neuralNetwork",
                 "neuralNetworkClassifier", "neuralNetworkRegressor"):
        assert Model.DESCRIPTOR.fields_by_name[name].number in tables["CoreML.Specification.Model"]


def _with_marker(weights, index=0):
    """A WeightParams carrying an unknown field numbered like the split's marker (valid protobuf)."""
    return NN.WeightParams.FromString(NN.WeightParams(floatValue=weights).SerializeToString()
                                      + _tag(_wire.MARKER, 0) + _wire.varint_bytes(index))


@pytest.mark.parametrize("kind", ["neuralNetwork", "pipelineRegressor"])
def test_a_file_that_already_holds_marker_fields_loads_as_protobuf_reads_it(kind):
    spec = conv_net(batchnorm=False)
    fc = spec.neuralNetwork.layers[-1].innerProduct
    fc.weights.CopyFrom(_with_marker(list(fc.weights.floatValue)))
    if kind != "neuralNetwork":
        spec = pipeline_of(spec, kind=kind)
    data = spec.SerializeToString()
    assert _wire.split_weights(np.frombuffer(data, np.uint8).copy(), Model.DESCRIPTOR) is None
    x = {"x": RNG.standard_normal((3, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(wb.load(data).predict(x)["y"], wb.load(spec).predict(x)["y"])


def test_weights_of_a_model_loaded_from_a_path_cannot_be_made_writable(tmp_path):
    path = tmp_path / "net.mlmodel"
    path.write_bytes(conv_net().SerializeToString())
    model = wb.load(path)
    kernel = next(s.kernel for s in model.network.steps if s.kind == "innerProduct")
    with pytest.raises(ValueError):
        kernel.w.flags.writeable = True
    assert model._payloads.data.flags.owndata


def test_a_model_loads_from_a_non_contiguous_memoryview():
    data = conv_net().SerializeToString()
    spread = bytes(b for byte in data for b in (byte, 0))
    view = memoryview(spread)[::2]
    assert not view.c_contiguous and view.tobytes() == data
    x = {"x": np.ones((3, 8, 8), np.float32)}
    np.testing.assert_array_equal(wb.load(view).predict(x)["y"], wb.load(data).predict(x)["y"])


# ---------------------------------------------------------------- encodings left to protobuf

def _tag(number, wire):
    return _wire.varint_bytes(number << 3 | wire)


def _inner_product(weights_field_bytes):
    """Serialized InnerProductLayerParams (2 -> 2) whose weights field holds the given bytes."""
    p = NN.InnerProductLayerParams(inputChannels=2, outputChannels=2)
    number = NN.InnerProductLayerParams.DESCRIPTOR.fields_by_name["weights"].number
    return p.SerializeToString() + _tag(number, 2) + _wire.varint_bytes(len(weights_field_bytes)) + weights_field_bytes


def _split(data, message=NN.InnerProductLayerParams):
    return _wire.split_weights(np.frombuffer(data, np.uint8), message.DESCRIPTOR)


FLOATS = np.arange(4, dtype="<f4")


def test_packed_floats_are_cut():
    data = _inner_product(_tag(1, 2) + _wire.varint_bytes(16) + FLOATS.tobytes())
    structure, table = _split(data)
    assert table == [(1, len(data) - 16, 16)]
    assert NN.InnerProductLayerParams.FromString(structure).inputChannels == 2


@pytest.mark.parametrize("encoding", ["unpacked", "packed twice", "packed and unpacked"])
def test_floats_protobuf_must_merge_are_left_to_it(encoding):
    packed = lambda v: _tag(1, 2) + _wire.varint_bytes(4 * len(v)) + v.tobytes()     # noqa: E731
    unpacked = lambda v: b"".join(_tag(1, 5) + x.tobytes() for x in v)             # noqa: E731
    weights = {"unpacked": unpacked(FLOATS), "packed twice": packed(FLOATS[:2]) + packed(FLOATS[2:]),
               "packed and unpacked": packed(FLOATS[:2]) + unpacked(FLOATS[2:])}[encoding]
    data = _inner_product(weights)
    assert _split(data) is None
    parsed = NN.InnerProductLayerParams.FromString(data)
    assert list(parsed.weights.floatValue) == FLOATS.tolist()      # what the fallback then decodes


def test_a_singular_message_given_twice_is_left_to_protobuf():
    one = _tag(1, 2) + _wire.varint_bytes(8) + FLOATS[:2].tobytes()
    data = _inner_product(one) + _inner_product(_tag(1, 2) + _wire.varint_bytes(8) + FLOATS[2:].tobytes())[4:]
    assert _split(data) is None


def _padded(value, size):
    """``value`` as a varint of ``size`` bytes (valid to the varint format, too long for protobuf's
    tags and lengths past 5 bytes)."""
    out = bytearray(_wire.varint_bytes(value))
    out[-1] |= 0x80
    out += b"\x80" * (size - len(out) - 1) + b"\x00"
    return bytes(out)


@pytest.mark.parametrize("fault", ["truncated", "length past the end", "group", "field number 0", "marker",
                                   "6-byte tag", "6-byte length", "10-byte length"])
def test_unexpected_bytes_fall_back_to_protobufs_parse(fault):
    good = _inner_product(_tag(1, 2) + _wire.varint_bytes(16) + FLOATS.tobytes())
    data = {"truncated": good[:-3],
            "length past the end": _inner_product(_tag(1, 2) + _wire.varint_bytes(64) + FLOATS.tobytes()),
            "group": good + _tag(7, 3),
            "field number 0": good + b"\x00\x00",
            "marker": _inner_product(_tag(_wire.MARKER, 0) + b"\x01" + _tag(1, 2) + _wire.varint_bytes(16)
                                     + FLOATS.tobytes()),
            "6-byte tag": _inner_product(_padded(1 << 3 | 2, 6) + _wire.varint_bytes(16) + FLOATS.tobytes()),
            "6-byte length": _inner_product(_tag(1, 2) + _padded(16, 6) + FLOATS.tobytes()),
            "10-byte length": _inner_product(_tag(1, 2) + _padded(16, 10) + FLOATS.tobytes())}[fault]
    assert _split(data) is None
    if fault not in ("group", "marker"):             # protobuf refuses these bytes itself
        with pytest.raises(Exception):
            NN.InnerProductLayerParams.FromString(data)


def test_a_truncated_model_file_is_protobufs_error(tmp_path):
    path = tmp_path / "cut.mlmodel"
    path.write_bytes(conv_net().SerializeToString()[:-100])
    with pytest.raises(wb.ModelFormatError, match="cut.mlmodel: not a Core ML model"):
        wb.load(path)
