"""User-facing failures. The message says what is wrong, naming the file/row/field, and what to do next.

The Python API raises these; the CLI prints them as one line and exits with code 2.
"""


class VeloraError(Exception):
    """A failure caused by the user's input or environment, not by a bug in velora."""
