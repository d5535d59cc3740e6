"""``serve.text.printable``: what a remote party sent, made safe for one log line or a stored error."""

from __future__ import annotations

import pytest

from serve.text import printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("busy", "busy"),
        ("服务繁忙 busy", "服务繁忙 busy"),  # any script is kept
        ("busy\n2026-11-28 08:00:00 INFO webhook delivered", "busy\\n2026-11-28 08:00:00 INFO webhook delivered"),
        ("a\r\nb\tc", "a\\r\\nb\\tc"),
        ("\x1b[2J\x1b[32mOK", "\\x1b[2J\\x1b[32mOK"),  # no terminal escapes
        ("nul\x00 del\x7f", "nul\\x00 del\\x7f"),
        ("abc\u202edef", "abc\\u202edef"),  # a right-to-left override would reorder what follows on screen
        ("line\u2028sep", "line\\u2028sep"),
    ],
)
def test_control_characters_and_line_breaks_are_escaped(text, shown):
    assert printable(text) == shown


def test_the_text_is_capped_after_escaping():
    assert printable("x" * 500, limit=200) == "x" * 199 + "…"
    assert len(printable("\x00" * 500, limit=200)) == 200  # escaping cannot make it longer than the cap
    assert printable("x" * 200, limit=200) == "x" * 200
    assert printable("") == ""
