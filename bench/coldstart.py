"""Cold start: how long loading a checkpoint takes beside the time to read its file, before and after building the
model without initialisers (velora.ofa.model.skip_init) and taking the file's tensors as they are (mmap).

    python bench/coldstart.py [--rows ROWS] [--repeats 3]

Models (random weights, written once under bench/.cache): "small" (bench/serve.py's small preset), "base" (the
reference implementation's OFA-base-size checkpoint, pytorch_model.bin) and "large" (OFA-large's config.json,
pytorch_model.bin of 1.9 GB). The file is in the page cache (read once before), as on a machine that just loaded it.
Each measurement runs in a fresh process after its imports: reading the file (16 MiB chunks), then either loading it
as velora does now ("after": `Predictor.from_pretrained`, CPU) or as it did before ("before": the same, with the
model built on the meta device with every initialiser running, as OFAModel.__init__ did, and BatchNorm folded by
torch.nn.utils.fusion), then scoring one example.
Times are CPU seconds of that process (user + system; steadier than wall time on a shared machine) and wall seconds.
The "cli" rows time `velora predict --verbose` as a whole (its own load and score lines, and the process's wall).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, Report, add_report_arguments, cpu_seconds, machine_line, reference_checkpoint  # noqa: E402

SIZES = ["small", "base", "large"]
ROWS = [f"{size}-{how}" for size in SIZES for how in ("before", "after")] + [f"{size}-cli" for size in SIZES]
COLUMNS = ["row", "params", "file MB", "read s", "load s", "load - read s", "first score s", "wall: read / load s"]
LARGE_CONFIG = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "ofa-large-config.json"
PREMISE, HYPOTHESIS = "a red card on a table", "the card is red"


def model_dir(size: str) -> Path:
    if size == "base":
        return reference_checkpoint()
    out = CACHE / f"coldstart-{size}"
    if not (out / "config.json").exists():
        from serve import PRESETS

        from velora.bundle import save_model_dir
        from velora.ofa.config import OFAConfig
        from velora.ofa.model import OFAModel
        from velora.ofa.processor import OFAProcessor

        config = OFAConfig.from_json_file(LARGE_CONFIG) if size == "large" else OFAConfig(**PRESETS["small"][0])
        torch.manual_seed(0)
        save_model_dir(OFAModel(config).eval(), OFAProcessor.default(), out, weights_format="bin")
    return out


def read_file(path: Path) -> None:
    buffer = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


@contextlib.contextmanager
def the_load_before():
    """The load before: no skip_init, OFAModel's own initialisation applied even on the meta device, and BatchNorm
    folded by torch.nn.utils.fusion (a deep copy of each convolution first, then channels-last: two more copies)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from velora.ofa import checkpoint, resnet
    from velora.ofa.model import OFAModel

    build = OFAModel.__init__

    def init_then_apply(self, config, *args, **kwargs):
        build(self, config, *args, **kwargs)
        self.apply(self._init_weights)

    def torch_fusion(conv, bn):
        fused = fuse_conv_bn_eval(conv.eval(), bn.eval())
        conv.weight, conv.bias = fused.weight, fused.bias

    with mock.patch.object(checkpoint, "skip_init", contextlib.nullcontext), \
            mock.patch.object(OFAModel, "__init__", init_then_apply), \
            mock.patch.object(resnet, "fold_batch_norm_", torch_fusion):
        yield


def measure(size: str, how: str) -> dict:
    """In this (fresh) process: read the file, load the model, score one example."""
    from PIL import Image

    from velora.ofa.checkpoint import weights_file
    from velora.predictor import Predictor

    directory = model_dir(size)
    path = weights_file(directory)
    read_file(path)  # into the page cache
    times = {}
    for step, fn in (("read", lambda: read_file(path)),
                     ("load", lambda: load(directory, how)),
                     ("score", lambda: times["predictor"].predict(Image.new("RGB", (64, 48), (200, 30, 30)),
                                                                  PREMISE, HYPOTHESIS))):
        wall, cpu = time.perf_counter(), cpu_seconds()
        result = fn()
        times[step] = (cpu_seconds() - cpu, time.perf_counter() - wall)
        if isinstance(result, Predictor):
            times["predictor"] = result
    params = sum(p.numel() for p in times.pop("predictor").model.parameters())
    return {"params": params, "file_mb": path.stat().st_size / 2**20, **times}


def load(directory: Path, how: str):
    from velora.predictor import Predictor

    with the_load_before() if how == "before" else contextlib.nullcontext():
        return Predictor.from_pretrained(directory, device="cpu")


def cli(size: str) -> dict:
    """`velora predict --verbose` on the model: its own load and score lines, and the process's wall time."""
    from PIL import Image

    image = CACHE / "coldstart-red.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "velora", "predict", "--model_path", str(model_dir(size)),
                          "--image", str(image), "--premise", PREMISE, "--hypothesis", HYPOTHESIS, "--device", "cpu",
                          "--verbose"], capture_output=True, text=True, check=True)
    total = time.perf_counter() - start
    load = float(re.search(r"Loaded in ([\d.]+) s", out.stderr).group(1))
    score = float(re.search(r"Scored in ([\d.]+) s", out.stderr).group(1))
    return {"load": load, "score": score, "total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per row (the best is reported)")
    parser.add_argument("--measure", nargs=2, metavar=("SIZE", "HOW"), help=argparse.SUPPRESS)
    add_report_arguments(parser, ROWS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    report = Report("coldstart", COLUMNS, args)
    report.note(machine_line())
    for name in report.selected:
        size, how = name.split("-")
        model_dir(size)  # written once, outside the timings
        if how == "cli":
            runs = [cli(size) for _ in range(args.repeats)]
            best = min(runs, key=lambda r: r["total"])
            report.row(name, {"row": name, "load s": f"{best['load']:.2f} (wall)",
                              "first score s": f"{best['score']:.2f} (wall)",
                              "wall: read / load s": f"whole command {best['total']:.1f}", "raw": runs})
            continue
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--measure", size, how], capture_output=True,
                                          text=True, check=True).stdout.strip().splitlines()[-1])
                for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r["load"][0])
        read = min(r["read"][0] for r in runs)
        report.row(name, {"row": name, "params": f"{best['params'] / 1e6:.0f}M", "file MB": f"{best['file_mb']:.0f}",
                          "read s": f"{read:.2f}", "load s": f"{best['load'][0]:.2f}",
                          "load - read s": f"{best['load'][0] - read:+.2f}", "first score s": f"{best['score'][0]:.2f}",
                          "wall: read / load s": f"{best['read'][1]:.2f} / {best['load'][1]:.2f}", "raw": runs})
    report.note(machine_line())


if __name__ == "__main__":
    main()
