"""velora: LoRA adaptation of OFA visual entailment, from your data to a served model.

The Python API, one function or class per stage (each is also a `velora` subcommand):

    from velora import convert, train, evaluate, mine, merge, Predictor, OFAProcessor, pipeline

Names such as `velora.convert` are the stage functions; their modules stay importable as usual
(`from velora.convert import validate`).
"""

__version__ = "0.1.0"

from velora.convert import convert  # noqa: E402  (each import below rebinds a stage's name to its function)
from velora.evaluate import evaluate  # noqa: E402
from velora.merge import merge_lora as merge  # noqa: E402
from velora.mine import mine  # noqa: E402
from velora.ofa.processor import OFAProcessor  # noqa: E402
from velora.pipeline import pipeline  # noqa: E402
from velora.predictor import Prediction, Predictor  # noqa: E402
from velora.train import TrainConfig, train  # noqa: E402

__all__ = ["OFAProcessor", "Prediction", "Predictor", "TrainConfig", "convert", "evaluate", "merge", "mine",
           "pipeline", "train"]
