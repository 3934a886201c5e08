"""`python -m velora ...` (and `torchrun --nproc_per_node 2 -m velora train ...`)."""

from velora.cli import cli

if __name__ == "__main__":
    cli()
