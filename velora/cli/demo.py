"""`velora demo`: the main job end to end on a built-in example."""

from __future__ import annotations

import click

from velora.demo import run_demo
from velora.loop import run_loop


@click.command("demo")
@click.option("--output_dir", default="demo_output", show_default=True,
              help="Where the demo writes its data, models and reports.")
@click.option("--model_path", envvar="VELORA_MODEL", default=None,
              help="An OFA checkpoint directory (or hub id) to build on [env: VELORA_MODEL]. Default: the hub "
                   "cache's copy of the default model if there is one, else a small OFA built here.")
@click.option("--small", is_flag=True, help="Build on the small OFA even when a real checkpoint is available.")
@click.option("--quick", is_flag=True, help="A few seconds' version of every stage, to check the install.")
@click.option("--loop", is_flag=True,
              help="Instead: the review loop measured (noisy labels, mine, a scripted review through the review "
                   "page's API, apply, retrain) on the small base; ~20 minutes on 2 cores, numbers in "
                   "OUTPUT_DIR/loop/loop.md.")
def demo_command(output_dir, model_path, small, quick, loop):
    """Run the main job end to end on a built-in synthetic task, offline: make data, convert it, train LoRA,
    evaluate base vs tuned on held-out pictures, predict one example, print the gain.

    \b
    Examples:
      velora demo
      make demo
      VELORA_MODEL=/models/ofa_visual-entailment_snli-ve_large_en velora demo
      velora demo --loop
    """
    if loop:
        run_loop(output_dir, quick=quick)
        return
    run_demo(output_dir, quick=quick, model_path=model_path, small=small)
