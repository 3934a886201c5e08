"""`velora export onnx`: the scoring graph (normalised image + prompt token ids -> three label probabilities) as ONNX,
checked with onnxruntime against torch, optionally int8-quantized (dynamic) with the accuracy change measured.

A LoRA adapter is merged first (`velora.merge.merged_model`), so the graph is one plain OFA. Beside `model.onnx`
go `model.json` (what a consumer needs: input layout, image size, mean/std, prompt templates, answer ids, label
order) and the tokenizer files `vocab.json` + `merges.txt`; `OnnxPredictor.from_file("model.onnx")` uses them.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.export import Dim
from tqdm.auto import tqdm

from velora.data import ExampleSet, load_examples, score_examples
from velora.errors import VeloraError
from velora.io import check_output_file
from velora.evaluate import compute_metrics, predicted_labels
from velora.images import ImageSource
from velora.labels import ANSWER_WORDS, LABELS
from velora.merge import CHECK_TEXTS, check_images, human_size, merged_model
from velora.ofa.entailment import OFAForVisualEntailment
from velora.ofa.processor import OFAProcessor
from velora.predictor import Predictor
from velora.quantize import QuantizationPlan, group_of, plan_for

INPUT_NAMES = ["patch_images", "input_ids", "decoder_input_ids", "answer_positions"]
OUTPUT_NAME = "probabilities"
DYNAMIC_AXES = {"patch_images": {0: "batch"}, "input_ids": {0: "batch", 1: "length"},
                "decoder_input_ids": {0: "batch", 1: "decoder_length"}, "answer_positions": {0: "batch"},
                OUTPUT_NAME: {0: "batch"}}
TOLERANCE = 1e-4  # max |probability difference| of the fp32 graph vs torch
OPSET = 18  # the dynamo exporter's own; 17 works too (converted down)
INT8_OPS = ["MatMul", "Gemm"]
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # one .onnx file holds < 2 GB; larger weights go to a .data file beside it


class ScoringGraph(nn.Module):
    """(patch_images, input_ids, decoder_input_ids, answer_positions) -> (B, 3) probabilities in LABELS order;
    padding is read from the pad id, the answer token ids are the model's."""

    def __init__(self, model: OFAForVisualEntailment):
        super().__init__()
        self.model = model
        self.eval()  # export restores the mode it finds, for every submodule

    def forward(self, patch_images: torch.Tensor, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                answer_positions: torch.Tensor) -> torch.Tensor:
        attention_mask = input_ids.ne(self.model.config.pad_token_id)  # (B, L)
        logits = self.model(input_ids, decoder_input_ids, answer_positions, attention_mask,
                            patch_images=patch_images)  # (B, 3)
        return logits.float().softmax(-1)


def graph_inputs(processor: OFAProcessor, images: Sequence[ImageSource], premises: Sequence[str | None],
                 hypotheses: Sequence[str]) -> list[torch.Tensor]:
    """The graph's four inputs for a batch, preprocessed by the model's processor."""
    batch = processor(images, premises, hypotheses)
    return [batch[name] for name in INPUT_NAMES]


class OnnxPredictor:
    """Scores with an exported graph on onnxruntime; `probabilities` works like `Predictor.probabilities`."""

    def __init__(self, onnx_path: str | os.PathLike, processor: OFAProcessor, threads: int | None = None):
        import onnxruntime as ort  # deferred: onnxruntime is only needed by export

        self.path = Path(onnx_path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.processor = processor
        self.description = f"ONNX {self.path}"

    @classmethod
    def from_file(cls, onnx_path: str | os.PathLike, threads: int | None = None) -> "OnnxPredictor":
        """Load `model.onnx` with the `model.json` and tokenizer files written beside it by `export_onnx`."""
        path = Path(onnx_path)
        sidecar = path.with_suffix(".json")
        if not path.is_file() or not sidecar.is_file():
            raise VeloraError(f"{path}: need the .onnx file and its {sidecar.name} (written by `velora export onnx`)")
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in info["preprocess"].items()}
        return cls(path, OFAProcessor.from_pretrained(path.parent, **settings), threads)

    def run(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs)}
        return torch.from_numpy(self.session.run([OUTPUT_NAME], feeds)[0])

    def probabilities(self, images: Sequence[ImageSource], premises: Sequence[str | None],
                      hypotheses: Sequence[str], batch_size: int = 8, progress: bool = False) -> torch.Tensor:
        out = torch.empty(len(images), len(LABELS))
        for start in tqdm(range(0, len(images), batch_size), desc="onnx", disable=not progress):
            end = start + batch_size
            out[start:end] = self.run(graph_inputs(self.processor, images[start:end], premises[start:end],
                                                   hypotheses[start:end]))
        return out


# ---------------------------------------------------------------------------------------------------------------
# Export


@dataclass
class ExportResult:
    output: Path
    max_diff: float  # fp32 graph vs torch on the check examples
    size_bytes: int
    fp32_path: Path | None = None  # kept beside an int8 model
    fp32_size_bytes: int | None = None
    int8_max_diff: float | None = None
    int8_check_agreement: float | None = None  # same predicted label as torch, on the check examples
    eval: dict | None = None  # accuracy of fp32 / int8 graphs on --eval_file

    def summary(self) -> str:
        lines = [f"ONNX fp32 vs torch: max |probability difference| {self.max_diff:.2e} (limit {TOLERANCE:.0e}) "
                 f"on {len(CHECK_TEXTS) - 1} examples of another batch size and length than the export's"]
        if self.fp32_path is not None:
            lines.append(f"ONNX int8 vs torch: max |probability difference| {self.int8_max_diff:.2e}, same label "
                         f"on {self.int8_check_agreement:.0%} of the check examples")
            lines.append(f"Saved fp32 graph {self.fp32_path} ({human_size(self.fp32_size_bytes or 0)})")
        lines.append(f"Saved {self.output} ({human_size(self.size_bytes)}) with {self.output.with_suffix('.json').name}"
                     " and the tokenizer files beside it")
        if self.eval:
            e = self.eval
            lines.append(f"Accuracy on {e['source']} ({e['examples']} examples): fp32 {e['fp32_accuracy']:.4f}")
            if "int8_accuracy" in e:
                lines[-1] += (f", int8 {e['int8_accuracy']:.4f} (change {e['int8_accuracy'] - e['fp32_accuracy']:+.4f}"
                              f"; same label on {e['agreement']:.1%} of examples)")
        return "\n".join(lines)


def _weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def _dynamic_shapes(max_length: int) -> dict:
    """Batch and prompt length vary; the decoder input is one token shorter than the encoder's."""
    batch, length = Dim("batch", min=1, max=1024), Dim("length", min=3, max=max_length)
    return {"patch_images": {0: batch}, "input_ids": {0: batch, 1: length},
            "decoder_input_ids": {0: batch, 1: length - 1}, "answer_positions": {0: batch}}


def _export_graph(graph: ScoringGraph, example: list[torch.Tensor], path: Path, opset: int,
                  exporter: str = "dynamo") -> None:
    """torch.export-based ("dynamo") or the legacy TorchScript-based exporter; both give one graph for any batch size
    and prompt length (bench/RESULTS.md compares them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings; the legacy exporter's deprecation notice
        if exporter == "dynamo":
            shapes = _dynamic_shapes(graph.model.config.max_position_embeddings)
            torch.onnx.export(graph, tuple(example), str(path), dynamo=True, opset_version=opset,
                              input_names=INPUT_NAMES, output_names=[OUTPUT_NAME], dynamic_shapes=shapes,
                              external_data=_weight_bytes(graph) > PROTOBUF_LIMIT, verbose=False)
        else:
            torch.onnx.export(graph, tuple(example), str(path), dynamo=False, opset_version=opset,
                              input_names=INPUT_NAMES, output_names=[OUTPUT_NAME], dynamic_axes=DYNAMIC_AXES)


def linear_nodes(onnx_path: Path) -> dict[str, list[str]]:
    """velora.quantize layer group -> names of the MatMul/Gemm nodes that compute its Linear layers, read from the
    exporter's name scopes (torch.export) or node names (TorchScript: /model/encoder/layers.0/fc1/MatMul)."""
    import onnx  # deferred: only --quantize needs it

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    groups: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type not in INT8_OPS or not any(name in weights for name in node.input[1:2]):
            continue
        scopes = next((ast.literal_eval(p.value) for p in node.metadata_props
                       if p.key == "pkg.torch.onnx.name_scopes"), None)
        module = scopes[-2] if scopes and len(scopes) > 1 else ".".join(node.name.strip("/").split("/")[:-1])
        group = group_of(module.removeprefix("model."))
        if group is not None:
            groups.setdefault(group, []).append(node.name)
    return groups


def quantize_onnx_int8(source: Path, target: Path, plan: QuantizationPlan) -> str:
    """onnxruntime dynamic int8 of the MatMul/Gemm nodes of the plan's Linear groups: weights per output channel,
    7-bit (reduce_range: 8-bit products saturate on CPUs without VNNI), activations quantized per call. The ResNet
    stays fp32 here (onnxruntime's dynamic ConvInteger is slower than its fp32 Conv). Returns what was done."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # deferred: only --quantize needs it

    groups = linear_nodes(source)
    int8 = [g for g in plan.int8_groups if g in groups]
    logging.disable(logging.WARNING)  # its advice to run shape pre-processing, which fails on this graph
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=INT8_OPS, nodes_to_quantize=[n for g in int8 for n in groups[g]])
    finally:
        logging.disable(logging.NOTSET)
    kept = [g for g in groups if g not in int8]
    return (f"int8 dynamic, weights per channel (onnxruntime quantize_dynamic, QInt8 with reduce_range) on "
            f"{', '.join(int8) or 'nothing'}" + (f"; fp32: {', '.join(kept)}" if kept else ""))


def _write_sidecar(path: Path, predictor: Predictor, opset: int, quantization: str | None, exporter: str) -> None:
    processor = predictor.processor
    bos, eos, pad = processor.bos_id, processor.eos_id, processor.pad_id
    info = {
        "format": "velora-onnx/1",
        "source_model": predictor.description,
        "opset": opset,
        "exporter": "torch.export (dynamo)" if exporter == "dynamo" else "TorchScript (legacy)",
        "quantization": quantization,
        "inputs": {
            "patch_images": "float32 (batch, 3, S, S): RGB, bicubic resize to S x S (no crop), /255, (x-mean)/std",
            "input_ids": f"int64 (batch, length): [bos={bos}] + BPE(prompt) + [eos={eos}], right-padded with {pad}",
            "decoder_input_ids": "int64 (batch, length-1): input_ids without each row's final eos, padded",
            "answer_positions": "int64 (batch,): each row's prompt length (with bos and eos) minus 2",
        },
        "output": f"{OUTPUT_NAME}: float32 (batch, 3) in the order of `labels`",
        "labels": list(LABELS),
        "answer_words": [ANSWER_WORDS[label] for label in LABELS],
        "answer_ids": processor.answer_ids,
        "preprocess": processor.config.to_dict(),
        "text_cleaning": "lowercase; strip leading ,.!?*#:;~; '-' and '/' to spaces; collapse whitespace; keep "
                         "max_src_length words (velora.ofa.processor.clean_caption)",
        "tokenizer": {"vocab": "vocab.json", "merges": "merges.txt", "type": "BART byte-level BPE"},
    }
    path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def export_onnx(model_path: str | os.PathLike, output: str | os.PathLike, *, base_model: str | None = None,
                quantize: str | None = None, eval_file: str | os.PathLike | None = None, split: str = "validation",
                image_size: int | None = None, opset: int = OPSET, batch_size: int = 8, overwrite: bool = False,
                exporter: str = "dynamo",
                progress: bool = False) -> ExportResult:
    """Export `model_path` (model dir, adapter dir or hub id) to `output` (.onnx), check it against torch with
    onnxruntime, and with `quantize="int8"` write the int8 graph to `output` (the fp32 one to `<stem>.fp32.onnx`);
    with `eval_file`, measure the accuracy of the exported graph(s) on it."""
    if exporter not in ("dynamo", "torchscript"):
        raise VeloraError(f"--exporter {exporter}: use dynamo (torch.export) or torchscript (legacy)")
    if quantize not in (None, "int8"):
        raise VeloraError(f"--quantize {quantize}: only int8 (dynamic) is supported")
    output = Path(output)
    check_output_file(output, "--output", overwrite=overwrite, suffixes=(".onnx",))
    examples = None
    if eval_file is not None:
        examples = load_examples(eval_file, split)  # fail on a bad eval file before the slow export
    predictor = Predictor.from_pretrained(model_path, base_model=base_model, device="cpu", dtype=torch.float32,
                                          image_size=image_size, fuse_resnet=False)
    graph = ScoringGraph(merged_model(predictor))
    premises, hypotheses = (list(x) for x in zip(*CHECK_TEXTS))
    images = check_images()

    def inputs(rows: slice) -> list[torch.Tensor]:
        return graph_inputs(predictor.processor, images[rows], premises[rows], hypotheses[rows])

    check = inputs(slice(1, None))  # another batch size and other lengths than the export example's
    with torch.inference_mode():
        expected = graph(*check)

    output.parent.mkdir(parents=True, exist_ok=True)
    fp32_path = output.with_name(output.stem + ".fp32.onnx") if quantize else output
    _export_graph(graph, inputs(slice(0, 2)), fp32_path, opset, exporter)
    fp32 = OnnxPredictor(fp32_path, predictor.processor)
    max_diff = (fp32.run(check) - expected).abs().max().item()
    if max_diff > TOLERANCE:
        fp32_path.unlink()
        raise VeloraError(f"ONNX graph differs from torch by {max_diff:.2e} (limit {TOLERANCE:.0e}); removed it")
    _write_sidecar(fp32_path, predictor, opset, None, exporter)
    predictor.processor.save_tokenizer(output.parent)
    result = ExportResult(output, max_diff, fp32_path.stat().st_size)
    scorers = [fp32]
    if quantize:
        adapter_or_model = Path(model_path) if Path(model_path).is_dir() else None
        what = quantize_onnx_int8(fp32_path, output, plan_for(adapter_or_model, predictor.base_dir))
        _write_sidecar(output, predictor, opset, what, exporter)
        scorers.append(OnnxPredictor(output, predictor.processor))
        got = scorers[1].run(check)
        result.fp32_path, result.fp32_size_bytes = fp32_path, result.size_bytes
        result.size_bytes = output.stat().st_size
        result.int8_max_diff = (got - expected).abs().max().item()
        result.int8_check_agreement = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    if examples is not None:
        result.eval = eval_change(scorers, examples, batch_size, progress)
    return result


def eval_change(scorers: list[OnnxPredictor], examples: ExampleSet, batch_size: int = 8, progress: bool = False) -> dict:
    """Accuracy of the fp32 graph (and of the int8 one, with how often the two agree) on labelled examples."""
    labels = examples.labels
    predictions = [predicted_labels(score_examples(s, examples, batch_size=batch_size, progress=progress,
                                                   desc=f"eval {s.path.name}")) for s in scorers]
    out = {"source": examples.source, "examples": len(labels)}
    for name, predicted in zip(("fp32", "int8"), predictions):
        out[f"{name}_accuracy"] = compute_metrics(labels, predicted).accuracy
    if len(predictions) == 2:
        out["agreement"] = sum(a == b for a, b in zip(*predictions)) / len(labels)
    return out
