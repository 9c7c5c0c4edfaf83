"""SGLD settings: :class:`SGLDConfig` (defined in :mod:`bifrepro.sgld_config`, below the traces).

The dataclass lives at the lowest layer because a trace store records the settings that produced
it; this module keeps the import path ``bifrepro.sampling.config`` working.
"""

from bifrepro.sgld_config import SGLDConfig

__all__ = ["SGLDConfig"]
