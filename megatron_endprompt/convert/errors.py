"""The one exception type the converters raise for bad input (unsupported model, missing tensor, ...)."""

from __future__ import annotations


class ConversionError(ValueError):
    """A checkpoint or config cannot be converted; the message names the file, key or flag to fix.

    Raised before anything is written to the output directory.
    """
