"""Swapping implementations into a loaded model: ``use`` and ``reload``, shared by models and pipelines.

A swap is all or nothing: every affected layer runs ``__init__`` and ``set_weight_data`` with
the new class; if any of them fails (or the user interrupts a slow one), every layer keeps the
implementation it had.
"""
from .registry import Implementations


class LiveImplementations:
    """Mixin for objects with ``implementations`` (an Implementations) and ``_custom_steps``."""

    def use(self, *sources):
        """Add or replace implementations (classes, files, folders, modules, mappings) in this model.

        Each affected layer runs ``__init__`` and ``set_weight_data`` again, and ``output_shapes``
        at the next prediction. If any of them fails, every layer keeps its previous implementation.
        """
        staged = Implementations()
        for source in sources:
            staged.add_source(source)
        self._swap(staged.classes)
        self.implementations.merge(staged)

    def reload(self):
        """Recompile layer files changed on disk or new in a layers folder; drop deleted ones.

        Returns the classNames whose implementation changed (replaced, added or removed).
        """
        paths, deleted = self.implementations.pending()
        staged = Implementations()
        for path in paths:
            staged.load_file(path)
        removed = self.implementations.forget(deleted) - set(staged.classes)
        self._swap(staged.classes, removed)
        self.implementations.merge(staged)
        return sorted(set(staged.classes) | removed)

    def _swap(self, classes, removed=()):
        steps = [s for s in self._custom_steps if s.record.class_name in classes or s.record.class_name in removed]
        saved = [(s.record.implementation, s.record.instance, s.record.input_shapes, s.record.output_shapes)
                 for s in steps]
        try:
            for step in steps:
                if step.record.class_name in classes:
                    step.instantiate(classes[step.record.class_name])
                else:
                    step.record.implementation = step.record.instance = None
        except BaseException:          # a LayerError, or KeyboardInterrupt in a slow __init__
            for step, (impl, inst, ins, outs) in zip(steps, saved):
                r = step.record
                r.implementation, r.instance, r.input_shapes, r.output_shapes = impl, inst, ins, outs
            raise
        self._swapped(classes)

    def _swapped(self, classes):
        """Hook for models that keep other views of the classes (pipeline stages)."""
