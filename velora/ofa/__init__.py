"""velora's own OFA implementation (numerically matched to the reference): config, model, visual-entailment head,
processor, checkpoint I/O."""

from velora.ofa.config import OFAConfig
from velora.ofa.entailment import OFAForVisualEntailment
from velora.ofa.model import OFAModel
from velora.ofa.processor import OFAProcessor

__all__ = ["OFAConfig", "OFAForVisualEntailment", "OFAModel", "OFAProcessor"]
