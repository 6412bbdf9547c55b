"""Recurrent layers: simpleRecurrent, gru, uniDirectionalLSTM, biDirectionalLSTM.

Blobs are ``[Seq, Batch, C, 1, 1]`` in both array mappings (states ``[1, Batch, H, 1, 1]``).
The input projections of all time steps are one matmul; the loop runs over time steps only,
with one matmul per step for the recurrent term (two for GRU, whose output gate multiplies
``r * h``). With the usual activations the loop over steps is compiled (``_fused``) and its
products are ``_gemm``'s; other activations run it in Python with numpy. Gate pre-activations
are clipped to [-50, 50] as the proto specifies.
"""
import numpy as np

from ...errors import LayerError, ModelFormatError
from ._base import Kernel, fused, gemm, kernel

GATE_CLIP = 50.0
DEFAULT_CELL_CLIP = 50.0


# ---------------------------------------------------------------- activations

def _sigmoid(x):
    return 0.5 * (np.tanh(0.5 * x) + 1.0)       # no overflow warnings, same value


def _recurrent_activation(kernel_obj, act, where):
    """ActivationParams -> float32 function of a [Batch, H] array.

    Core ML's recurrent layers take the parameterless forms: converters write ``linear``,
    ``scaledTanh`` and ``sigmoidHard`` with alpha = beta = 0, and Core ML then uses the
    standard values (linear: identity; sigmoidHard: 0.2, 0.5; scaledTanh: 1, 1, i.e. tanh, as
    coremltools' LSTM tests expect). Explicitly set parameters are honoured.
    """
    kind = act.WhichOneof("NonlinearityType")
    m = getattr(act, kind) if kind else None
    f32 = np.float32

    def given(default_alpha, default_beta):
        if m.alpha == 0 and m.beta == 0:
            return f32(default_alpha), f32(default_beta)
        return f32(m.alpha), f32(m.beta)

    if kind is None or kind == "linear":
        a, b = given(1.0, 0.0) if kind else (f32(1), f32(0))
        return (lambda x: x) if (a == 1 and b == 0) else (lambda x: a * x + b)
    if kind == "sigmoid":
        return _sigmoid
    if kind == "tanh":
        return np.tanh
    if kind == "scaledTanh":
        a, b = given(1.0, 1.0)
        return lambda x: a * np.tanh(b * x)
    if kind == "sigmoidHard":
        a, b = given(0.2, 0.5)
        return lambda x: np.clip(a * x + b, 0, 1)
    if kind == "ReLU":
        return lambda x: np.maximum(x, 0)
    if kind == "leakyReLU":
        alpha = f32(m.alpha)
        return lambda x: np.where(x >= 0, x, alpha * x)
    if kind == "thresholdedReLU":
        alpha = f32(m.alpha)
        return lambda x: np.where(x >= alpha, x, f32(0))
    if kind == "ELU":
        alpha = f32(m.alpha)
        return lambda x: np.where(x >= 0, x, alpha * np.expm1(np.minimum(x, 0)))
    if kind == "softsign":
        return lambda x: x / (1 + np.abs(x))
    if kind == "softplus":
        return lambda x: np.logaddexp(f32(0), x).astype(np.float32)
    if kind == "PReLU":
        alpha = kernel_obj.weights(m.alpha, f"{where}.PReLU.alpha")
        return lambda x: np.where(x >= 0, x, alpha * x)
    if kind == "parametricSoftplus":
        alpha = kernel_obj.weights(m.alpha, f"{where}.parametricSoftplus.alpha")
        beta = kernel_obj.weights(m.beta, f"{where}.parametricSoftplus.beta")
        return lambda x: (alpha * np.logaddexp(f32(0), beta * x)).astype(np.float32)
    raise kernel_obj.unsupported(f"activation {kind!r}")


def _activations(kernel_obj, acts, count, where):
    if len(acts) != count:
        raise ModelFormatError(f"{kernel_obj.ctx.model_name}: layer '{kernel_obj.name}' ({kernel_obj.kind}) "
                               f"needs {count} activations, has {len(acts)}")
    return [_recurrent_activation(kernel_obj, a, f"{where}[{i}]") for i, a in enumerate(acts)]


def _clip(x):
    return np.clip(x, -GATE_CLIP, GATE_CLIP, out=x)


# ---------------------------------------------------------------- shared plumbing

class _Recurrent(Kernel):
    """Input/state reshaping common to every recurrent kind."""

    state_count, directions = 1, 1          # final states the layer outputs; 2 for bidirectional

    def output_shapes(self, shapes):
        """The shapes ``_outputs`` gives, from the input shape alone."""
        s = shapes[0]
        if s is None or len(s) < 3 or s[0] < 1 or int(np.prod(s[2:])) != self.cin:
            return None
        trailing = (1,) * (len(s) - 3)
        y = (s[0] if self.sequence_output else 1, s[1], self.directions * self.hidden) + trailing
        states = [(1, s[1], self.hidden) + trailing] * self.state_count
        return ([y] + states)[:max(1, len(self.layer.output))]

    def _plan_sizes(self, p):
        self.cin, self.hidden = int(p.inputVectorSize), int(p.outputVectorSize)

    def _matrix(self, wp, what, rows, cols):
        return self.weights(wp, what, rows * cols).reshape(rows, cols)

    def _vector(self, wp, what, present=True):
        if not present:
            return np.zeros(self.hidden, np.float32)
        return self.weights(wp, what, self.hidden)

    def _sequence(self, x):
        """[Seq, Batch, C, 1, 1] (or [Seq, Batch, C]) -> float32 [Seq, Batch, C]."""
        if x.ndim < 3 or int(np.prod(x.shape[2:])) != self.cin:
            raise LayerError(self.ctx.model_name, self.name,
                             f"{self.kind} expects an input of shape [Seq, Batch, {self.cin}, 1, 1], "
                             f"got {tuple(x.shape)}")
        return np.asarray(x, dtype=np.float32).reshape(x.shape[0], x.shape[1], self.cin)

    def _state(self, value, batch, what):
        """An optional initial state input ([1, Batch, H, 1, 1]); absent means zeros. C-ordered:
        the compiled loops read it row by row (a broadcast copy would otherwise be F-ordered)."""
        if value is None:
            return np.zeros((batch, self.hidden), np.float32)
        if value.size % self.hidden:
            raise LayerError(self.ctx.model_name, self.name,
                             f"{self.kind} {what} state has shape {tuple(value.shape)}, its size is not a "
                             f"multiple of the hidden size {self.hidden}")
        state = value.reshape(-1, self.hidden)
        if state.shape[0] not in (1, batch):
            raise LayerError(self.ctx.model_name, self.name,
                             f"{self.kind} {what} state has batch {state.shape[0]}, the input has {batch}")
        return np.array(np.broadcast_to(state, (batch, self.hidden)), dtype=np.float32, order="C")

    def _outputs(self, x, y_seq, states, width):
        """Shape the sequence (or last step) and the final states like the input blob."""
        trailing = (1,) * (x.ndim - 3)
        if not self.sequence_output:
            y_seq = y_seq[-1:]
        y = y_seq.reshape(y_seq.shape[:2] + (width,) + trailing)
        outputs = [y] + [s.reshape((1,) + s.shape + trailing) for s in states]
        return outputs[:max(1, len(self.layer.output))]      # a layer may name only the leading outputs


# ---------------------------------------------------------------- simple RNN

@kernel("simpleRecurrent")
class SimpleRecurrent(_Recurrent):
    """y_t = f(clip(W x_t + R y_{t-1} + b))."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self._plan_sizes(p)
        h, c = self.hidden, self.cin
        self.wx = np.ascontiguousarray(self._matrix(p.weightMatrix, "weightMatrix", h, c).T)
        self.rh = np.ascontiguousarray(self._matrix(p.recursionMatrix, "recursionMatrix", h, h).T)
        self.bias = self._vector(p.biasVector, "biasVector", p.hasBiasVector)
        self.act = _recurrent_activation(self, p.activation, "activation")
        self.sequence_output, self.reverse = bool(p.sequenceOutput), bool(p.reverseInput)
        # tanh and sigmoid: the steps are one compiled loop (_fused.rnn_sequence)
        self.compiled = self.act is np.tanh or self.act is _sigmoid
        if self.compiled:
            fused(), gemm()                 # numba's import at load, not at the first prediction

    def compute(self, x, h0=None):
        seq = self._sequence(x)
        if self.reverse:
            seq = seq[::-1]
        steps, batch = seq.shape[:2]
        xproj = seq.reshape(-1, self.cin) @ self.wx + self.bias
        xproj = xproj.reshape(steps, batch, self.hidden)
        h = self._state(h0, batch, "initial hidden")
        out = np.empty((steps, batch, self.hidden), np.float32)
        if self.compiled:
            fused().rnn_sequence(gemm().ADDRESS, xproj, self.rh, h, out, np.float32(GATE_CLIP),
                                 self.act is np.tanh)
            return self._outputs(x, out, [out[-1].copy() if steps else h], self.hidden)
        for t in range(steps):
            h = self.act(_clip(xproj[t] + h @ self.rh))
            out[t] = h
        return self._outputs(x, out, [h], self.hidden)


# ---------------------------------------------------------------- GRU

@kernel("gru")
class GRU(_Recurrent):
    """Core ML's GRU: the reset gate scales the state *before* R_o (unlike torch's GRU)."""

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self._plan_sizes(p)
        h, c = self.hidden, self.cin
        wx = [self._matrix(getattr(p, f"{g}GateWeightMatrix"), f"{g}GateWeightMatrix", h, c)
              for g in ("update", "reset", "output")]
        rh = [self._matrix(getattr(p, f"{g}GateRecursionMatrix"), f"{g}GateRecursionMatrix", h, h)
              for g in ("update", "reset", "output")]
        bias = [self._vector(getattr(p, f"{g}GateBiasVector"), f"{g}GateBiasVector", p.hasBiasVectors)
                for g in ("update", "reset", "output")]
        self.wx = np.ascontiguousarray(np.concatenate(wx, 0).T)                 # [C, 3H]: z r o
        self.bias = np.concatenate(bias)
        self.r_zr = np.ascontiguousarray(np.concatenate(rh[:2], 0).T)           # [H, 2H]
        self.r_o = np.ascontiguousarray(rh[2].T)                                 # [H, H]
        self.f, self.g = _activations(self, p.activations, 2, "activations")
        self.sequence_output, self.reverse = bool(p.sequenceOutput), bool(p.reverseInput)
        # sigmoid and tanh, the usual pair: the steps are one compiled loop (_fused.gru_sequence)
        self.compiled = self.f is _sigmoid and self.g is np.tanh
        if self.compiled:
            fused(), gemm()                 # numba's import at load, not at the first prediction

    def compute(self, x, h0=None):
        seq = self._sequence(x)
        if self.reverse:
            seq = seq[::-1]
        steps, batch = seq.shape[:2]
        H = self.hidden
        xproj = (seq.reshape(-1, self.cin) @ self.wx + self.bias).reshape(steps, batch, 3 * H)
        h = self._state(h0, batch, "initial hidden")
        out = np.empty((steps, batch, H), np.float32)
        if self.compiled:
            reset_h = np.empty((batch, H), np.float32)
            fused().gru_sequence(gemm().ADDRESS, xproj, self.r_zr, self.r_o, h, reset_h, out,
                                 np.float32(GATE_CLIP))
            return self._outputs(x, out, [out[-1].copy() if steps else h], H)
        for t in range(steps):
            zr = self.f(_clip(xproj[t, :, :2 * H] + h @ self.r_zr))
            z, r = zr[:, :H], zr[:, H:]
            o = self.g(_clip(xproj[t, :, 2 * H:] + (r * h) @ self.r_o))
            h = (1 - z) * o + z * h
            out[t] = h
        return self._outputs(x, out, [h], H)


# ---------------------------------------------------------------- LSTM

class _LSTMDirection:
    """One direction of an LSTM: weights in gate order [i, f, o, z], laid out for x @ W."""

    GATES = (("inputGate", "i"), ("forgetGate", "f"), ("outputGate", "o"), ("blockInput", "z"))

    def __init__(self, owner, wp, lp, acts, where):
        H, C = owner.hidden, owner.cin
        coupled = bool(lp.coupledInputAndForgetGate)
        wx, rh, bias = [], [], []
        for gate, short in self.GATES:
            w_param = getattr(wp, f"{gate}WeightMatrix")
            r_param = getattr(wp, f"{gate}RecursionMatrix")
            if short == "f" and coupled and not owner.has_weights(w_param):
                wx.append(np.zeros((H, C), np.float32))     # the forget gate is unused when coupled
                rh.append(np.zeros((H, H), np.float32))
            else:
                wx.append(owner._matrix(w_param, f"{where}.{gate}WeightMatrix", H, C))
                rh.append(owner._matrix(r_param, f"{where}.{gate}RecursionMatrix", H, H))
            b_param = getattr(wp, f"{gate}BiasVector")
            has_bias = lp.hasBiasVectors and not (short == "f" and coupled and not owner.has_weights(b_param))
            bias.append(np.array(owner._vector(b_param, f"{where}.{gate}BiasVector", has_bias)))
        if lp.forgetBias:
            bias[1] = bias[1] + 1
        self.wx = np.concatenate(wx, 0).T           # [C, 4H], transposed views: BLAS reads them as they are
        self.bias = np.concatenate(bias).astype(np.float32)
        self.peep = None
        if lp.hasPeepholeVectors:
            self.peep = [owner._vector(getattr(wp, f"{g}PeepholeVector"), f"{where}.{g}PeepholeVector")
                         for g in ("inputGate", "forgetGate", "outputGate")]
        self.coupled = coupled
        self.cell_clip = np.float32(lp.cellClipThreshold or DEFAULT_CELL_CLIP)
        self.f, self.g, self.h = acts
        self.hidden = H
        standard = self.f is _sigmoid and self.g is np.tanh and self.h is np.tanh
        # not the module itself: a kernel holding a module could not be deep-copied
        self.compiled = standard and self.peep is None
        if self.compiled:
            self.rt = np.empty((H, 4 * H), np.float32)  # R^T row-major, for the compiled product;
            for g, r in enumerate(rh):                  # gate by gate: 2-3x faster than one .T copy
                self.rt[:, g * H:(g + 1) * H] = r.T
            fused(), gemm()                 # numba's import at load, not at the first prediction
        else:
            self.rh = np.concatenate(rh, 0).T           # [H, 4H], a transposed view: BLAS reads it so

    def run(self, seq, h, c):
        """Run over seq [Seq, Batch, C] in order from the states h, c (``_state``'s own arrays);
        returns (outputs [Seq, Batch, H], h, c)."""
        if self.compiled:
            return self._run_standard(seq, h, c)
        H = self.hidden
        steps, batch, cin = seq.shape
        xproj = (seq.reshape(-1, cin) @ self.wx + self.bias).reshape(steps, batch, 4 * H)
        out = np.empty((steps, batch, H), np.float32)
        for t in range(steps):
            pre = xproj[t] + h @ self.rh
            if self.peep is not None:
                pre[:, :H] += self.peep[0] * c
                pre[:, H:2 * H] += self.peep[1] * c
            gates_if = self.f(_clip(pre[:, :2 * H]))
            i, f = gates_if[:, :H], gates_if[:, H:]
            z = self.g(_clip(pre[:, 3 * H:]))
            c = c * (1 - i) + i * z if self.coupled else c * f + i * z
            c = np.clip(c, -self.cell_clip, self.cell_clip)
            pre_o = pre[:, 2 * H:3 * H]
            if self.peep is not None:
                pre_o = pre_o + self.peep[2] * c
            o = self.f(_clip(pre_o))
            h = o * self.h(c)
            out[t] = h
        return out, h, c


    def _run_standard(self, seq, h, c):
        """The common case (sigmoid / tanh / tanh, no peepholes): the input projections of all
        steps are one BLAS product x [Seq * Batch, C] @ W^T [C, 4H], and the steps one compiled
        loop (``_fused.lstm_sequence``) whose product h R^T is ``_gemm``'s: OpenBLAS takes 2x
        as long for it on one thread, and a call per step from Python costs more still."""
        steps, batch, cin = seq.shape
        pre = seq.reshape(-1, cin) @ self.wx                              # [Seq * Batch, 4H]
        pre += self.bias
        out = np.empty((steps, batch, self.hidden), np.float32)
        # h and c are _state's fresh C-ordered float32 copies: c is updated in place, h kept
        fused().lstm_sequence(gemm().ADDRESS, pre.reshape(steps, batch, 4 * self.hidden), self.rt, h, c,
                              out, np.float32(GATE_CLIP), self.cell_clip, self.coupled)
        return out, (out[-1].copy() if steps else h), c


@kernel("uniDirectionalLSTM")
class UniDirectionalLSTM(_Recurrent):
    """(y, h, c) = LSTM(x, h0, c0), optionally over the reversed sequence."""

    state_count = 2

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self._plan_sizes(p)
        acts = _activations(self, p.activations, 3, "activations")
        self.cell = _LSTMDirection(self, p.weightParams, p.params, acts, "weightParams")
        self.sequence_output, self.reverse = bool(p.params.sequenceOutput), bool(p.reverseInput)

    def compute(self, x, h0=None, c0=None):
        seq = self._sequence(x)
        if self.reverse:
            seq = seq[::-1]
        batch = seq.shape[1]
        out, h, c = self.cell.run(seq, self._state(h0, batch, "initial hidden"),
                                  self._state(c0, batch, "initial cell"))
        return self._outputs(x, out, [h, c], self.hidden)


@kernel("biDirectionalLSTM")
class BiDirectionalLSTM(_Recurrent):
    """Forward and backward LSTMs; the backward outputs are aligned with the input positions."""

    state_count, directions = 4, 2

    def __init__(self, layer, ctx):
        super().__init__(layer, ctx)
        p = self.params
        self._plan_sizes(p)
        if len(p.weightParams) != 2:
            raise ModelFormatError(f"{ctx.model_name}: layer '{self.name}' (biDirectionalLSTM) needs 2 "
                                   f"weightParams (forward, backward), has {len(p.weightParams)}")
        fwd_acts = _activations(self, p.activationsForwardLSTM, 3, "activationsForwardLSTM")
        bwd_acts = (_activations(self, p.activationsBackwardLSTM, 3, "activationsBackwardLSTM")
                    if len(p.activationsBackwardLSTM) else fwd_acts)
        self.forward = _LSTMDirection(self, p.weightParams[0], p.params, fwd_acts, "weightParams[0]")
        self.backward = _LSTMDirection(self, p.weightParams[1], p.params, bwd_acts, "weightParams[1]")
        self.sequence_output = bool(p.params.sequenceOutput)

    def compute(self, x, h0=None, c0=None, h0_back=None, c0_back=None):
        seq = self._sequence(x)
        batch = seq.shape[1]
        y_f, h_f, c_f = self.forward.run(seq, self._state(h0, batch, "initial hidden"),
                                         self._state(c0, batch, "initial cell"))
        y_b, h_b, c_b = self.backward.run(seq[::-1],
                                          self._state(h0_back, batch, "initial reverse hidden"),
                                          self._state(c0_back, batch, "initial reverse cell"))
        y_b = y_b[::-1]
        if self.sequence_output:
            y = np.concatenate([y_f, y_b], axis=2)
        else:   # [yf at the last step, yb after the whole reversed sequence (position 0)]
            y = np.concatenate([y_f[-1:], y_b[:1]], axis=2)
        return self._outputs(x, y, [h_f, c_f, h_b, c_b], 2 * self.hidden)
