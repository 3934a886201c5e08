"""`velora sweep` on the command line: `velora train`'s flags (all of them pass through to every run), the six
swept ones taking several values, and the sweep's own (--trials, --seeds, --pruner, --prune_after)."""

from __future__ import annotations

import click

from velora.sweep.space import EXAMPLES, SWEPT
from velora.train.cli import TrainCommand, _FieldOption, config_option, config_options, given_flags, help_all_option

SWEEP_FLAGS = ["trials", "seeds", "pruner", "prune_after"]
PRUNERS = {"auto": None, "median": True, "none": False}


def _swept_option(option: click.Option) -> click.Option:
    """A training flag that takes several values: a configuration each."""
    several = ("repeat the flag for another set of modules" if option.name == "lora_target_modules"
               else "comma-separated values, or LOW:HIGH with --trials")
    return _FieldOption([*option.opts, option.name], type=click.STRING, multiple=True, metavar="VALUES",
                        help=f"{option.help.split('  [default')[0]} Several: {several} (e.g. {EXAMPLES[option.name]}).")


class SweepCommand(TrainCommand):
    lead_sections = {"Sweep": SWEEP_FLAGS, "Swept settings (a configuration per value)": list(SWEPT)}

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not any(p.name == "output_dir" for p in self.params):
            options = config_options()
            for option in options:
                if option.name == "output_dir":
                    option.help = "The sweep's folder (runs/, the table, the plot, best/, study.db). [default: ./sweep]"
            self.params.extend(_swept_option(o) if o.name in SWEPT else o for o in options)
        return super().get_params(ctx)


@click.command("sweep", cls=SweepCommand)
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Search N configurations with Optuna's TPE sampler (default: every combination of the values "
                   "given, a grid).")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs per configuration (seeds SEED, SEED+1, ...): the table shows mean ± std and says when the "
                   "best two overlap.")
@click.option("--pruner", type=click.Choice(["auto", "median", "none"]), default="auto", show_default=True,
              help="median: stop a run whose validation macro-F1 falls below the median of the finished "
                   "configurations at the same point (Optuna's MedianPruner); auto: median when the validation "
                   "split has 100 rows or more, none below (too few rows to judge a run early).")
@click.option("--prune_after", type=click.IntRange(min=0), default=3, show_default=True,
              help="Configurations that finish before any run is pruned.")
@config_option
@help_all_option
@click.pass_context
def sweep_command(ctx: click.Context, config: str | None, trials: int | None, seeds: int, pruner: str,
                  prune_after: int, **values):
    """Train and compare LoRA adapters over ranks, alphas, learning rates, epochs, target modules and batch sizes
    (the guide's 5.2-5.3). Each configuration is a `velora train` run (every train flag passes through); the
    ResNet's image features are computed once; losing runs are pruned. OUTPUT_DIR gets sweep_results.csv (train vs
    validation scores: the overfitting gap), sweep.png, best/ (the chosen adapter, for `velora predict`) and
    study.db (Optuna; `optuna-dashboard sqlite:///OUTPUT_DIR/study.db`). Run the same command again to resume.

    \b
    Examples:
      velora sweep --dataset_name ./data/hf_dataset --output_dir ./sweep \\
          --lora_r 4,8,16,32 --learning_rate 1e-4,2e-4 --lora_alpha 2r
      velora sweep --config configs/lora_config.json --output_dir ./sweep --lora_r 4,8,16 --seeds 3
      velora sweep --dataset_name ./data/hf_dataset --output_dir ./search --trials 12 \\
          --lora_r 4,8,16,32 --learning_rate 5e-5:5e-4
      velora sweep ... --per_device_train_batch_size 2,4 --learning_rate auto   # the guide's rule per batch
    """
    from velora.sweep.run import sweep  # deferred: optuna, transformers and peft take seconds to import

    space = {name: list(values.pop(name)) for name in SWEPT if values.get(name)}
    for name in SWEPT:
        values.pop(name, None)
    sweep(config, space, overrides=given_flags(ctx, values), trials=trials, seeds=seeds, pruning=PRUNERS[pruner],
          prune_after=prune_after)
