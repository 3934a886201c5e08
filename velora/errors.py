"""User-facing failures. The message says what is wrong, naming the file/row/field, and what to do next.

The Python API raises these; the CLI prints them as one line and exits with code 2.
"""

from __future__ import annotations


class VeloraError(Exception):
    """A failure caused by the user's input or environment, not by a bug in velora.

    `code` names the kind of failure for programs (e.g. "image_not_found" in a conversion report); None when no
    finer kind applies. `VeloraError(message)` is the common form."""

    def __init__(self, message: str = "", code: str | None = None):
        super().__init__(message)
        self.code = code

    def __reduce__(self):  # keep `code` across processes (the image-check workers send errors back)
        return type(self), (str(self), self.code)
