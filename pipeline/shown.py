"""Names in messages, printed safely: one helper for every error m2f prints.

A file name, a speaker or a class comes from someone else's files; printed raw, a terminal escape code
in it could clear the screen or fake a line, and a newline would split a one-line error. :func:`shown`
escapes every control and format character (``\\x1b`` -> ``\\x1b``, newline -> ``\\n``) and leaves the
rest (accents, CJK) as it is.

>>> shown("clip\\x1b[2J.mp4")
'clip\\\\x1b[2J.mp4'
>>> shown("ça va")
'ça va'
"""

from __future__ import annotations

import os
import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
        n = ord(c)
        return f"\\x{n:02x}" if n < 0x100 else (f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
    return c


def shown(value: object) -> str:
    """``str(value)`` (a path as given) with control and format characters escaped, on one line."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def brief(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace runs become one space), cut to ``limit`` characters:
    what a one-line error quotes of a library's multi-line message."""
    return " ".join(str(error).split())[:limit]
