"""The fuzz oracle: seed models, one case run (load + one predict), and what counts as a crash.

The contract under test: for ANY bytes, ``wb.load(bytes)`` followed by one ``predict`` on
default inputs either succeeds or raises one of the package's own errors (workbench/errors.py)
whose message names the model. Anything else is a crash: another exception type, an error with
an anonymous message, a MemoryError or RecursionError wrapped into a package error (the runtime
tried to allocate or recurse without checking first), a hang past the time limit.
"""
import contextlib
import re
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import workbench as wb
from workbench.errors import WorkbenchError
from workbench.runtime._proto import Model_pb2, NeuralNetwork_pb2
from workbench.runtime.registry import Implementations

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus"
CASES = ROOT / "tests" / "fuzz_cases"
MODEL_NAME = "<bytes>"

#: small limits keep each case cheap; the contract is the same under any limits
FUZZ_LIMITS = {"max_blob_bytes": 1 << 30, "max_loop_iterations": 1000, "max_nesting_depth": 64}
#: image inputs of seeds are shrunk to at most this many pixels a side: same layers, 100x less work
MAX_SEED_IMAGE_SIDE = 64


class Hang(BaseException):
    """Raised by the watchdog timer inside a case that runs past its time limit."""


@dataclass
class Outcome:
    kind: str                 # "ok", "error" (a documented error), "crash"
    error_type: str = ""
    message: str = ""
    why: str = ""             # for a crash: what broke the contract

    @property
    def pattern(self):
        """The message with names and numbers blotted out: errors of one kind share a pattern."""
        text = re.sub(r"'[^' ]*'", "'_'", self.message)
        text = re.sub(r"\([^()]{40,}\)", "(...)", text)
        text = re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "N", text)
        return f"{self.error_type}: {text[:160]}"

    @property
    def signature(self):
        """What identifies one bug: the crash reason and the error's pattern."""
        return f"{self.why} | {self.pattern}"


# ---------------------------------------------------------------- seeds

def implementations():
    """{className: class} of every bundled implementation: the fuzz reaches their code too."""
    impl = Implementations()
    impl.add_source(str(ROOT / "layers"))
    impl.add_source(str(ROOT / "workbench" / "examples" / "layers"))
    return dict(impl.classes)


def built_seeds():
    """Small models built here: custom layers with parameters, control flow, N-D and rank-5 layers."""
    return {"custom_chain": _custom_chain(), "control": _control(), "nd_tensors": _nd_tensors(),
            "rank5_classic": _rank5_classic()}


def seed_models(corpus=True, max_bytes=None):
    """[(name, bytes)], smallest first (hypothesis shrinks towards the first seed)."""
    seeds = {name: spec.SerializeToString() for name, spec in built_seeds().items()}
    seeds["example.mlmodel"] = (ROOT / "workbench" / "examples" / "example.mlmodel").read_bytes()
    if corpus and CORPUS.is_dir():
        for path in sorted(CORPUS.glob("*.mlmodel")):
            seeds[path.name] = shrink_images(path.read_bytes())
    items = [(n, b) for n, b in seeds.items() if max_bytes is None or len(b) <= max_bytes]
    return sorted(items, key=lambda item: len(item[1]))


def shrink_images(data):
    """Make image inputs at most MAX_SEED_IMAGE_SIDE a side (fixed or flexible sizes)."""
    spec = Model_pb2.Model()
    spec.ParseFromString(data)
    nn = getattr(spec, spec.WhichOneof("Type"))
    if any(p.WhichOneof("preprocessor") == "meanImage" for p in getattr(nn, "preprocessing", [])):
        return data                                    # the mean image fixes the size
    for f in spec.description.input:
        if f.type.WhichOneof("Type") != "imageType":
            continue
        t = f.type.imageType
        if t.width > MAX_SEED_IMAGE_SIDE or t.height > MAX_SEED_IMAGE_SIDE:
            scale = MAX_SEED_IMAGE_SIDE / max(t.width, t.height)
            t.width, t.height = max(8, int(t.width * scale) // 8 * 8), max(8, int(t.height * scale) // 8 * 8)
        if t.WhichOneof("SizeFlexibility") == "imageSizeRange":
            t.imageSizeRange.widthRange.lowerBound = t.width
            t.imageSizeRange.heightRange.lowerBound = t.height
    return spec.SerializeToString()


def _builder(inputs, exact=True):
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    return NeuralNetworkBuilder([(n, datatypes.Array(*s)) for n, s in inputs], [("y", None)],
                                disable_rank5_shape_mapping=exact)


def _custom_chain():
    b = _builder([("x", (2, 3))])
    for i, (name, params) in enumerate([("Swish", {"beta": 0.5}), ("Mish", {})]):
        p = NeuralNetwork_pb2.CustomLayerParams()
        p.className = name
        for key, value in params.items():
            p.parameters[key].doubleValue = value
        b.add_custom(name=f"custom{i}", input_names=["x" if i == 0 else "t0"],
                     output_names=["t0" if i == 0 else "y"], custom_proto_spec=p)
    return b.spec


def _control():
    b = _builder([("x", (1,))])
    b.add_copy("seed_state", "x", "state")
    loop = b.add_loop("loop", max_iterations=3)
    body = _sub_builder(loop.loop.bodyNetwork)
    body.add_elementwise("grow", ["state", "x"], "state_next", mode="ADD")
    body.add_copy("carry", "state_next", "state")
    branch = b.add_branch("branch", "x")
    then = _sub_builder(branch.branch.ifBranch)
    then.add_activation("relu", "RELU", "state", "y")
    orelse = _sub_builder(branch.branch.elseBranch)
    orelse.add_activation("sigmoid", "SIGMOID", "state", "y")
    b.add_copy("out", "y", "y_final")
    b.spec.description.output[0].name = "y_final"
    return b.spec


def _sub_builder(nn):
    from coremltools.models.neural_network import NeuralNetworkBuilder
    return NeuralNetworkBuilder(nn_spec=nn, disable_rank5_shape_mapping=True)


def _nd_tensors():
    b = _builder([("x", (2, 3, 4))])
    b.add_add_broadcastable("sum", ["x", "x"], "s")
    b.add_concat_nd("cat", ["s", "x"], "c", axis=1)
    b.add_transpose("tr", [0, 2, 1], "c", "t")
    b.add_reshape_static("rs", "t", "r", [2, 24])
    b.add_softmax_nd("sm", "r", "y", axis=-1)
    return b.spec


def _rank5_classic():
    b = _builder([("x", (3, 6, 6))], exact=False)
    w = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3) / 50 - 0.5
    b.add_convolution("conv", 3, 2, 3, 3, 1, 1, "same", 1, w.transpose(2, 3, 1, 0), None, False,
                      input_name="x", output_name="c")
    b.add_pooling("pool", 2, 2, 2, 2, "MAX", "VALID", "c", "p")
    b.add_upsample("up", 2, 2, "p", "u")
    b.add_inner_product("fc", np.ones((4, 72), np.float32) / 72, None, 72, 4, False, "u", "y")
    spec = b.spec
    spec.specificationVersion = 1
    return spec


# ---------------------------------------------------------------- one case

def example_inputs(spec):
    """Deterministic inputs of each input's default shape, or None when one has none (then the
    case is load only). PIL images for image inputs, as predict wants them."""
    from PIL import Image

    from workbench.runtime.spec import array_shape, image_size
    rng = np.random.default_rng(0)
    inputs = {}
    for f in spec.description.input:
        kind = f.type.WhichOneof("Type")
        if kind == "imageType":
            size = image_size(f)
            if not size or min(size) <= 0 or size[0] * size[1] > 1 << 24:
                return None
            gray = f.type.imageType.colorSpace in (10, 40)
            shape = (size[1], size[0]) if gray else (size[1], size[0], 3)
            inputs[f.name] = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), "L" if gray else "RGB")
        elif kind == "multiArrayType":
            shape = array_shape(f)
            if shape is None or any(d < 0 for d in shape) or np.prod(shape, dtype=float) > 1 << 24:
                return None
            inputs[f.name] = rng.uniform(-1, 1, shape).astype(np.float32)
        elif kind in ("int64Type", "doubleType"):
            inputs[f.name] = np.array([1.0])
        else:
            return None
    return inputs


@contextlib.contextmanager
def time_limit(seconds):
    """Raise Hang in the main thread after ``seconds`` (only between Python bytecodes)."""
    def fire(signum, frame):
        raise Hang(f"ran past {seconds} s")
    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def memory_ceiling(extra_bytes=3 << 30):
    """Cap this process's address space at its current size plus ``extra_bytes`` (soft limit,
    restored after), so an unchecked huge allocation is a MemoryError, not the OOM killer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    size = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    cap = size + extra_bytes if hard == resource.RLIM_INFINITY else min(size + extra_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run_case(data, layers, seconds=20.0, limits=FUZZ_LIMITS):
    """Load ``data`` and predict once on default inputs; classify what happened."""
    try:
        with time_limit(seconds), np.errstate(all="ignore"):
            model = wb.load(data, layers=layers, limits=limits)
            inputs = example_inputs(model.spec)
            if inputs is not None:
                model.predict(inputs)
    except Hang as e:
        return Outcome("crash", "Hang", str(e), "hang")
    except WorkbenchError as e:
        message = str(e)
        cause = _root_cause(e)
        if isinstance(cause, (MemoryError, RecursionError)):
            return Outcome("crash", type(e).__name__, message, f"unchecked {type(cause).__name__}")
        if MODEL_NAME not in message:
            return Outcome("crash", type(e).__name__, message, "message does not name the model")
        return Outcome("error", type(e).__name__, message)
    except KeyboardInterrupt:
        raise
    except BaseException as e:                      # noqa: B036 — the contract forbids all of these
        return Outcome("crash", type(e).__name__, f"{e}"[:2000], "not a workbench error")
    return Outcome("ok")


def _root_cause(exc):
    seen = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


class Stats:
    """Counts of cases and of distinct error patterns, for the fuzz report."""

    def __init__(self):
        self.cases, self.ok, self.started = 0, 0, time.time()
        self.errors = {}              # pattern -> count
        self.crashes = {}             # signature -> count

    def add(self, outcome):
        self.cases += 1
        if outcome.kind == "ok":
            self.ok += 1
        elif outcome.kind == "error":
            self.errors[outcome.pattern] = self.errors.get(outcome.pattern, 0) + 1
        else:
            self.crashes[outcome.signature] = self.crashes.get(outcome.signature, 0) + 1

    def as_dict(self):
        return {"cases": self.cases, "ok": self.ok, "errors": self.errors, "crashes": self.crashes,
                "seconds": round(time.time() - self.started, 1)}
