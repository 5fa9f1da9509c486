"""Text as the command-center pages show it: HTML-escaped, and without the characters that
would make a label value lie on screen (control characters, and the bidirectional
overrides and isolates that reorder what follows them). Each becomes U+FFFD, so that a
screen shows that something was there."""

from __future__ import annotations

import html
import re

# C0 controls but tab and newline, DEL, C1 controls; bidi embeddings, overrides, isolates.
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def escape(value: str) -> str:
    """`value` safe to put in HTML text or a quoted attribute."""
    return html.escape(_HIDDEN.sub("\ufffd", value))
