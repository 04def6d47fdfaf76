"""Import torchvision even when its compiled ops do not match the installed torch.

The PyPI torchvision wheel can be a CUDA build whose `_C` extension fails to load next to a CPU-only torch.
`import torchvision` then dies in `_meta_registrations` with `RuntimeError: operator torchvision::nms does
not exist`, because it registers fake kernels for ops whose schemas only the extension defines. We only need
the pure-Python parts (datasets), so defining the two schemas is enough for the import to succeed; calling
`torchvision.ops.nms` would still fail, which is fine for this project.
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch

# Schemas exactly as torchvision's C++ sources define them (csrc/ops/nms.cpp, quantized/cpu/qnms_kernel.cpp).
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARIES: list[torch.library.Library] = []  # the definitions live only as long as their Library object


def import_torchvision() -> ModuleType:
    """Return the torchvision module, defining the missing op schemas first if the plain import fails."""
    try:
        import torchvision
    except RuntimeError as err:
        if "operator torchvision::" not in str(err) or "does not exist" not in str(err):
            raise
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for name, schema in _SCHEMAS.items():
            if not hasattr(torch.ops.torchvision, name):
                lib.define(schema)
        _LIBRARIES.append(lib)
        for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[mod]  # half-imported modules would otherwise be reused as they are
        import torchvision
    return torchvision
