"""Datasets as uint8 tensors plus device-side batching (docs/performance.md: why data stays on the device)."""

from sam_lab.data.base import Augment, DataBundle, DataError, ImageSet
from sam_lab.data.cifar import load_cifar
from sam_lab.data.compat import import_torchvision
from sam_lab.data.digits import load_digits
from sam_lab.data.loader import Batches, augment_batch, cutout, normalize
from sam_lab.data.synthetic import load_synthetic

__all__ = [
    "Augment",
    "Batches",
    "DataBundle",
    "DataError",
    "ImageSet",
    "augment_batch",
    "cutout",
    "import_torchvision",
    "load_cifar",
    "load_digits",
    "load_synthetic",
    "normalize",
]
