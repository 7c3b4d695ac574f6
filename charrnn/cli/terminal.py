"""Text from files made safe to show on a terminal.

A corpus name, a source path, a vocabulary or a model name comes from a file that anyone
may have written; printed as it is, its escape sequences could move the cursor, clear
the screen, forge lines or set the window title. Every view that shows such text passes
it through `safe_text`. Pure: no imports beyond the standard library.
"""

from __future__ import annotations


def safe_text(text: str, keep_lines: bool = False) -> str:
    """`text` with control characters, bidirectional overrides and other invisible format
    characters shown as escapes (\\x1b, \\u202e); line breaks too unless `keep_lines`
    (a multi-line sample), tabs kept."""
    keep = "\n\t" if keep_lines else ""
    return "".join(c if c.isprintable() or c == " " or c in keep else _escape(c) for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    if code < 0x100:
        return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c, f"\\x{code:02x}")
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
