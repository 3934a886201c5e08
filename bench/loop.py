"""The review loop measured on the demo task (velora.loop; what `velora demo --loop` runs):

    python bench/loop.py [--output_dir bench/.cache/loop] [--quick] [--plan '{"noise": 0.3}']

Task B pictures with a seeded 20% of the training labels flipped; the same `velora train` run on clean and on noisy
labels; the noisy rows ranked by the noisy model's own probabilities (velora's confidence rule, and cleanlab) and
by out-of-fold probabilities (4 LoRA folds, cleanlab); a scripted reviewer answering from the true labels for the
top K = 10% of the rows through the review page's HTTP API, applied with `velora review --apply`, trained again;
the same K spent on random rows as the baseline. Prints the tables that go into bench/RESULTS.md, with the
machine and the minutes each stage took.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path

import torch

from velora.loop import LOOP_PLANS, run_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=str(Path(__file__).resolve().parent / ".cache" / "loop"))
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the script, measures nothing")
    parser.add_argument("--plan", default=None, help="JSON overrides of the LoopPlan (noise, budget, folds)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the adapters an earlier run of the same plan left in OUTPUT_DIR (same data)")
    args = parser.parse_args()
    plan = LOOP_PLANS["quick" if args.quick else "full"]
    if args.plan:
        plan = dataclasses.replace(plan, **json.loads(args.plan))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; plan: {plan}", file=sys.stderr)
    result = run_loop(args.output_dir, plan=plan, reuse=args.reuse)
    print(json.dumps(result.to_dict(), indent=2))


if __name__ == "__main__":
    main()
