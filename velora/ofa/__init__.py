"""velora's own OFA implementation (numerically matched to the reference), its checkpoint I/O and preprocessing."""

from velora.ofa.config import OFAConfig
from velora.ofa.model import OFAModel

__all__ = ["OFAConfig", "OFAModel"]
