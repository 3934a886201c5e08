"""Options several commands share, declared once: the model a command loads, and the input file and image checks of
convert/validate. Flags are written once with underscores; the dashed spelling works through the group's
token_normalize_func."""

from __future__ import annotations

import functools
import time
from typing import Callable

import click

from velora.bundle import ModelBundle
from velora.convert.issues import printable
from velora.hub import DEFAULT_MODEL_ID
from velora.images import ImageLimits
from velora.predictor import Predictor
from velora.data import ExampleSet, load_examples
from velora.errors import VeloraError
from velora.translate import ScoredTexts, Translator, non_english_warning, translate_pairs, translator_for
from velora.translate.command import DEFAULT_TIMEOUT
from velora.translate.detect import DETECTORS


def model_options(f: Callable) -> Callable:
    """--model_path / --base_model / --device / --dtype / --image_size / --quantize, for every command that loads a
    model; the command receives them as one `model` dict of ModelBundle/Predictor keyword arguments."""
    options = [
        click.option("--model_path", "--model_name_or_path", "model_path", envvar="VELORA_MODEL",
                     default=DEFAULT_MODEL_ID, show_default=True,
                     help="Model directory, LoRA adapter directory, or hub id [env VELORA_MODEL]."),
        click.option("--base_model", default=None,
                     help="Base model for an adapter (default: the one named in its adapter_config.json)."),
        click.option("--device", default="auto", show_default=True, help="auto (cuda if present), cpu, cuda, cuda:1..."),
        click.option("--dtype", default="auto", show_default=True,
                     help="auto (fp32 on CPU, bf16/fp16 on GPU), float32, bfloat16, float16."),
        click.option("--image_size", type=int, default=None,
                     help="Override the model's image size (default: its configuration.json, else 480)."),
        click.option("--quantize", type=click.Choice(["int8"]), default=None,
                     help="CPU only: int8 weights (per channel) where measured to keep the probabilities, fp32 "
                          "elsewhere (docs/cpu-inference.md)."),
    ]

    @functools.wraps(f)
    def command(*args, model_path, base_model, device, dtype, image_size, quantize, **kwargs):
        model = dict(model_path=model_path, base_model=base_model, device=device, dtype=dtype, image_size=image_size,
                     quantize=quantize)
        return f(*args, model=model, **kwargs)

    for option in reversed(options):
        command = option(command)
    return command


def resolve_bundle(model: dict) -> ModelBundle:
    """The model's folders, config and processor, without loading weights (fast: check inputs with it first)."""
    return ModelBundle.resolve(model["model_path"], base_model=model["base_model"], image_size=model["image_size"])


def load_predictor(model: dict, bundle: ModelBundle | None = None, quantize: str | None = None,
                   verbose: bool = False) -> Predictor:
    """The one way commands load a model: say so on stderr (it can take a while), then Predictor.from_bundle;
    `verbose` also says how long loading took."""
    bundle = bundle or resolve_bundle(model)
    click.echo(f"Loading {model['model_path']} ...", err=True)
    start = time.perf_counter()
    predictor = Predictor.from_bundle(bundle, device=model["device"], dtype=model["dtype"],
                                      quantize=quantize or model.get("quantize"))
    if verbose:
        click.echo(f"Loaded in {time.perf_counter() - start:.2f} s ({predictor.description})", err=True)
    return predictor


def image_options(f: Callable) -> Callable:
    """Where rows' images are and what one may cost: --image_root, --allow_outside_paths and the image limits, for
    every command that reads a file of rows (convert, validate, predict --input_file), which receives them as one
    `images` dict (image_root, allow_outside_paths, limits)."""
    options = [
        click.option("--image_root", type=click.Path(file_okay=False), default=None,
                     help="Folder relative image paths start from, and that images may not leave (default: the "
                          "input file's folder; the guide's ./data/x.jpg from the folder above also works)."),
        click.option("--allow_outside_paths", is_flag=True,
                     help="Read images outside --image_root too (absolute, ../ and ~ paths, symlinks leading out)."),
        click.option("--max_pixels", type=click.IntRange(1), default=None,
                     help="Refuse images declaring more pixels (decompression bombs) [default: 40,000,000]."),
        click.option("--max_side", type=click.IntRange(1), default=None,
                     help="Refuse images with a longer side, in pixels [default: 16,384]."),
        click.option("--max_image_mb", type=click.FloatRange(0, min_open=True), default=None,
                     help="Refuse image files larger than this [default: 10, the server's upload limit]."),
    ]

    @functools.wraps(f)
    def command(*args, image_root, allow_outside_paths, max_pixels, max_side, max_image_mb, **kwargs):
        limits = ImageLimits.from_options(max_pixels=max_pixels, max_side=max_side, max_image_mb=max_image_mb)
        images = dict(image_root=image_root, allow_outside_paths=allow_outside_paths, limits=limits)
        return f(*args, images=images, **kwargs)

    for option in reversed(options):
        command = option(command)
    return command


def input_options(f: Callable) -> Callable:
    """INPUT (positional) or --csv_path/--input, and how rows' images are found and checked (image_options): shared
    by convert and validate, which receive the input path and the checks as one `checks` dict of keyword arguments
    for velora.convert."""
    options = [
        click.argument("input_arg", metavar="[INPUT]", required=False, type=click.Path(dir_okay=False)),
        click.option("--csv_path", "--input", "input_path", type=click.Path(dir_okay=False),
                     help="The CSV (image_path,premise,hypothesis,label) or JSONL file; same as INPUT."),
        click.option("--num_proc", type=click.IntRange(1), default=1, show_default=True,
                     help="Processes that decode images in parallel."),
    ]

    @image_options
    @functools.wraps(f)
    def command(*args, input_arg, input_path, num_proc, images, **kwargs):
        checks = dict(**images, num_proc=num_proc, progress=True)
        return f(*args, source=pick_input(input_arg, input_path), checks=checks, **kwargs)

    for option in reversed(options):
        command = option(command)
    return command


def pick_input(input_arg: str | None, input_path: str | None) -> str:
    if input_arg and input_path and input_arg != input_path:
        raise click.UsageError(f"two inputs given ({input_arg} and --csv_path {input_path}); give one")
    if not (input_arg or input_path):
        raise click.UsageError("give the input file: --csv_path data/my_ve_data.csv (or INPUT)")
    return input_arg or input_path


def translate_options(f: Callable) -> Callable:
    """--translate and its settings, for every command that reads premises and hypotheses (convert, predict, eval,
    mine, serve); the command receives them as one `translate` dict (see open_translator)."""
    options = [
        click.option("--translate", "translate", default=None, metavar="BACKEND",
                     help="Translate Chinese (non-English) premises and hypotheses to English first, originals kept: "
                          "a local translation model folder (e.g. ./opus-mt-zh-en), deepl (key in DEEPL_AUTH_KEY) "
                          "or command:CMD (one line in, one line out). See docs/chinese.md."),
        click.option("--glossary", type=click.Path(dir_okay=False), default=None,
                     help="CSV of domain terms (source term, English term): put in before translating, checked "
                          "after; rows that lose a term are flagged."),
        click.option("--translation_cache", default=None, metavar="PATH|off",
                     help="SQLite file of the translations made so far, so nothing is translated twice [default: "
                          "$VELORA_CACHE_DIR or ~/.cache/velora/translations.sqlite3]."),
        click.option("--translate_detect", type=click.Choice(list(DETECTORS)), default="cjk", show_default=True,
                     help="Which texts are translated: cjk (Chinese/Japanese/Korean script), non_latin (any "
                          "non-Latin letter), all (every text; for Latin-script languages)."),
        click.option("--translate_timeout", type=click.FloatRange(0, min_open=True), default=DEFAULT_TIMEOUT,
                     show_default=True, help="Seconds a command:CMD back-end may take for one batch of lines."),
    ]

    @functools.wraps(f)
    def command(*args, translate, glossary, translation_cache, translate_detect, translate_timeout, **kwargs):
        if not translate and (glossary or translation_cache):
            raise click.UsageError(f"{'--glossary' if glossary else '--translation_cache'} works with --translate "
                                   "BACKEND; add it, e.g. --translate ./opus-mt-zh-en")
        settings = dict(translate=translate, glossary=glossary, translation_cache=translation_cache,
                        translate_detect=translate_detect, translate_timeout=translate_timeout)
        return f(*args, translate=settings, **kwargs)

    for option in reversed(options):
        command = option(command)
    return command


def open_translator(translate: dict, device: str = "auto", progress: bool = True) -> Translator | None:
    """The Translator the `translate` options ask for (None without --translate), checked now; a model's weights
    load on `device` (the model's --device) when a text first needs them."""
    return translator_for(translate, device, progress)


def warn(message: str | None) -> None:
    """A warning on stderr (so that --json output on stdout stays clean)."""
    if message:
        click.echo(f"Warning: {printable(message)}", err=True)


def texts_to_score(translate: dict, device: str, premises: list[str | None], hypotheses: list[str]
                   ) -> list[ScoredTexts]:
    """The pairs as the model will score them: translated with --translate; else as given, with a warning on
    stderr when they hold Chinese text. A translation that came back empty is a one-line error."""
    translator = open_translator(translate, device, progress=False)
    if translator is None:
        warn(non_english_warning(premises, hypotheses))
        return translate_pairs(None, premises, hypotheses)
    try:
        pairs = translate_pairs(translator, premises, hypotheses)
    finally:
        translator.close()
    failed = next((p.error for p in pairs if p.error), None)
    if failed:
        raise VeloraError(f"--translate: {failed}")
    return pairs


def examples_to_score(path: str, split: str, translate: dict, device: str) -> ExampleSet:
    """Labelled examples (velora.data.load_examples): translated with --translate; else as they are, with a warning
    on stderr when they hold Chinese text."""
    translator = open_translator(translate, device)
    try:
        examples = load_examples(path, split, translator=translator)
    finally:
        if translator is not None:
            translator.close()
    if translator is None:
        warn(examples.non_english_warning())
    return examples
