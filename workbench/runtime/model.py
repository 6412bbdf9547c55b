"""Load a Core ML model, plan it once, predict, trace intermediates, swap implementations live."""
import contextlib
import threading

import numpy as np

from ..errors import (ImplementationError, MissingImplementationError, ModelFormatError,
                      UnsupportedLayerError, WorkbenchError)
from . import spec as specmod
from .features import FeatureIO
from .fusion import fuse
from .limits import DEFAULT_LIMITS, merged as merged_limits  # noqa: F401  (DEFAULT_LIMITS: public)
from .plan import Planner, RunState
from .live import LiveImplementations
from .registry import Implementations
from .spec import WholeSpecMixin


def load(source, layers=None, limits=None):
    """Load a model from a .mlmodel path, bytes, a Model_pb2.Model spec or a coremltools MLModel.

    ``layers`` says where custom layer implementations come from: a folder (every .py in it), a
    .py file, a module, a class, a list of these, or a mapping {className: class}; classes made
    with ``@wb.custom_layer`` (or CustomLayer subclasses defined in a notebook) are found too.
    A model whose implementations are missing still loads; predict then names what is missing.
    """
    spec, name, path, payloads, whole = specmod.open_model(source)
    if spec.WhichOneof("Type") in ("pipeline", "pipelineClassifier", "pipelineRegressor"):
        from .pipeline import PipelineModel
        cls = PipelineModel
    else:
        cls = Model
    return cls(spec, name=name, path=path, layers=layers, limits=limits, payloads=payloads, whole=whole)


class Model(WholeSpecMixin, LiveImplementations):
    """A loaded, planned Core ML neural network. Build with ``wb.load``.

    ``spec`` may be the model's structure alone (weights cut out, see _wire.py): then
    ``payloads`` holds the weights and ``whole()`` gives the whole spec, which ``model.spec``
    parses at its first use.
    """

    def __init__(self, spec, name="<model>", path=None, layers=None, limits=None, payloads=None, whole=None):
        self._hold_spec(spec, payloads, whole)
        self.name, self.path = name, path
        self.model_name = name
        self.type = spec.WhichOneof("Type")
        if self.type not in specmod.NEURAL_NETWORK_TYPES:
            raise UnsupportedLayerError(
                f"{name}: the model is of type '{self.type}'; this runtime runs neural networks "
                f"(neuralNetwork, neuralNetworkClassifier, neuralNetworkRegressor)")
        self._nn = getattr(spec, self.type)
        self.spec_version = spec.specificationVersion
        self.rank5 = self._nn.arrayInputShapeMapping == 0
        self.limits = merged_limits(limits)
        self.io = FeatureIO(spec, self._nn, self.type, self.rank5, name)
        self.implementations = Implementations()
        self.implementations.add_source(layers)
        self.state = RunState(name, self.limits)
        self._running = threading.RLock()
        self._plan()
        self._bind_implementations()
        self.blob_shapes = self._shape_pass()

    # ------------------------------------------------------------ planning
    def _plan(self):
        if not len(self._nn.layers):
            raise ModelFormatError(f"{self.name}: the neural network has no layers")
        planner = Planner(self.state, self.rank5, self.spec_version, self._payloads)
        self.network = planner.plan(self._nn.layers, [f.name for f in self.io.inputs])
        self._custom_steps = planner.custom_steps
        self.custom_layers = [s.record for s in self._custom_steps]
        last = list(self._nn.layers[-1].output)
        self._output_blobs = {}
        for f in self.io.outputs:
            if f.name in self.network.produced:
                self._output_blobs[f.name] = f.name
        if self.type == "neuralNetworkClassifier":
            blob = self.io.probability_blob(last[0] if last else "")
            if blob not in self.network.produced:
                raise ModelFormatError(f"{self.name}: the classifier reads probabilities from blob '{blob}', "
                                       f"which no layer produces")
            self._output_blobs[None] = blob
            classifier = self.io._classifier_names()
        else:
            classifier = set()
        missing = [f.name for f in self.io.outputs if f.name not in self._output_blobs and f.name not in classifier]
        if missing:
            raise ModelFormatError(f"{self.name}: output(s) {', '.join(missing)} are produced by no layer")
        keep = set(self._output_blobs.values()) | {f.name for f in self.io.outputs}
        fused = fuse(self.network, keep)
        self.fused_chain_layers, self.chains_in_convolutions = fused["chain layers"], fused["chains in convolutions"]
        self.fused_activations, self.fused_layer_norms = fused["activations"], fused["layer norms"]

    def _bind_implementations(self):
        for step in self._custom_steps:
            cls = self.implementations.lookup(step.record.class_name)
            if cls is not None:
                step.instantiate(cls)

    def _shape_pass(self):
        """Run the network once on zeros of the default input shapes, evaluating no custom layer.

        This is Core ML's load-time ``output_shapes`` call for each custom layer, and gives every
        blob's shape for the shape view. A model whose shapes depend on data, or whose
        implementations are missing, is shaped as far as the pass gets; the rest at predict.
        """
        defaults = self.io.default_inputs(self.limits)
        if defaults is None:
            return {}
        scope = self.io.to_blobs(defaults, raw_images=True, copy=False)
        self.state.shapes_only = True
        try:
            with np.errstate(all="ignore"):
                self.network.run(scope)
        except MissingImplementationError:
            pass
        except WorkbenchError as e:
            if e.__class__.__name__ == "LayerError" and getattr(e, "class_name", None):
                raise
        finally:
            self.state.shapes_only = False
        return {name: tuple(v.shape) for name, v in scope.items()}

    # ------------------------------------------------------------ running
    def missing_implementations(self):
        return sorted({s.record.class_name for s in self._custom_steps if s.record.instance is None})

    def trace(self, inputs):
        """Every blob of the network by name, after one prediction (intermediates included)."""
        return self._run(inputs, reuse_buffers=False)

    def predict(self, inputs):
        """Outputs by name, the way coremltools' MLModel.predict answers on macOS."""
        with self._running:
            scope = self._run(inputs, reuse_buffers=True)
            # kernels reused their arrays, so the answer must not be a blob or a view of one:
            # FeatureIO.answer converts every output into a new array (or image, or number)
            return self.io.answer(scope, self._output_blobs.__getitem__)

    def _run(self, inputs, reuse_buffers):
        missing = self.missing_implementations()
        if missing:
            raise MissingImplementationError(self.name, missing)
        scope = self.io.to_blobs(inputs)
        with self.running(reuse_buffers), np.errstate(all="ignore"):
            self.network.run(scope)
        self.blob_shapes = {name: tuple(v.shape) for name, v in scope.items()}
        return scope

    @contextlib.contextmanager
    def running(self, reuse_buffers=False):
        """Hold the model for one run of its network (anything stepping through
        ``model.network`` must): runs are serialized, and kernels reuse their arrays only in an
        outermost run that asks for it (a custom layer calling back into its own model gets
        fresh ones, so the outer run's blobs stay intact)."""
        with self._running:
            outer = self.state.reuse_buffers
            self.state.reuse_buffers = reuse_buffers and self.state.depth == 0
            self.state.depth += 1
            try:
                yield
            finally:
                self.state.depth -= 1
                self.state.reuse_buffers = outer

    def __copy__(self):
        """A second handle on the same network, buffers and implementations (an edit applied
        through one applies to both), so also on the same run lock: the two never run at once
        and overwrite each other's buffers. ``copy.deepcopy`` gives an independent model."""
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        return twin

    def __getstate__(self):         # copy.deepcopy: a lock cannot be copied, the copy gets its own
        state = dict(self.__dict__)
        del state["_running"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._running = threading.RLock()
        self.state.depth, self.state.reuse_buffers = 0, False     # copied mid-run: not running

    def check(self, inputs=None):
        """Check every custom layer against MLCustomLayer's contract on this model's inputs.

        Runs ``wb.check_layer`` on each custom layer with the values it receives in a run on
        ``inputs`` (default: seeded random inputs of the model's default shapes); returns a
        ModelCheck (``.ok``, ``.checks``, ``.problems``). See workbench.testing.
        """
        from ..testing.modelcheck import check_model     # here, not at import: testing builds on runtime
        return check_model(self, inputs)

    # ------------------------------------------------------------ description
    @property
    def nn(self):
        """The NeuralNetwork message of the whole spec (weights included)."""
        return getattr(self.spec, self.type)

    @property
    def layers(self):
        """(name, kind, inputs, outputs) of each top-level layer, in order."""
        return [(l.name, l.WhichOneof("layer"), list(l.input), list(l.output)) for l in self._nn.layers]

    @property
    def input_description(self):
        return {f.name: specmod.describe_type(f) for f in self.io.inputs}

    @property
    def output_description(self):
        return {f.name: specmod.describe_type(f) for f in self.io.outputs}

    def summary(self):
        """Inputs, outputs, layer kinds and custom layers as plain text (what `workbench inspect` prints)."""
        from .summary import summary
        return summary(self)

    def __repr__(self):
        custom = ", ".join(sorted({r.class_name for r in self.custom_layers})) or "none"
        return (f"<workbench.Model {self.name!r}: {self.type}, spec {self.spec_version}, "
                f"{len(self._nn.layers)} layers, custom: {custom}>")


__all__ = ["load", "Model", "ImplementationError"]
