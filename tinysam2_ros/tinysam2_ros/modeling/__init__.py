"""SAM 2 family model components (one file each), presets and the builder."""
from .build import build_model
from .presets import PRESETS, get_preset

__all__ = ["build_model", "get_preset", "PRESETS"]
