"""Values and paths as messages quote them: cut short, and ready to paste.

Torch-free and import-free (beyond the standard library): every layer of fedsim
quotes with these.
"""

from __future__ import annotations

import reprlib
import shlex
from pathlib import Path
from typing import Any

_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 80
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict = 3, 4, 4


_LONGEST = 160
"""The most characters :func:`shown` returns (nesting multiplies reprlib's caps)."""


def shown(value: Any) -> str:
    """``repr(value)`` cut short: an error quotes a value, never a huge one.

    >>> shown("x" * 1000)[:6], len(shown("x" * 1000)) <= 80
    ("'xxxxx", True)
    >>> shown([[[[[[[[1]]]]]]]])
    '[[[[...]]]]'
    >>> len(shown([[["y" * 60] * 4] * 4] * 4)) == _LONGEST
    True
    """
    text = _SHOWN.repr(value)
    return text if len(text) <= _LONGEST else text[: _LONGEST - 3] + "..."


def quoted(path: Path | str) -> str:
    """``path`` as a shell word, ready to paste.

    >>> quoted("runs/my run")
    "'runs/my run'"
    """
    return shlex.quote(str(path))
