"""`velora predict --input_file IN --output_file OUT`: every row of a CSV/TSV, JSONL or Parquet file scored, in
constant memory, resumable after a kill, on one process or many (torchrun).

    plan    scan_input: rows, columns, labels; a file-level problem is reported before any model loads
    resume  open_progress: OUT.progress/ keeps the finished chunks of a run that was stopped
    score   PreparedRows (reading, image decoding and resizing in DataLoader workers) -> Predictor.score_pixels
            -> one file per chunk of `chunk_size` rows
    merge   the input read again beside the chunk files into OUT, renamed into place; then the summary

Under `torchrun --nproc_per_node N -m velora predict ...` (or across machines with torchrun's rendezvous flags and
a filesystem they share), each process scores every N-th unfinished chunk on its own device (cuda:LOCAL_RANK when
there are GPUs) and writes its chunk files; process 0 merges them in input order. The processes only exchange the
plan and a final barrier, over torch.distributed's gloo backend.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from velora.bundle import ModelBundle
from velora.convert.check import _image_bases, image_limits
from velora.convert.issues import RowIssue
from velora.errors import VeloraError
from velora.images import CPU_CORES, ImageLimits
from velora.io import check_output_file
from velora.ofa.processor import OFAProcessor
from velora.predict.inputs import InputPlan, chunks, file_identity, scan_input
from velora.predict.outputs import SUFFIXES, open_output, output_names, prediction_values
from velora.predict.prepare import ChunkTexts, ImageOptions, PreparedBatch, PreparedRows, keep
from velora.predict.progress import Progress, open_progress, progress_folder
from velora.predict.summary import BulkResult, Tally
from velora.predict.translation import ChunkTranslations, OutputTexts, translation_identity
from velora.translate import Translator
from velora.predictor import Predictor, pick_device, pick_dtype

WAIT = timedelta(hours=12)  # how long a process waits for the others (model loading, the slowest share)
KILL_AFTER = "VELORA_PREDICT_KILL_AFTER"  # tests: "chunks:N" / "merge:N" stops the run there, as kill -9 would


@dataclass
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local: int = 0
    local_world: int = 1
    started_group: bool = False

    @classmethod
    def from_env(cls) -> "Ranks":
        env = os.environ
        world = int(env.get("WORLD_SIZE", "1"))
        started = world > 1 and not dist.is_initialized()
        if started:
            dist.init_process_group("gloo", timeout=WAIT)  # rendezvous from torchrun's environment
        return cls(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")),
                   int(env.get("LOCAL_WORLD_SIZE", str(world))), started)

    def share(self, make: Callable[[], Any]) -> Any:
        """make() on rank 0, its result (or its VeloraError) on every rank."""
        if self.world == 1:
            return make()
        box: list[Any] = [None]
        if self.rank == 0:
            try:
                box = [("ok", make())]
            except VeloraError as e:
                box = [("error", str(e))]
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise VeloraError(value)
        return value

    def wait(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.started_group:
            dist.destroy_process_group()


@dataclass
class Job:
    """What rank 0 decided before any model loads, sent to every process."""

    plan: InputPlan
    images: ImageOptions
    progress: Progress
    done: frozenset[int]

    @property
    def pending(self) -> list[int]:
        return [k for k in range(self.plan.chunks) if k not in self.done]


def _kill_point(stage: str, count: int) -> None:
    if os.environ.get(KILL_AFTER) == f"{stage}:{count}":
        os.kill(os.getpid(), signal.SIGKILL)


def _say(message: str, show: bool) -> None:
    if show:
        tqdm.write(message, file=sys.stderr)


def _fingerprint(folder: Path | None) -> dict | None:
    """A model folder as it is now: its path and each file's size and modification time."""
    if folder is None:
        return None
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).iterdir() if p.is_file())
    return {"path": str(Path(folder).resolve()), "files": files}


def _model_identity(model: Predictor | ModelBundle, device: str, dtype: str) -> dict:
    if isinstance(model, Predictor):
        return {"model": model.description, "base": _fingerprint(model.base_dir), "dtype": str(model.dtype)}
    resolved = pick_device(device)
    return {"base": _fingerprint(model.base_dir), "adapter": _fingerprint(model.adapter_dir),
            "device_type": resolved.type, "dtype": str(pick_dtype(dtype, resolved))}


def _start(model: Predictor | ModelBundle, processor: OFAProcessor, input_file: Path, output: Path,
           options: dict, overwrite: bool) -> Job:
    """Rank 0's checks and plan, in the order that fails fastest; nothing is written before they pass."""
    if output.suffix.lower() not in SUFFIXES:
        raise VeloraError(f"--output_file {output}: give a file name ending in {', '.join(SUFFIXES)}")
    if output.exists() and output.resolve() == input_file.resolve():
        raise VeloraError(f"--output_file {output} is the input file; choose a new name")
    check_output_file(output, "--output_file", overwrite=overwrite or Progress(progress_folder(output)).wrote(output))
    plan = scan_input(input_file, options["chunk_size"])
    root, cwd = _image_bases(plan.open(), options["image_root"])
    images = ImageOptions(str(root), str(cwd) if cwd else None, plan.format == "snli-ve",
                          options["allow_outside_paths"], options["limits"])
    settings = {**_model_identity(model, options["device"], options["dtype"]),
                "processor": processor.config.to_dict(), "chunk_size": plan.chunk_size,
                "image_root": str(Path(root).resolve()), "allow_outside_paths": images.allow_outside,
                "limits": asdict(images.limits)}
    if options["quantize"]:
        settings["quantize"] = options["quantize"]
    if options["translator"] is not None:
        settings["translate"] = translation_identity(options["translator"])
    identity = {"input": file_identity(input_file), "settings": settings}
    progress, done = open_progress(output, identity, overwrite)
    return Job(plan, images, progress, frozenset(done))


def _results(batch: PreparedBatch, probs: torch.Tensor) -> list[dict[str, Any]]:
    """Chunk-file lines: probabilities at float32's shortest exact form, or the failure."""
    scored = iter(probs.numpy())
    return [{"code": e.code, "error": e.message} if e is not None else
            {"probs": [float(str(p)) for p in next(scored)]} for e in batch.errors]


def _pixel_values(pixels: torch.Tensor, processor: OFAProcessor, device: torch.device) -> torch.Tensor:
    """(U, S, S, 3) uint8 -> (U, 3, S, S) normalised on `device` (a GPU gets a quarter of the bytes), with the
    float32 arithmetic of OFAProcessor.image_tensor (the same numbers)."""
    values = pixels.to(device).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(processor.config.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(processor.config.std, device=device).view(1, 3, 1, 1)
    return (values - mean) / std


def _score_batch(predictor: Predictor, processor: OFAProcessor, batch: PreparedBatch,
                 translations: ChunkTranslations | None) -> list[dict[str, Any]]:
    translated = translations.apply(batch) if translations is not None else [None] * len(batch)
    good = [i for i, prompt in enumerate(batch.prompts) if prompt is not None]
    probs = torch.empty(0, 3)
    if good:
        probs = predictor.score_pixels(_pixel_values(batch.pixels, processor, predictor.device),
                                       [batch.image_index[i] for i in good], [batch.prompts[i] for i in good])
    return [{**line, "translated": texts} if texts else line for line, texts in zip(_results(batch, probs), translated)]


def _loader(job: Job, chunk_ids: list[int], processor: OFAProcessor, batch_size: int, workers: int,
            detect: Callable[[str], bool] | None) -> DataLoader:
    dataset = PreparedRows(job.plan, chunk_ids, processor, job.images, batch_size, detect)
    # Workers are spawned: never forked (this process may hold threads: gloo's, tqdm's), and this process's own
    # children, so that DataLoader's watchdog (which watches the parent) ends them when a kill -9 ends it (a
    # forkserver's children would outlive it: the server waits for them, they wait for the server).
    extra = dict(multiprocessing_context="spawn", prefetch_factor=2) if workers else {}
    return DataLoader(dataset, batch_size=None, collate_fn=keep, num_workers=workers, **extra)


def _score(load: Callable[[], Predictor], processor: OFAProcessor, job: Job, chunk_ids: list[int],
           batch_size: int, workers: int, show: bool, translator: Translator | None = None) -> float:
    """Score this process's chunks, writing each one's file as soon as its last batch is scored (with a
    translator, a chunk's texts are translated when they arrive, before its batches). Returns when the first batch
    was ready (the model loaded, the workers started)."""
    translations = ChunkTranslations(translator, processor) if translator is not None else None
    detect = translator.detect if translator is not None else None
    batches = iter(_loader(job, chunk_ids, processor, batch_size, workers, detect))  # workers start reading now
    predictor = load()
    first = None
    bar = tqdm(total=sum(job.plan.chunk_rows(k) for k in chunk_ids), desc="predict", unit="row", disable=not show)
    open_chunks: dict[int, list[dict]] = {}
    written = failed = 0
    for batch in batches:
        first = first or time.perf_counter()
        if isinstance(batch, ChunkTexts):
            translations.add(batch)
            continue
        rows = open_chunks.setdefault(batch.chunk, [])
        rows.extend(_score_batch(predictor, processor, batch, translations))
        failed += sum(e is not None for e in batch.errors)
        bar.update(len(batch))
        bar.set_postfix(failed=failed, refresh=False)
        if batch.last:
            job.progress.write_chunk(batch.chunk, open_chunks.pop(batch.chunk))
            written += 1
            _kill_point("chunks", written)
    bar.close()
    return first or time.perf_counter()


def _merge(job: Job, output: Path, show: bool, translating: bool) -> tuple[Tally, OutputTexts]:
    """OUT from the input and the chunk files, in input order, into the progress folder (renamed by the caller)."""
    plan, reader = job.plan, job.plan.open()
    names, tally, texts = output_names(plan.columns), Tally(), OutputTexts(plan.columns, translating)
    bar = tqdm(total=plan.rows, desc="writing", unit="row", disable=not show)
    with open_output(job.progress.merge_path(output), output.suffix.lower(), plan, reader, names, texts.extra) as out:
        for chunk, items in chunks(reader, plan.chunk_size):
            try:
                results = job.progress.read_chunk(chunk)
            except FileNotFoundError:
                results = []
            if len(results) != len(items):
                raise VeloraError(f"{plan.path} changed while it was scored (chunk {chunk}: {len(items)} rows now, "
                                  f"{len(results)} scored); run again with --overwrite")
            rows = []
            for item, result in zip(items, results):
                values = prediction_values(result)
                label = None
                if not isinstance(item, RowIssue):
                    label = reader.raw_row(*item).values.get("label")
                    given = {names.get(k, k): v for k, v in item[1].items()}
                    texts.update(given, names, result)
                    values = {**given, **values}
                tally.add(label, values, result.get("code"))
                rows.append(values)
            out.write(rows)
            bar.update(len(rows))
            _kill_point("merge", chunk + 1)
    bar.close()
    return tally, texts


def _device_for(device: str, ranks: Ranks) -> str:
    """Under torchrun, each process on its own GPU."""
    if ranks.world > 1 and str(device) in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ranks.local}"
    return str(device)


def _defaults(batch_size: int | None, num_workers: int | None, device: torch.device, ranks: Ranks) -> tuple[int, int]:
    """A GPU wants large batches and many decoding workers; a CPU runs the model on every core, with one worker
    decoding beside it."""
    cores = max(1, CPU_CORES // ranks.local_world)
    on_gpu = device.type == "cuda"
    batch = batch_size or (64 if on_gpu else 16)
    workers = num_workers if num_workers is not None else (min(8, cores) if on_gpu else 1)
    return batch, workers


def predict_file(model: Predictor | ModelBundle | str | os.PathLike, input_file: str | os.PathLike,
                 output_file: str | os.PathLike, *, device: str = "auto", dtype: str = "auto",
                 image_root: str | os.PathLike | None = None, allow_outside_paths: bool = False,
                 limits: ImageLimits | None = None, batch_size: int | None = None, chunk_size: int = 512,
                 num_workers: int | None = None, overwrite: bool = False, progress: bool = False,
                 quantize: str | None = None, translator: Translator | None = None) -> BulkResult | None:
    """Score every row of `input_file` into `output_file` (see velora.predict.outputs for the columns).

    `model` is a loaded Predictor, or a ModelBundle / model path that each process loads on `device` with
    `dtype`. Images are found and checked as `velora convert` does (`image_root`, default the input file's
    folder; `allow_outside_paths`; `limits`). A row that cannot be scored gets an error, never stops the run.
    Rows go `chunk_size` at a time into OUT.progress/, so a stopped run resumes; `num_workers` processes decode
    images (default: 1 on CPU, up to 8 per GPU); `quantize` "int8" loads the model as `Predictor` does with it
    (CPU). With a `translator` (velora.translate.load_translator), the texts it detects as non-English are scored
    in English, the originals kept (velora.predict.translation). Under torchrun, returns the result on rank 0 and
    None elsewhere.
    """
    if chunk_size < 1 or (batch_size is not None and batch_size < 1):
        raise VeloraError("--chunk_size and --batch_size must be 1 or more")
    ranks = Ranks.from_env()
    try:
        return _run(model, Path(input_file), Path(output_file), ranks, overwrite, progress, batch_size, num_workers,
                    dict(device=_device_for(device, ranks), dtype=dtype, image_root=image_root,
                         allow_outside_paths=allow_outside_paths, limits=image_limits(limits),
                         chunk_size=chunk_size, quantize=quantize, translator=translator))
    finally:
        ranks.close()


def _run(model, input_file: Path, output: Path, ranks: Ranks, overwrite: bool, show: bool, batch_size: int | None,
         num_workers: int | None, options: dict) -> BulkResult | None:
    if not isinstance(model, (Predictor, ModelBundle)):
        model = ModelBundle.resolve(model)
    processor = model.processor
    began = time.perf_counter()
    job: Job = ranks.share(lambda: _start(model, processor, input_file, output, options, overwrite))
    show = show and ranks.rank == 0
    pending = job.pending
    if job.done:
        _say(f"Resuming {job.progress.folder}: {len(job.done):,} of {job.plan.chunks:,} chunks already done", show)
    mine = pending[ranks.rank::ranks.world]
    device = model.device if isinstance(model, Predictor) else pick_device(options["device"])
    batch, workers = _defaults(batch_size, num_workers, device, ranks)

    def load() -> Predictor:
        if isinstance(model, Predictor):
            return model
        _say(f"Loading {model.description} ...", show)
        return Predictor.from_bundle(model, device=options["device"], dtype=options["dtype"],
                                     quantize=options["quantize"])

    first_batch = _score(load, processor, job, mine, batch, workers, show, options["translator"])
    ranks.wait()
    seconds = time.perf_counter() - first_batch
    if ranks.rank != 0:
        return None
    tally, texts = _merge(job, output, show, options["translator"] is not None)
    job.progress.finish(output)
    translated_by = options["translator"].name if options["translator"] is not None else None
    return BulkResult.from_tally(tally, output=str(output), seconds=seconds, processes=ranks.world,
                                 translated_by=translated_by, **texts.summary(),
                                 startup_seconds=first_batch - began,
                                 rows_this_run=sum(job.plan.chunk_rows(k) for k in pending),
                                 resumed_chunks=len(job.done))
