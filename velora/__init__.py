"""velora: LoRA adaptation of OFA visual entailment, from your data to a served model."""

__version__ = "0.1.0"
