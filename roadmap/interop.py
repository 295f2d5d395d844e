"""Public alias of `roadmap.models.interop` (state-dict exchange with torchvision and timm), under its old name."""
from .models.interop import (
    INTEROPS,
    InteropError,
    check_interop,
    check_layout,
    export_state_dict,
    import_state_dict,
    layout_misfits,
)

__all__ = ["INTEROPS", "InteropError", "check_interop", "check_layout", "export_state_dict", "import_state_dict",
           "layout_misfits"]
