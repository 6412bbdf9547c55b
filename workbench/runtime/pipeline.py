"""Pipelines: a sequence of models that pass features to each other by name.

Model.proto's ``Pipeline`` (and ``PipelineClassifier`` / ``PipelineRegressor``, which wrap one)
runs its models in order over one pool of features: the pipeline's inputs, then each stage's
outputs. A stage reads the features its own description names and adds the ones it outputs; the
pipeline answers with the features its description lists. A classifier pipeline answers like a
classifier because its last stage is one: its label and probability dict are that stage's outputs.

Each neural network stage is planned as a ``Model`` of its own (nested pipelines as a
``PipelineModel``), with one set of custom layer implementations shared across stages.

Blob names are namespaced: ``trace``, ``layers`` and ``blob_shapes`` name a blob
``"<stage>/<blob>"``, where ``<stage>`` is the stage's entry in ``Pipeline.names`` or, as
Model.proto defaults, ``model0``, ``model1``, ... Each stage was made on its own (often converted
separately) and keeps its own blob namespace, so two stages commonly both hold a blob called
``input`` or ``var_12``; without the prefix one would hide the other.
"""
import numpy as np

from ..errors import InputError, MissingImplementationError, ModelFormatError, UnsupportedLayerError
from . import spec as specmod
from .live import LiveImplementations
from .registry import Implementations

PIPELINE_TYPES = ("pipeline", "pipelineClassifier", "pipelineRegressor")


def pipeline_message(spec):
    """The ``Pipeline`` message of a pipeline, pipelineClassifier or pipelineRegressor spec."""
    kind = spec.WhichOneof("Type")
    return spec.pipeline if kind == "pipeline" else getattr(spec, kind).pipeline


def stage_names(pipe, model_name):
    """Pipeline.names, or Model.proto's default model0, model1, ...; unique, for namespacing."""
    names = [pipe.names[i] if i < len(pipe.names) and pipe.names[i] else f"model{i}"
             for i in range(len(pipe.models))]
    seen = set()
    for name in names:
        if name in seen:
            raise ModelFormatError(f"{model_name}: two pipeline stages are named '{name}'; stage names "
                                   f"must be unique (they namespace each stage's blobs)")
        seen.add(name)
    return names


class Stage:
    """One model of a pipeline: its index, name, model type and loaded model."""

    def __init__(self, index, name, kind, model):
        self.index, self.name, self.kind, self.model = index, name, kind, model

    def __repr__(self):
        return f"<Stage {self.index} {self.name!r}: {self.kind}>"


class PipelineModel(specmod.WholeSpecMixin, LiveImplementations):
    """A loaded pipeline of neural networks, with Model's public contract. Build with ``wb.load``.
    ``spec``, ``payloads`` and ``whole`` as for Model."""

    def __init__(self, spec, name="<model>", path=None, layers=None, limits=None, payloads=None, whole=None):
        from .model import Model
        self._hold_spec(spec, payloads, whole)
        self.name, self.path = name, path
        self.model_name = name
        self.type = spec.WhichOneof("Type")
        if self.type not in PIPELINE_TYPES:
            raise ModelFormatError(f"{name}: a model of type '{self.type}' is not a pipeline")
        self.spec_version = spec.specificationVersion
        self.implementations = Implementations()
        self.implementations.add_source(layers)
        pipe = pipeline_message(spec)
        if not len(pipe.models):
            raise ModelFormatError(f"{name}: the {self.type} has no models")
        available = {f.name for f in spec.description.input}
        self.stages = []
        for index, (stage_name, stage_spec) in enumerate(zip(stage_names(pipe, name), pipe.models)):
            kind = stage_spec.WhichOneof("Type")
            if kind not in specmod.NEURAL_NETWORK_TYPES + PIPELINE_TYPES:
                raise UnsupportedLayerError(
                    f"{name}: pipeline stage {index} ('{stage_name}') is a '{kind}' model; this runtime runs "
                    f"neural network stages (neuralNetwork, neuralNetworkClassifier, neuralNetworkRegressor) "
                    f"and pipelines of them")
            for f in stage_spec.description.input:
                if f.name not in available and not f.type.isOptional:
                    raise ModelFormatError(f"{name}: pipeline stage {index} ('{stage_name}') reads feature "
                                           f"'{f.name}', which neither the pipeline's inputs nor an earlier "
                                           f"stage provides")
            cls = PipelineModel if kind in PIPELINE_TYPES else Model
            model = cls(stage_spec, name=f"{name} stage {index} '{stage_name}'",
                        layers=dict(self.implementations.classes), limits=limits, payloads=payloads,
                        whole=whole.stage(index) if whole is not None else None)
            self.stages.append(Stage(index, stage_name, kind, model))
            available.update(f.name for f in stage_spec.description.output)
        missing = [f.name for f in spec.description.output if f.name not in available]
        if missing:
            raise ModelFormatError(f"{name}: output(s) {', '.join(missing)} are produced by no pipeline stage")
        self.blob_shapes = self._namespaced(lambda s: s.model.blob_shapes)

    # ------------------------------------------------------------ running
    def missing_implementations(self):
        return sorted({c for s in self.stages for c in s.model.missing_implementations()})

    def _run(self, inputs):
        """(answer, namespaced blobs): the stages in order over one pool of features."""
        missing = self.missing_implementations()
        if missing:
            raise MissingImplementationError(self.name, missing)
        pool = self._check_inputs(inputs)
        blobs = {}
        for stage in self.stages:
            reads = {f.name: pool[f.name] for f in stage.model._structure.description.input if f.name in pool}
            answer, scope = run_model(stage.model, reads)
            pool.update(answer)
            blobs.update((f"{stage.name}/{blob}", value) for blob, value in scope.items())
        self.blob_shapes = {name: tuple(np.shape(v)) for name, v in blobs.items()}
        return {f.name: pool[f.name] for f in self._structure.description.output}, blobs

    def _check_inputs(self, inputs):
        if not isinstance(inputs, dict):
            raise InputError(f"{self.name}: predict takes a dict of input name -> value, "
                             f"got {type(inputs).__name__}")
        declared = {f.name: f for f in self._structure.description.input}
        unknown = sorted(set(inputs) - set(declared))
        if unknown:
            raise InputError(f"{self.name}: unknown input(s) {', '.join(unknown)}; "
                             f"the pipeline's inputs are {', '.join(sorted(declared))}")
        for f in declared.values():
            if f.name not in inputs and not f.type.isOptional:
                raise InputError(f"{self.name}: missing input '{f.name}' ({specmod.describe_type(f)})")
        return dict(inputs)

    def trace(self, inputs):
        """Every blob of every stage after one prediction, named ``"<stage>/<blob>"``."""
        return self._run(inputs)[1]

    def predict(self, inputs):
        """The pipeline's output features, as coremltools' MLModel.predict gives them on macOS."""
        return self._run(inputs)[0]

    # ------------------------------------------------------------ live implementations
    @property
    def _custom_steps(self):
        return [step for s in self.stages for step in s.model._custom_steps]

    def check(self, inputs=None):
        """Check every custom layer of every stage against MLCustomLayer's contract (see Model.check)."""
        from ..testing.modelcheck import check_model     # here, not at import: testing builds on runtime
        return check_model(self, inputs)

    def _swapped(self, classes):
        for stage in self.stages:
            _add_classes(stage.model, classes)

    # ------------------------------------------------------------ description
    @property
    def custom_layers(self):
        """Every stage's custom layer records, in stage order."""
        return [r for s in self.stages for r in s.model.custom_layers]

    @property
    def layers(self):
        """(name, kind, inputs, outputs) of each top-level layer of every stage, names namespaced."""
        def prefix(stage, names):
            return [f"{stage.name}/{n}" for n in names]
        return [(f"{s.name}/{name}", kind, prefix(s, ins), prefix(s, outs))
                for s in self.stages for name, kind, ins, outs in s.model.layers]

    @property
    def input_description(self):
        return {f.name: specmod.describe_type(f) for f in self._structure.description.input}

    @property
    def output_description(self):
        return {f.name: specmod.describe_type(f) for f in self._structure.description.output}

    def summary(self):
        """The pipeline's features, then each stage's summary (what `workbench inspect` prints)."""
        from .summary import pipeline_summary
        return pipeline_summary(self)

    def _namespaced(self, get):
        return {f"{s.name}/{key}": value for s in self.stages for key, value in get(s).items()}

    def __repr__(self):
        custom = ", ".join(sorted({r.class_name for r in self.custom_layers})) or "none"
        kinds = ", ".join(s.kind for s in self.stages)
        return (f"<workbench.Model {self.name!r}: {self.type}, spec {self.spec_version}, "
                f"{len(self.stages)} stages ({kinds}), custom: {custom}>")


def run_model(model, inputs):
    """(answer, blobs) of one stage: a nested pipeline, or a neural network traced then answered."""
    if isinstance(model, PipelineModel):
        return model._run(inputs)
    scope = model.trace(inputs)
    return model.io.answer(scope, model._output_blobs.__getitem__), scope


def _add_classes(model, classes):
    if isinstance(model, PipelineModel):
        for stage in model.stages:
            _add_classes(stage.model, classes)
    model.implementations.classes.update(classes)
