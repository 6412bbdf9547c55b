"""Built-in NeuralNetwork layer kernels, one family per module, in an explicit registry.

``KERNELS`` maps a layer kind (the name of the field set in NeuralNetworkLayer's ``layer``
oneof) to its kernel class. Importing this package imports every family module, which is what
fills the registry; there is no other discovery.
"""
from ._base import KERNELS, Context, Kernel, kernel  # noqa: F401
from . import (  # noqa: F401  (imported for their registrations)
    activation,
    conv,
    control,
    elementwise,
    indexing,
    layout,
    linear,
    normalization,
    pooling,
    recurrent,
    reduce,
    resample,
    sampling,
    tensor,
)

__all__ = ["KERNELS", "Context", "Kernel", "kernel"]
