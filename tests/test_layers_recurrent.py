"""simpleRecurrent, gru, uniDirectionalLSTM and biDirectionalLSTM through wb.load(...).predict.

References: torch.nn.RNN / LSTM with the same weights where torch computes the same function (gate
orders differ: torch LSTM is [i, f, g, o], Core ML [i, f, o, z]); elsewhere numpy loops written from
NeuralNetwork.proto's equations (Core ML's GRU applies the reset gate before R_o, unlike torch's).
"""
import sys

import numpy as np
import pytest
import torch
from coremltools.models import datatypes
from coremltools.models.neural_network import NeuralNetworkBuilder

import workbench as wb

RNG = np.random.default_rng(5)
SEQ, BATCH, CIN, H = 5, 3, 4, 6


def rand(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def close(got, want, rtol=1e-5, atol=1e-5):
    """Relative to each value, and to the largest (float32 cancellation near zero in long recurrences)."""
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    atol = max(atol, rtol * float(np.abs(want).max(initial=0)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# builder name -> numpy reference. The recurrent layers take the parameterless forms: linear is the
# identity, hard sigmoid uses 0.2 / 0.5, and scaled tanh is tanh (what coremltools' LSTM tests expect).
ACTS = {
    "SIGMOID": sigmoid,
    "TANH": np.tanh,
    "RELU": lambda x: np.maximum(x, 0),
    "LINEAR": lambda x: x,
    "SIGMOID_HARD": lambda x: np.clip(0.2 * x + 0.5, 0, 1),
    "SCALED_TANH": np.tanh,
}


def rtol_for(*acts):
    """Unbounded activations (linear, ReLU) let float32 rounding grow over the steps: allow 5e-4."""
    return 5e-4 if {"LINEAR", "RELU"} & set(acts) else 1e-5


def clip50(x):
    return np.clip(x, -50, 50)


def model(add_layer, n_states, exact=False, out_names=("y", "h", "c", "hb", "cb")):
    """x [Seq, Batch, CIN, 1, 1] (+ state inputs) -> outputs; rank-5 or exact-rank mapping."""
    x_shape = (SEQ, BATCH, CIN, 1, 1) if exact else (CIN,)
    s_shape = (1, BATCH, H, 1, 1) if exact else (H,)
    names = ["h0", "c0", "hb0", "cb0"][:n_states]
    inputs = [("x", datatypes.Array(*x_shape))] + [(n, datatypes.Array(*s_shape)) for n in names]
    outs = list(out_names[: n_states + 1]) if n_states else list(out_names[:1])
    bld = NeuralNetworkBuilder(inputs, [(o, None) for o in outs], disable_rank5_shape_mapping=exact)
    add_layer(bld, ["x"] + names, outs)
    return wb.load(bld.spec)


def states(n):
    return [rand(1, BATCH, H, 1, 1) for _ in range(n)]


def feed(x, state_values):
    d = {"x": x}
    for name, v in zip(["h0", "c0", "hb0", "cb0"], state_values):
        d[name] = v
    return d


def seq_out(y, sequence_output):
    """[Seq or 1, Batch, H] reference -> the blob shape [Seq or 1, Batch, H, 1, 1]."""
    y = y if sequence_output else y[-1:]
    return y[..., None, None]


# ---------------------------------------------------------------- simple RNN

def numpy_rnn(x, h, w, r, b, act, reverse):
    xs = x[::-1] if reverse else x
    out = []
    for xt in xs.astype(np.float64):
        h = act(clip50(xt @ w.T + h @ r.T + b))
        out.append(h)
    return np.stack(out), h


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("sequence_output", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("has_bias", [True, False])
def test_simple_rnn(act, sequence_output, reverse, has_bias):
    w, r, b = rand(H, CIN), rand(H, H), rand(H)
    m = model(lambda bld, i, o: bld.add_simple_rnn("rnn", r, w, b if has_bias else None, H, CIN, act, i, o,
                                                   output_all=sequence_output, reverse_input=reverse), 1)
    x, (h0,) = rand(SEQ, BATCH, CIN, 1, 1, scale=1), states(1)
    got = m.predict(feed(x, [h0]))
    y, h = numpy_rnn(x[..., 0, 0], h0[0, ..., 0, 0], w, r, b if has_bias else 0, ACTS[act], reverse)
    close(got["y"], seq_out(y, sequence_output), rtol=rtol_for(act))
    close(got["h"], h[None, ..., None, None], rtol=rtol_for(act))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_simple_rnn_matches_torch(nonlinearity):
    rnn = torch.nn.RNN(CIN, H, nonlinearity=nonlinearity)
    w, r = rnn.weight_ih_l0.detach().numpy(), rnn.weight_hh_l0.detach().numpy()
    b = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().numpy()
    m = model(lambda bld, i, o: bld.add_simple_rnn("rnn", r, w, b, H, CIN, nonlinearity.upper(), i, o,
                                                   output_all=True), 1)
    x, (h0,) = rand(SEQ, BATCH, CIN, 1, 1, scale=1), states(1)
    got = m.predict(feed(x, [h0]))
    with torch.no_grad():
        y, h = rnn(torch.from_numpy(x[..., 0, 0]), torch.from_numpy(h0[..., 0, 0]))
    close(got["y"], y.numpy()[..., None, None])
    close(got["h"], h.numpy()[..., None, None])


def test_simple_rnn_clips_preactivation_at_50():
    w = np.full((H, CIN), 40.0, np.float32)
    m = model(lambda bld, i, o: bld.add_simple_rnn("rnn", np.zeros((H, H), np.float32), w, None, H, CIN,
                                                   "LINEAR", i, o, output_all=True), 0)
    got = m.predict({"x": np.ones((SEQ, BATCH, CIN, 1, 1), np.float32)})["y"]
    close(got, np.full((SEQ, BATCH, H, 1, 1), 50.0))


# ---------------------------------------------------------------- GRU

def numpy_gru(x, h, W, R, B, f, g, reverse):
    """Proto: z, r = f(W x + R h + b); o = g(W_o x + R_o (r * h) + b_o); h = (1 - z) o + z h."""
    xs = x[::-1] if reverse else x
    out = []
    for xt in xs.astype(np.float64):
        z = f(clip50(xt @ W[0].T + h @ R[0].T + B[0]))
        r = f(clip50(xt @ W[1].T + h @ R[1].T + B[1]))
        o = g(clip50(xt @ W[2].T + (h * r) @ R[2].T + B[2]))
        h = (1 - z) * o + z * h
        out.append(h)
    return np.stack(out), h


GRU_ACTS = [("SIGMOID", "TANH"), ("SIGMOID_HARD", "TANH"), ("RELU", "LINEAR"), ("TANH", "SCALED_TANH"),
            ("LINEAR", "SIGMOID"), ("SCALED_TANH", "RELU")]


@pytest.mark.parametrize("inner,outer", GRU_ACTS)
@pytest.mark.parametrize("sequence_output", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("has_bias", [True, False])
def test_gru(inner, outer, sequence_output, reverse, has_bias):
    W = [rand(H, CIN) for _ in range(3)]
    R = [rand(H, H) for _ in range(3)]
    B = [rand(H) for _ in range(3)]
    m = model(lambda bld, i, o: bld.add_gru("gru", R, W, B if has_bias else None, H, CIN, i, o,
                                            activation=outer, inner_activation=inner,
                                            output_all=sequence_output, reverse_input=reverse), 1)
    x, (h0,) = rand(SEQ, BATCH, CIN, 1, 1, scale=1), states(1)
    got = m.predict(feed(x, [h0]))
    y, h = numpy_gru(x[..., 0, 0], h0[0, ..., 0, 0], W, R, B if has_bias else [0, 0, 0],
                     ACTS[inner], ACTS[outer], reverse)
    close(got["y"], seq_out(y, sequence_output), rtol=rtol_for(inner, outer))
    close(got["h"], h[None, ..., None, None], rtol=rtol_for(inner, outer))


def test_gru_without_initial_state_starts_from_zeros():
    W, R = [rand(H, CIN) for _ in range(3)], [rand(H, H) for _ in range(3)]
    m = model(lambda bld, i, o: bld.add_gru("gru", R, W, None, H, CIN, i, o, output_all=True), 0)
    x = rand(SEQ, BATCH, CIN, 1, 1, scale=1)
    y, _ = numpy_gru(x[..., 0, 0], np.zeros((BATCH, H)), W, R, [0, 0, 0], ACTS["SIGMOID_HARD"], np.tanh, False)
    close(m.predict({"x": x})["y"], y[..., None, None])


# the compiled step product works in tiles of rows (the batch) and of vectors (the gates' columns),
# with a shorter last tile of rows, one vector and scalar columns left over: these sizes take each
# path (batch 1: only a short tile)
PRODUCT_SIZES = [(1, 64), (11, 20), (8, 33)]


@pytest.mark.parametrize("batch,hidden", PRODUCT_SIZES)
@pytest.mark.parametrize("act", ["TANH", "SIGMOID"])
def test_compiled_simple_rnn_at_batches_and_widths_of_every_product_path(monkeypatch, batch, hidden, act):
    monkeypatch.setattr(sys.modules[__name__], "BATCH", batch)
    monkeypatch.setattr(sys.modules[__name__], "H", hidden)
    w, r, b = rand(hidden, CIN), rand(hidden, hidden, scale=0.2), rand(hidden)
    m = model(lambda bld, i, o: bld.add_simple_rnn("rnn", r, w, b, hidden, CIN, act, i, o, output_all=True), 1,
              exact=True)
    assert m.network.steps[0].kernel.compiled
    x, (h0,) = rand(SEQ, batch, CIN, 1, 1, scale=1), states(1)
    got = m.predict(feed(x, [h0]))
    y, h = numpy_rnn(x[..., 0, 0], h0[0, ..., 0, 0], w, r, b, ACTS[act], False)
    close(got["y"], y[..., None, None])
    close(got["h"], h[None, ..., None, None])


@pytest.mark.parametrize("batch,hidden", PRODUCT_SIZES)
def test_compiled_gru_at_batches_and_widths_of_every_product_path(monkeypatch, batch, hidden):
    monkeypatch.setattr(sys.modules[__name__], "BATCH", batch)
    monkeypatch.setattr(sys.modules[__name__], "H", hidden)
    W = [rand(hidden, CIN) for _ in range(3)]
    R = [rand(hidden, hidden, scale=0.2) for _ in range(3)]
    B = [rand(hidden) for _ in range(3)]
    m = model(lambda bld, i, o: bld.add_gru("gru", R, W, B, hidden, CIN, i, o, activation="TANH",
                                            inner_activation="SIGMOID", output_all=True), 1, exact=True)
    assert m.network.steps[0].kernel.compiled
    x, (h0,) = rand(SEQ, batch, CIN, 1, 1, scale=1), states(1)
    got = m.predict(feed(x, [h0]))
    y, h = numpy_gru(x[..., 0, 0], h0[0, ..., 0, 0], W, R, B, ACTS["SIGMOID"], np.tanh, False)
    close(got["y"], y[..., None, None])
    close(got["h"], h[None, ..., None, None])


def _compiled_layer(kind, exact):
    """A model of one recurrent layer that takes the compiled loop, its weights and the numpy
    reference: reference(x [Seq, Batch, CIN], states [Batch, H] each) -> (y, final states)."""
    W, R, B = [rand(H, CIN) for _ in range(4)], [rand(H, H) for _ in range(4)], [rand(H) for _ in range(4)]
    if kind == "rnn":
        m = model(lambda bld, i, o: bld.add_simple_rnn("rnn", R[0], W[0], B[0], H, CIN, "TANH", i, o,
                                                       output_all=True), 1, exact=exact)
        def reference(x, h):
            y, h = numpy_rnn(x, h, W[0], R[0], B[0], np.tanh, False)
            return y, [h]
    elif kind == "gru":
        m = model(lambda bld, i, o: bld.add_gru("gru", R[:3], W[:3], B[:3], H, CIN, i, o, activation="TANH",
                                                inner_activation="SIGMOID", output_all=True), 1, exact=exact)
        def reference(x, h):
            y, h = numpy_gru(x, h, W[:3], R[:3], B[:3], sigmoid, np.tanh, False)
            return y, [h]
    else:
        m = model(lambda bld, i, o: bld.add_unilstm("lstm", R, W, B, H, CIN, i, o, output_all=True), 2,
                  exact=exact)
        def reference(x, h, c):
            y, h, c = numpy_lstm(x, h, c, W, R, [b.astype(np.float64) for b in B], None,
                                 [sigmoid, np.tanh, np.tanh])
            return y, [h, c]
    layer = m.network.steps[0].kernel
    assert (layer.cell if kind == "lstm" else layer).compiled
    return m, reference


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_compiled_loops_take_a_state_given_for_one_batch_row(kind):
    """A state of batch 1 serves every row of the batch (here declared (H,), as converters do)."""
    m, reference = _compiled_layer(kind, exact=False)
    count = 2 if kind == "lstm" else 1
    x, given = rand(SEQ, BATCH, CIN, 1, 1, scale=1), [rand(H) for _ in range(count)]
    got = m.predict(feed(x, given))
    y, final = reference(x[..., 0, 0], *[np.broadcast_to(g, (BATCH, H)) for g in given])
    close(got["y"], y[:, :, :, None, None])
    for name, want in zip(["h", "c"], final):
        close(got[name], want[None, :, :, None, None])


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("steps,batch", [(0, BATCH), (SEQ, 0)])
def test_compiled_loops_over_no_steps_or_no_rows(kind, steps, batch):
    """No steps: the final states are the initial ones; no rows: every output is empty."""
    m, _ = _compiled_layer(kind, exact=True)
    kernel = m.network.steps[0].kernel
    given = [rand(1, batch, H, 1, 1) for _ in range(2 if kind == "lstm" else 1)]
    outputs = kernel.compute(np.zeros((steps, batch, CIN, 1, 1), np.float32), *given)
    assert outputs[0].shape == (steps, batch, H, 1, 1)
    for final, initial in zip(outputs[1:], given):
        np.testing.assert_array_equal(final, initial if steps == 0 else np.zeros((1, 0, H, 1, 1)))


# ---------------------------------------------------------------- LSTM

def numpy_lstm(x, h, c, W, R, B, P, acts, coupled=False, cell_clip=50.0, reverse=False):
    """The proto's LSTM equations; W, R, B in Core ML order [i, f, o, z], P = [p_i, p_f, p_o] or None."""
    f_act, g_act, h_act = acts
    P = P or [0, 0, 0]
    xs = x[::-1] if reverse else x
    out = []
    for xt in xs.astype(np.float64):
        pre = [xt @ W[k].T + h @ R[k].T + B[k] for k in range(4)]
        i = f_act(clip50(pre[0] + P[0] * c))
        f = f_act(clip50(pre[1] + P[1] * c))
        z = g_act(clip50(pre[3]))
        c = c * (1 - i) + i * z if coupled else c * f + i * z
        c = np.clip(c, -cell_clip, cell_clip)
        o = f_act(clip50(pre[2] + P[2] * c))
        h = o * h_act(c)
        out.append(h)
    return np.stack(out), h, c


def torch_to_coreml_lstm(lstm, suffix=""):
    """torch [i, f, g, o] rows -> Core ML lists [i, f, o, z] of W, R and the summed biases."""
    def split(t):
        i, f, g, o = np.split(t.detach().numpy(), 4)
        return [i, f, o, g]
    W = split(getattr(lstm, "weight_ih_l0" + suffix))
    R = split(getattr(lstm, "weight_hh_l0" + suffix))
    B = split(getattr(lstm, "bias_ih_l0" + suffix) + getattr(lstm, "bias_hh_l0" + suffix))
    return W, R, B


def _unilstm_against_torch(sequence_output, exact, batch=BATCH, hidden=H):
    lstm = torch.nn.LSTM(CIN, hidden)
    W, R, B = torch_to_coreml_lstm(lstm)
    m = model(lambda bld, i, o: bld.add_unilstm("lstm", R, W, B, hidden, CIN, i, o, output_all=sequence_output),
              2, exact=exact)
    assert m.network.steps[0].kernel.cell.compiled
    x, (h0, c0) = rand(SEQ, batch, CIN, 1, 1, scale=1), states(2)
    got = m.predict(feed(x, [h0, c0]))
    with torch.no_grad():
        y, (h, c) = lstm(torch.from_numpy(x[..., 0, 0]), (torch.from_numpy(h0[..., 0, 0]),
                                                           torch.from_numpy(c0[..., 0, 0])))
    close(got["y"], seq_out(y.numpy(), sequence_output))
    close(got["h"], h.numpy()[..., None, None])
    close(got["c"], c.numpy()[..., None, None])


@pytest.mark.parametrize("sequence_output", [True, False])
@pytest.mark.parametrize("exact", [False, True])
def test_unilstm_matches_torch(sequence_output, exact):
    _unilstm_against_torch(sequence_output, exact)


@pytest.mark.parametrize("batch,hidden", [(1, 256)] + PRODUCT_SIZES[1:])
def test_unilstm_matches_torch_at_batches_and_widths_of_every_product_path(monkeypatch, batch, hidden):
    monkeypatch.setattr(sys.modules[__name__], "BATCH", batch)      # the sizes model() and states() use
    monkeypatch.setattr(sys.modules[__name__], "H", hidden)
    _unilstm_against_torch(True, True, batch, hidden)


def test_unilstm_reverse_input_matches_torch_on_the_flipped_sequence():
    """reverseInput runs the sequence right to left and emits outputs in that processing order."""
    lstm = torch.nn.LSTM(CIN, H)
    W, R, B = torch_to_coreml_lstm(lstm)
    m = model(lambda bld, i, o: bld.add_unilstm("lstm", R, W, B, H, CIN, i, o, output_all=True,
                                                reverse_input=True), 2)
    x, (h0, c0) = rand(SEQ, BATCH, CIN, 1, 1, scale=1), states(2)
    got = m.predict(feed(x, [h0, c0]))
    with torch.no_grad():
        y, (h, c) = lstm(torch.from_numpy(x[::-1, :, :, 0, 0].copy()),
                         (torch.from_numpy(h0[..., 0, 0]), torch.from_numpy(c0[..., 0, 0])))
    close(got["y"], y.numpy()[..., None, None])
    close(got["h"], h.numpy()[..., None, None])


LSTM_OPTIONS = [
    dict(),
    dict(peephole=True),
    dict(coupled=True),
    dict(forget_bias=True),
    dict(forget_bias=True, has_bias=False),
    dict(cell_clip=0.3),
    dict(cell_clip=0.0),                    # 0 means the default, 50
    dict(peephole=True, coupled=True, cell_clip=0.5, reverse=True),
    dict(acts=("SIGMOID_HARD", "RELU", "LINEAR")),
    dict(acts=("TANH", "SCALED_TANH", "SIGMOID")),
    dict(acts=("LINEAR", "SIGMOID_HARD", "SCALED_TANH"), peephole=True),
    dict(acts=("SIGMOID", "TANH", "RELU"), has_bias=False, sequence_output=False),
]


def _lstm_case(opts):
    W = [rand(H, CIN) for _ in range(4)]
    R = [rand(H, H) for _ in range(4)]
    B = [rand(H) for _ in range(4)] if opts.get("has_bias", True) else None
    P = [rand(H) for _ in range(3)] if opts.get("peephole") else None
    return W, R, B, P


def _reference_bias(B, opts):
    B = [b.astype(np.float64) for b in B] if B is not None else [np.zeros(H)] * 4
    if opts.get("forget_bias"):
        B = [B[0], B[1] + 1, B[2], B[3]]
    return B


@pytest.mark.parametrize("opts", LSTM_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_unilstm_options(opts):
    W, R, B, P = _lstm_case(opts)
    acts = opts.get("acts", ("SIGMOID", "TANH", "TANH"))
    seq_output = opts.get("sequence_output", True)
    m = model(lambda bld, i, o: bld.add_unilstm(
        "lstm", R, W, B, H, CIN, i, o, inner_activation=acts[0], cell_state_update_activation=acts[1],
        output_activation=acts[2], peep=P, output_all=seq_output, forget_bias=opts.get("forget_bias", False),
        coupled_input_forget_gate=opts.get("coupled", False), cell_clip_threshold=opts.get("cell_clip", 50.0),
        reverse_input=opts.get("reverse", False)), 2)
    x, (h0, c0) = rand(SEQ, BATCH, CIN, 1, 1, scale=1.5), states(2)
    got = m.predict(feed(x, [h0, c0]))
    y, h, c = numpy_lstm(x[..., 0, 0], h0[0, ..., 0, 0], c0[0, ..., 0, 0], W, R, _reference_bias(B, opts), P,
                         [ACTS[a] for a in acts], coupled=opts.get("coupled", False),
                         cell_clip=opts.get("cell_clip") or 50.0, reverse=opts.get("reverse", False))
    rtol = rtol_for(*acts)
    close(got["y"], seq_out(y, seq_output), rtol=rtol)
    close(got["h"], h[None, ..., None, None], rtol=rtol)
    close(got["c"], c[None, ..., None, None], rtol=rtol)


def test_unilstm_explicit_scaled_tanh_and_hard_sigmoid_parameters_are_used():
    W, R, B, _ = _lstm_case({})
    m = model(lambda bld, i, o: bld.add_unilstm("lstm", R, W, B, H, CIN, i, o, inner_activation="SIGMOID_HARD",
                                                output_activation="SCALED_TANH", output_all=True), 2)
    acts = m.spec.neuralNetwork.layers[0].uniDirectionalLSTM.activations
    acts[0].sigmoidHard.alpha, acts[0].sigmoidHard.beta = 0.3, 0.4
    acts[2].scaledTanh.alpha, acts[2].scaledTanh.beta = 1.7159, 2 / 3
    m = wb.load(m.spec)
    x, (h0, c0) = rand(SEQ, BATCH, CIN, 1, 1, scale=1), states(2)
    got = m.predict(feed(x, [h0, c0]))
    y, _, _ = numpy_lstm(x[..., 0, 0], h0[0, ..., 0, 0], c0[0, ..., 0, 0], W, R, _reference_bias(B, {}), None,
                         [lambda v: np.clip(0.3 * v + 0.4, 0, 1), np.tanh,
                          lambda v: 1.7159 * np.tanh(2 / 3 * v)])
    close(got["y"], y[..., None, None])


def test_unilstm_without_state_inputs_starts_from_zeros():
    W, R, B, _ = _lstm_case({})
    m = model(lambda bld, i, o: bld.add_unilstm("lstm", R, W, B, H, CIN, ["x"], ["y"], output_all=True), 0)
    x = rand(SEQ, BATCH, CIN, 1, 1, scale=1)
    y, _, _ = numpy_lstm(x[..., 0, 0], np.zeros((BATCH, H)), np.zeros((BATCH, H)), W, R, _reference_bias(B, {}),
                         None, [sigmoid, np.tanh, np.tanh])
    close(m.predict({"x": x})["y"], y[..., None, None])


# ---------------------------------------------------------------- bidirectional LSTM

@pytest.mark.parametrize("sequence_output", [True, False])
@pytest.mark.parametrize("exact", [False, True])
def test_bidirlstm_matches_torch(sequence_output, exact):
    lstm = torch.nn.LSTM(CIN, H, bidirectional=True)
    W, R, B = torch_to_coreml_lstm(lstm)
    Wb, Rb, Bb = torch_to_coreml_lstm(lstm, "_reverse")
    m = model(lambda bld, i, o: bld.add_bidirlstm("bi", R, W, B, Rb, Wb, Bb, H, CIN, i, o,
                                                  output_all=sequence_output), 4, exact=exact)
    x, st = rand(SEQ, BATCH, CIN, 1, 1, scale=1), states(4)
    got = m.predict(feed(x, st))
    h0 = torch.from_numpy(np.concatenate([st[0], st[2]])[..., 0, 0])
    c0 = torch.from_numpy(np.concatenate([st[1], st[3]])[..., 0, 0])
    with torch.no_grad():
        y, (h, c) = lstm(torch.from_numpy(x[..., 0, 0]), (h0, c0))
    y = y.numpy()
    if not sequence_output:      # [forward after the last step, backward after the whole reversed sequence]
        y = np.concatenate([y[-1:, :, :H], y[:1, :, H:]], axis=2)
    close(got["y"], y[..., None, None])
    close(got["h"], h.numpy()[:1, ..., None, None])
    close(got["c"], c.numpy()[:1, ..., None, None])
    close(got["hb"], h.numpy()[1:, ..., None, None])
    close(got["cb"], c.numpy()[1:, ..., None, None])


def test_bidirlstm_options():
    opts = dict(peephole=True, forget_bias=True, cell_clip=0.8)
    W, R, B, P = _lstm_case(opts)
    Wb, Rb, Bb, Pb = _lstm_case(opts)
    acts = ("SIGMOID_HARD", "TANH", "RELU")
    m = model(lambda bld, i, o: bld.add_bidirlstm(
        "bi", R, W, B, Rb, Wb, Bb, H, CIN, i, o, inner_activation=acts[0], cell_state_update_activation=acts[1],
        output_activation=acts[2], peep=P, peep_back=Pb, output_all=True, forget_bias=True,
        cell_clip_threshold=0.8), 4)
    x, st = rand(SEQ, BATCH, CIN, 1, 1, scale=1.5), states(4)
    got = m.predict(feed(x, st))
    fns = [ACTS[a] for a in acts]
    s = [v[0, ..., 0, 0] for v in st]
    yf, hf, cf = numpy_lstm(x[..., 0, 0], s[0], s[1], W, R, _reference_bias(B, opts), P, fns, cell_clip=0.8)
    yb, hb, cb = numpy_lstm(x[..., 0, 0], s[2], s[3], Wb, Rb, _reference_bias(Bb, opts), Pb, fns, cell_clip=0.8,
                            reverse=True)
    close(got["y"], np.concatenate([yf, yb[::-1]], axis=2)[..., None, None], rtol=rtol_for(*acts))
    for name, want in [("h", hf), ("c", cf), ("hb", hb), ("cb", cb)]:
        close(got[name], want[None, ..., None, None], rtol=rtol_for(*acts))


def test_lstm_wrong_weight_count_is_a_format_error():
    W, R, B, _ = _lstm_case({})
    m = model(lambda bld, i, o: bld.add_unilstm("lstm", R, W, B, H, CIN, i, o), 2)
    spec = m.spec
    del spec.neuralNetwork.layers[0].uniDirectionalLSTM.weightParams.forgetGateWeightMatrix.floatValue[-1]
    with pytest.raises(wb.ModelFormatError, match="lstm"):
        wb.load(spec)
