"""Small helpers shared by every room of seqlab (no seqlab imports)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """An error caused by the user's input or files (not a bug): the CLI prints its message as
    one paragraph without a traceback. Config and data errors are ValueErrors for the same
    reason."""


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest valid name, or "" when none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
