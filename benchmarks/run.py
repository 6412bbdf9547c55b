"""Benchmark: the workbench runtime against PyTorch eager, on the CPU, in one process.

Four networks are built in PyTorch (a ResNet-18, a MobileNetV2, a transformer encoder block and a
2-layer LSTM), converted by coremltools to NeuralNetwork models, and predicted by both, with the
same thread count for PyTorch and for numpy's BLAS. Printed per network: median predict times and
their ratio, interleaved run by run and again settled (blocks of runs of one framework, each after
a pause: with more than one thread, interleaved runs start while the other library's idle workers
still spin on the second core), load time against a bare protobuf parse of the same file, peak
memory of a load and of a prediction, and the agreement with PyTorch. Then the edit loop:
``model.use(cls)`` and rerunning the bundled example's test cases with their plots.

    python benchmarks/run.py [--threads N] [--repeat R] [--only resnet18,lstm]

``make bench`` runs it. No timing here is asserted anywhere: it measures, it does not test.
"""
import argparse
import contextlib
import gc
import io
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import workbench as wb  # noqa: E402


# ---------------------------------------------------------------- the networks (inline: no torchvision)

class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 layout: 7x7 stem, 4 stages of 2 basic blocks, 1000 classes."""

    def __init__(self, classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, c = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(c, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, c_in, c_out, stride, expand):
        super().__init__()
        h = c_in * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6()]
        layers += [nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
                   nn.Conv2d(h, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    """torchvision's mobilenet_v2 layout (width 1.0): 17 inverted residual blocks, 1000 classes."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, classes=1000):
        super().__init__()
        layers = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
        c = 32
        for t, c_out, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        layers += [nn.Conv2d(c, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class EncoderBlock(nn.Module):
    """A pre-norm transformer encoder block: multi-head self-attention and a GELU MLP."""

    def __init__(self, d=256, heads=8, batch=1, steps=128):
        super().__init__()
        self.d, self.heads, self.batch, self.steps = d, heads, batch, steps
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        # Sizes are constants: coremltools 9 cannot convert int() of traced shapes under torch 2.13.
        b, t, d, dh = self.batch, self.steps, self.d, self.d // self.heads
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, dh).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / dh ** 0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class LSTMNet(nn.Module):
    """A 2-layer LSTM over [T, batch, features] and a linear read-out of every step."""

    def __init__(self, features=128, hidden=256, layers=2, classes=32):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.fc(y)


NETWORKS = {
    "resnet18": (ResNet18, (1, 3, 224, 224)),
    "mobilenet_v2": (MobileNetV2, (1, 3, 224, 224)),
    "transformer": (EncoderBlock, (1, 128, 256)),
    "lstm": (LSTMNet, (100, 8, 128)),
}


# ---------------------------------------------------------------- measuring

def build(name, folder):
    """(module, example input, path of the converted .mlmodel)."""
    import coremltools as ct
    cls, shape = NETWORKS[name]
    torch.manual_seed(0)
    module = cls().eval()
    for m in module.modules():                   # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(*shape)
    with torch.no_grad():
        traced = torch.jit.trace(module, (x,))
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=shape)],
                             convert_to="neuralnetwork")
    path = Path(folder) / f"{name}.mlmodel"
    mlmodel.save(str(path))
    return module, x, path


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


SETTLE_S = 0.3          # longer than OpenBLAS's and OpenMP's idle workers spin before they sleep


def settled_block(fn, warm=3, runs=5):
    """Seconds of ``runs`` calls of ``fn``, timed after a pause and ``warm`` untimed calls."""
    time.sleep(SETTLE_S)
    for _ in range(warm):
        fn()
    return [timed(fn) for _ in range(runs)]


def median_ms(samples):
    return 1000 * statistics.median(samples)


def bare_parse(path):
    from coremltools.proto import Model_pb2
    spec = Model_pb2.Model()
    spec.ParseFromString(Path(path).read_bytes())
    return spec


def peak_bytes(fn):
    """Peak bytes numpy (and Python) allocated while ``fn`` ran, above what was live before."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(name, folder, repeat):
    module, x, path = build(name, folder)
    feed = {"x": x.numpy()}
    load_ours = [timed(lambda: wb.load(path)) for _ in range(max(3, repeat // 2))]
    load_parse = [timed(lambda: bare_parse(path)) for _ in range(max(3, repeat // 2))]
    model = wb.load(path)
    out_name = model.spec.description.output[0].name
    with torch.no_grad():
        ref = module(x).numpy()
        got = model.predict(feed)[out_name]
        for _ in range(2):                       # warm both (allocator, BLAS buffers, caches)
            module(x)
            model.predict(feed)
        ours, theirs = [], []
        for _ in range(repeat):                  # interleaved: drift and turbo hit both alike
            ours.append(timed(lambda: model.predict(feed)))
            theirs.append(timed(lambda: module(x)))
        # settled: blocks of runs of one framework at a time, each after a pause in which the
        # other library's idle workers stop spinning (OpenBLAS's spin for about 2^28 cycles,
        # OpenMP's for a spin count), with warm-up runs dropped. Interleaved, each run starts
        # while those workers still spin on the second core, and which library that hurts more
        # decides the ratio (README "Speed")
        ours_settled, theirs_settled = [], []
        for _ in range(max(3, repeat // 5)):
            ours_settled += settled_block(lambda: model.predict(feed))
            theirs_settled += settled_block(lambda: module(x))
    scale = max(1.0, float(np.abs(ref).max()))
    error = float(np.abs(got - ref).max()) / scale
    return {
        "network": name, "ours_ms": median_ms(ours), "torch_ms": median_ms(theirs),
        "ours_settled_ms": median_ms(ours_settled), "torch_settled_ms": median_ms(theirs_settled),
        "load_ms": median_ms(load_ours), "parse_ms": median_ms(load_parse),
        "predict_peak_mb": peak_bytes(lambda: model.predict(feed)) / 2 ** 20,
        "load_peak_mb": peak_bytes(lambda: wb.load(path)) / 2 ** 20,
        "file_mb": path.stat().st_size / 2 ** 20,
        "max_rel_error": error,
    }


def edit_loop(repeat):
    """Median seconds of the edit loop on the bundled example: (use + run_tests, drawing the plot).

    The loop is what a person does in the notebook: re-run the cell defining the class, apply it
    (``model.use``), rerun the PyTorch test cases (``wb.run_tests``) and look at the report's plot,
    drawn to pixels as the notebook shows it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from workbench import examples
    model = wb.load(examples.example_path(), layers=examples.example_layers_dir())
    cases = examples.example_cases()
    source = (examples.example_layers_dir() / "ScaledSwish.py").read_text()
    state = {}

    def edit_and_rerun():
        namespace = {"__name__": "edited_layer"}
        exec(compile(source, "ScaledSwish.py", "exec"), namespace)       # the user's edited cell
        model.use(namespace["ScaledSwish"])
        state["report"] = wb.run_tests(model, cases, progress=False)

    def plot():
        FigureCanvasAgg(state["report"].plot()).draw()

    edit_and_rerun()
    plot()                                        # warm (matplotlib font cache, imports)
    runs, plots = [], []
    for _ in range(repeat):
        runs.append(timed(edit_and_rerun))
        plots.append(timed(plot))
    return statistics.median(runs), statistics.median(plots), len(state["report"].results), \
        state["report"].passed


# ---------------------------------------------------------------- reporting

def machine(threads):
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}, "
            f"{i.get('num_threads')} threads)" for i in threadpool_info() if i.get("user_api") == "blas"
            and "numpy" in (i.get("filepath") or "")]
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    return (f"{platform.system()} {platform.machine()}, nproc {os.cpu_count()}, {cpu}; "
            f"threads {threads} (torch and BLAS); numpy {np.__version__} BLAS: {', '.join(blas) or '?'}; "
            f"torch {torch.__version__}; python {platform.python_version()}"
            + (f"; env {env}" if env else "")
            + f"; load average at start {os.getloadavg()[0]:.1f}")


def table(rows):
    head = ("| network | ours ms | PyTorch ms | ratio | settled: ours ms | PyTorch ms | ratio | load ms | "
            "parse ms | load/parse | file MB | load peak MB | predict peak MB | max rel error |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['network']} | {r['ours_ms']:.1f} | {r['torch_ms']:.1f} | "
                     f"{r['ours_ms'] / r['torch_ms']:.2f} | {r['ours_settled_ms']:.1f} | "
                     f"{r['torch_settled_ms']:.1f} | {r['ours_settled_ms'] / r['torch_settled_ms']:.2f} | {r['load_ms']:.1f} | "
                     f"{r['parse_ms']:.1f} | {r['load_ms'] / r['parse_ms']:.2f} | {r['file_mb']:.1f} | "
                     f"{r['load_peak_mb']:.1f} | {r['predict_peak_mb']:.1f} | {r['max_rel_error']:.1e} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--only", default=",".join(NETWORKS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads, user_api="blas"), tempfile.TemporaryDirectory() as folder:
        print(machine(args.threads), flush=True)
        rows = []
        for name in args.only.split(","):
            rows.append(measure(name, folder, args.repeat))
            print(f"  {name}: done", file=sys.stderr, flush=True)
        print()
        print(table(rows))
        run_s, plot_s, count, passed = edit_loop(max(5, args.repeat // 2))
        print(f"\nedit loop on the bundled example: model.use + run_tests on {count} cases "
              f"{1000 * run_s:.0f} ms (cases {'pass' if passed else 'FAIL'}), drawing the report's plot "
              f"{1000 * plot_s:.0f} ms, total {1000 * (run_s + plot_s):.0f} ms")
        print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
