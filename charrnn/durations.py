"""Durations written the way people type them: 90, 90s, 10m, 1h30m, 2.5h."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")
_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in `text`; raises ValueError for anything that is not a positive duration."""
    s = text.strip().lower().replace(" ", "")
    if not s:
        raise ValueError("empty duration")
    text = text if len(text) <= 40 else text[:37] + "..."  # as messages show it
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            raise ValueError(f"{text!r} is not a duration like 90s, 10m or 1h30m")
        total += float(m.group(1)) * _SECONDS[m.group(2)]
        pos = m.end()
        if m.group(2) == "" and pos < len(s):
            raise ValueError(f"{text!r} is not a duration like 90s, 10m or 1h30m")
    if total <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    if total == float("inf"):
        raise ValueError(f"{text!r} is too long to be a duration")
    return total


def format_duration(seconds: float) -> str:
    """Compact h/m/s rendering for progress lines: 59s, 4m05s, 1h02m."""
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"
