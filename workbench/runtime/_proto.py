"""The Core ML protobuf classes, taken from coremltools' generated modules.

coremltools prints a few 'Failed to load _MLModelProxy' lines on Linux when imported; they are
harmless (the native predictor is macOS-only and not used here), so they are silenced.
"""
import contextlib
import io
import logging
import warnings


@contextlib.contextmanager
def _quiet():
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logger.setLevel(level)


with _quiet():
    from coremltools.proto import FeatureTypes_pb2, Model_pb2, NeuralNetwork_pb2  # noqa: F401

__all__ = ["FeatureTypes_pb2", "Model_pb2", "NeuralNetwork_pb2"]
