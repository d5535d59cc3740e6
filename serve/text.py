"""Text from outside (a webhook receiver's answer, a service's refusal) made safe to log or keep."""

from __future__ import annotations


def printable(text: str, limit: int = 300) -> str:
    """``text`` as one line of printable characters, at most ``limit`` long (cut with '…'): line breaks, control
    characters, terminal escapes and other invisible or reordering characters (``\\u202e``) become Python escapes
    (``\\n``, ``\\x1b``), so what a remote party sends cannot forge a log line of ours or repaint a terminal."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"
