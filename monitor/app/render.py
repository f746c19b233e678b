"""Rendering what the data says for a terminal, safely: the CLI's and the demo's shared cells.

Everything here escapes: rich markup and control characters from the data print as
themselves, never as styling or cursor movement.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from rich.markup import escape

SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}
# C0 (incl. ESC, CR, LF, TAB), DEL, C1 (incl. CSI) and the bidi overrides: nothing from the
# data may move the cursor, clear the screen or reorder what the table shows
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe(value: object) -> str:
    """A table cell or line built from data: control characters shown as ``\\xNN`` and rich
    markup escaped, so a symbol named ``[bold red]x[/]`` or ``\\x1b[2J`` prints as itself."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", str(value))
    return escape(text)


def sev_cell(sev: object) -> str:
    return f"[{SEVERITY_STYLE.get(sev, '')}]{safe(sev)}[/]" if sev in SEVERITY_STYLE else safe(sev)


def fmt_ts(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def summarize_detail(detail: dict, width: int = 90) -> str:
    parts = []
    for k, v in detail.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (list, dict)):
            continue
        parts.append(f"{k}={v}")
    text = " ".join(parts)
    return safe(text if len(text) <= width else text[: width - 1] + "…")
