"""Mutations of .mlmodel files, drawn by hypothesis so failures shrink to a few small edits.

A case is ``(seed_index, structure_ops, byte_ops)``: the seed model is parsed, the structure ops
edit the protobuf (absurd field values, blob names nothing produces, cycles, duplicate outputs,
endless loops, deep nesting, wrong custom parameter types, layers of any kind inserted anywhere),
it is serialised, then the byte ops damage the bytes (truncation, bit flips, splices).
Indices are drawn as plain integers and taken modulo what exists, so one op fits any seed.
"""
import math

from hypothesis import strategies as st

from workbench.runtime._proto import Model_pb2, NeuralNetwork_pb2

FD = NeuralNetwork_pb2.NeuralNetworkLayer.DESCRIPTOR.fields[0].__class__
LAYER_KINDS = sorted(f.name for f in NeuralNetwork_pb2.NeuralNetworkLayer.DESCRIPTOR.oneofs_by_name["layer"].fields)

ABSURD_INTS = [-1, 0, 1, 2, 3, 7, 65536, 2**31 - 1, -2**31, 2**32 - 1, 2**40, 2**62, -2**63, 2**63 - 1]
ABSURD_FLOATS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e30, -1e30, 1e-38, 2.5, -1.0]
ABSURD_STRINGS = ["", "ghost", "x", "y", "\u00e9\u6f22", "a" * 5000]
RANGES = {FD.CPPTYPE_INT32: (-2**31, 2**31 - 1), FD.CPPTYPE_UINT32: (0, 2**32 - 1),
          FD.CPPTYPE_INT64: (-2**63, 2**63 - 1), FD.CPPTYPE_UINT64: (0, 2**64 - 1),
          FD.CPPTYPE_ENUM: (-2**31, 2**31 - 1)}

index = st.integers(0, 2**16)
structure_op = st.one_of(
    st.tuples(st.just("scalar"), index, index),
    st.tuples(st.just("repeated"), index, st.sampled_from(["drop_last", "append", "clear", "double", "set"]), index),
    st.tuples(st.just("blob"), index, st.sampled_from(["ghost", "self_cycle", "forward", "dup_output",
                                                       "dup_layer", "delete", "swap", "same_name"]), index),
    st.tuples(st.just("insert_layer"), st.sampled_from(LAYER_KINDS), index, st.lists(index, min_size=1, max_size=3)),
    st.tuples(st.just("endless_loop"), index, st.sampled_from(["while_true", "huge_max", "count_from_data"])),
    st.tuples(st.just("nest"), st.integers(1, 120), st.sampled_from(["branch", "loop"])),
    st.tuples(st.just("custom_param"), index, index, st.sampled_from(["intValue", "longValue", "doubleValue",
                                                                      "boolValue", "stringValue", "unset"]), index),
    st.tuples(st.just("class_name"), index, index),
)
byte_op = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 7)),
    st.tuples(st.just("splice"), index, st.floats(0, 1), st.floats(0, 1), st.integers(1, 4096)),
    st.tuples(st.just("overwrite"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 64)),
)


def _repeated(fd):
    return fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED


def cases(n_seeds, max_structure=4, max_bytes=2):
    """The hypothesis strategy of fuzz cases over ``n_seeds`` seed models."""
    return st.tuples(st.integers(0, n_seeds - 1),
                     st.lists(structure_op, max_size=max_structure),
                     st.one_of(st.just([]), st.lists(byte_op, min_size=1, max_size=max_bytes)))


def build(case, seeds, class_names=()):
    """The bytes of a case: ``seeds`` is a list of seed model bytes, ``class_names`` the custom
    layer classNames that have implementations (so a mutation can point a layer at one)."""
    seed_index, structure, damage = case
    data = seeds[seed_index]
    if structure:
        spec = Model_pb2.Model()
        spec.ParseFromString(data)
        for op in structure:
            apply_structure(spec, op, list(class_names))
        data = spec.SerializeToString()
    for op in damage:
        data = apply_bytes(data, op, seeds)
    return data


# ---------------------------------------------------------------- bytes

def apply_bytes(data, op, seeds):
    kind, n = op[0], len(data)
    at = int(op[1] * n) if kind != "splice" else 0
    if kind == "truncate":
        return data[:at]
    if kind == "flip" and n:
        at = min(at, n - 1)
        return data[:at] + bytes([data[at] ^ (1 << op[2])]) + data[at + 1:]
    if kind == "splice":
        other = seeds[op[1] % len(seeds)]
        a, b = int(op[2] * n), int(op[3] * len(other))
        return data[:a] + other[b:b + op[4]] + data[a + op[4]:]
    if kind == "overwrite":
        return data[:at] + op[2] + data[at + len(op[2]):]
    if kind == "delete":
        return data[:at] + data[at + op[2]:]
    return data


# ---------------------------------------------------------------- structure

def networks(spec):
    """Every NeuralNetwork-like message (has .layers) in the spec, outermost first."""
    found, todo = [], [spec]
    while todo:
        msg = todo.pop(0)
        for fd, value in msg.ListFields():
            if fd.cpp_type != FD.CPPTYPE_MESSAGE or fd.message_type.GetOptions().map_entry:
                continue
            for child in (value if _repeated(fd) else [value]):
                if "layers" in child.DESCRIPTOR.fields_by_name and child.DESCRIPTOR.name != "NeuralNetworkLayer":
                    found.append(child)
                todo.append(child)
    return found


def all_layers(spec):
    """(network, index, layer) for every layer, nested ones included."""
    return [(net, i, layer) for net in networks(spec) for i, layer in enumerate(net.layers)]


def scalar_sites(spec):
    """(message, field) for every scalar or repeated-scalar field of every message in the spec,
    set or not (an unset field of a layer's parameters is as interesting as a set one)."""
    sites, todo = [], [spec]
    while todo:
        msg = todo.pop()
        for fd in msg.DESCRIPTOR.fields:
            if fd.cpp_type == FD.CPPTYPE_MESSAGE:
                if _repeated(fd):
                    value = getattr(msg, fd.name)
                    if fd.message_type.GetOptions().map_entry:
                        continue
                    todo.extend(value)
                elif msg.HasField(fd.name):
                    todo.append(getattr(msg, fd.name))
            else:
                sites.append((msg, fd))
    return sites


def absurd_value(fd, pick):
    t = fd.cpp_type
    if t in RANGES:
        lo, hi = RANGES[t]
        v = ABSURD_INTS[pick % len(ABSURD_INTS)]
        return min(max(v, lo), hi)
    if t in (FD.CPPTYPE_FLOAT, FD.CPPTYPE_DOUBLE):
        return ABSURD_FLOATS[pick % len(ABSURD_FLOATS)]
    if t == FD.CPPTYPE_BOOL:
        return bool(pick % 2)
    if fd.type == FD.TYPE_BYTES:
        return bytes(pick % 7)
    return ABSURD_STRINGS[pick % len(ABSURD_STRINGS)]


def apply_structure(spec, op, class_names):
    kind = op[0]
    if kind == "scalar":
        sites = scalar_sites(spec)
        if sites:
            msg, fd = sites[op[1] % len(sites)]
            value = absurd_value(fd, op[2])
            if _repeated(fd):
                seq = getattr(msg, fd.name)
                if len(seq):
                    seq[op[2] % len(seq)] = value
                else:
                    seq.append(value)
            else:
                setattr(msg, fd.name, value)
    elif kind == "repeated":
        sites = [(m, f) for m, f in scalar_sites(spec) if _repeated(f)]
        if sites:
            msg, fd = sites[op[1] % len(sites)]
            _edit_repeated(getattr(msg, fd.name), op[2], absurd_value(fd, op[3]), op[3])
    elif kind == "blob":
        _edit_blobs(spec, op[1], op[2], op[3])
    elif kind == "insert_layer":
        _insert_layer(spec, op[1], op[2], op[3])
    elif kind == "endless_loop":
        _endless_loop(spec, op[1], op[2])
    elif kind == "nest":
        _nest(spec, op[1], op[2])
    elif kind == "custom_param":
        _custom_param(spec, op[1], op[2], op[3], op[4])
    elif kind == "class_name":
        customs = [layer for _, _, layer in all_layers(spec) if layer.WhichOneof("layer") == "custom"]
        if customs:
            names = class_names + ["NoSuchClass", ""]
            customs[op[1] % len(customs)].custom.className = names[op[2] % len(names)]


def _edit_repeated(seq, action, value, pick):
    if action == "drop_last" and len(seq):
        del seq[-1]                                   # a weight array one element short
    elif action == "append":
        seq.append(value)
    elif action == "clear":
        del seq[:]
    elif action == "double":
        seq.extend(list(seq)[:100_000])
    elif action == "set" and len(seq):
        seq[pick % len(seq)] = value


def _blob_names(spec):
    names = [f.name for f in spec.description.input]
    for _, _, layer in all_layers(spec):
        names.extend(layer.output)
    return names or ["x"]


def _edit_blobs(spec, pick, action, other):
    layers = all_layers(spec)
    if not layers:
        return
    net, i, layer = layers[pick % len(layers)]
    _, _, partner = layers[other % len(layers)]
    if action == "ghost" and len(layer.input):
        layer.input[other % len(layer.input)] = "blob_nothing_produces"
    elif action == "self_cycle" and len(layer.output):
        layer.input.append(layer.output[0])
    elif action == "forward" and len(partner.output):
        layer.input.append(partner.output[0])           # a cycle when the partner comes later
    elif action == "dup_output" and len(partner.output) and len(layer.output):
        layer.output[0] = partner.output[0]
    elif action == "dup_layer":
        net.layers.add().CopyFrom(layer)
    elif action == "delete":
        del net.layers[i]
    elif action == "swap" and i + 1 < len(net.layers):
        a, b = type(layer)(), type(layer)()
        a.CopyFrom(net.layers[i])
        b.CopyFrom(net.layers[i + 1])
        net.layers[i].CopyFrom(b)
        net.layers[i + 1].CopyFrom(a)
    elif action == "same_name":
        layer.name = partner.name


def _insert_at(net, position):
    """Insert a new empty layer at ``position`` of a repeated layer field; return it."""
    saved = []
    for layer in net.layers:
        copy = type(layer)()
        copy.CopyFrom(layer)
        saved.append(copy)
    position = position % (len(saved) + 1)
    del net.layers[:]
    for layer in saved[:position]:
        net.layers.add().CopyFrom(layer)
    new = net.layers.add()
    for layer in saved[position:]:
        net.layers.add().CopyFrom(layer)
    return new


def _new_top_layer(spec, position, name):
    """A new empty layer named ``name`` at ``position`` of the top network, and the blob names the
    spec already has; (None, None) for a spec without a network."""
    nets = networks(spec)
    if not nets:
        return None, None
    names = _blob_names(spec)
    layer = _insert_at(nets[0], position)
    layer.name = name
    return layer, names


def _insert_layer(spec, kind, position, input_picks):
    new, names = _new_top_layer(spec, position, f"fuzz_{kind}")
    if new is None:
        return
    getattr(new, kind).SetInParent()
    for pick in input_picks:
        new.input.append(names[pick % len(names)])
    new.output.append(f"fuzz_{kind}_out")


def _endless_loop(spec, position, variant):
    loop, names = _new_top_layer(spec, position, f"fuzz_loop_{variant}")
    if loop is None:
        return
    p = loop.loop
    p.bodyNetwork.SetInParent()
    body = p.bodyNetwork.layers.add()
    body.name = "fuzz_loop_body"
    body.input.append(names[0])
    body.output.append("fuzz_loop_state")
    body.copy.SetInParent()
    if variant == "while_true":                        # a condition that never turns false
        cond = p.conditionNetwork.layers.add()
        cond.name = "fuzz_always_true"
        cond.output.append("fuzz_true")
        cond.loadConstantND.shape.append(1)
        cond.loadConstantND.data.floatValue.append(1.0)
        p.conditionVar = "fuzz_true"
    elif variant == "huge_max":
        p.maxLoopIterations = 2**62
    else:                                              # the iteration count comes from a blob
        loop.input.append(names[position % len(names)])


def _nest(spec, depth, kind):
    """Wrap the top network's layers in ``depth`` branch (or one-iteration loop) levels."""
    nets = networks(spec)
    if not nets or not len(spec.description.input):
        return
    top = nets[0]
    saved = []
    for layer in top.layers:
        copy = type(layer)()
        copy.CopyFrom(layer)
        saved.append(copy)
    del top.layers[:]
    inner = top
    for level in range(depth):
        layer = inner.layers.add()
        layer.name = f"fuzz_nest_{level}"
        if kind == "branch":
            layer.input.append(spec.description.input[0].name)
            inner = layer.branch.ifBranch
        else:
            layer.loop.maxLoopIterations = 1
            inner = layer.loop.bodyNetwork
    for layer in saved:
        inner.layers.add().CopyFrom(layer)


def _custom_param(spec, pick, key_pick, type_name, value_pick):
    customs = [layer for _, _, layer in all_layers(spec) if layer.WhichOneof("layer") == "custom"]
    if not customs:
        return
    params = customs[pick % len(customs)].custom.parameters
    keys = sorted(params) + ["fuzz_extra"]
    value = params[keys[key_pick % len(keys)]]
    if type_name == "unset":
        value.Clear()
    elif type_name == "stringValue":
        value.stringValue = ABSURD_STRINGS[value_pick % len(ABSURD_STRINGS)]
    elif type_name == "boolValue":
        value.boolValue = bool(value_pick % 2)
    elif type_name == "doubleValue":
        value.doubleValue = ABSURD_FLOATS[value_pick % len(ABSURD_FLOATS)]
    elif type_name == "longValue":
        value.longValue = min(max(ABSURD_INTS[value_pick % len(ABSURD_INTS)], -2**63), 2**63 - 1)
    else:
        value.intValue = min(max(ABSURD_INTS[value_pick % len(ABSURD_INTS)], -2**31), 2**31 - 1)
