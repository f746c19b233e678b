"""Rendering what the data says for a terminal, safely: the CLI's and the demo's shared cells.

Everything here escapes: rich markup and control characters from the data print as
themselves, never as styling or cursor movement.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}
# C0 (incl. ESC, CR, LF, TAB), DEL, C1 (incl. CSI) and the bidi overrides: nothing from the
# data may move the cursor, clear the screen or reorder what the table shows
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(value: object) -> str:
    """Data as plain text with its control characters shown as ``\\xNN`` (for ``Text``
    cells, which never parse markup)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", str(value))


def safe(value: object) -> str:
    """A table cell or line built from data: control characters shown as ``\\xNN`` and rich
    markup escaped, so a symbol named ``[bold red]x[/]`` or ``\\x1b[2J`` prints as itself."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", str(value))
    return escape(text)


def sev_cell(sev: object) -> str:
    return f"[{SEVERITY_STYLE.get(sev, '')}]{safe(sev)}[/]" if sev in SEVERITY_STYLE else safe(sev)


def iso(ts_ms: int | float | None, ms: bool = True) -> str | None:
    """Epoch milliseconds as ISO 8601 in UTC: ``2024-11-23T22:13:20.123Z`` (None stays None).

    >>> iso(1_732_400_000_123), iso(1_732_400_000_123, ms=False)
    ('2024-11-23T22:13:20.123Z', '2024-11-23T22:13:20Z')
    """
    if ts_ms is None:
        return None
    t = datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" if ms else t.strftime("%Y-%m-%dT%H:%M:%SZ")


def fmt_ts(ts_ms: int) -> str:
    return iso(ts_ms) or ""


def fit_widths(natural: list[int], minimum: list[int], available: int) -> list[int]:
    """Column widths summing to at most ``available`` where the minimums allow: the last
    column (the free text: detail, title, comment) gives way first, then the widest.

    >>> fit_widths([20, 13, 60], [8, 8, 8], 50)
    [20, 13, 17]
    >>> fit_widths([20, 13, 60], [8, 8, 12], 40)
    [15, 13, 12]
    """
    w = list(natural)
    excess = sum(w) - available
    last = len(w) - 1
    cut = min(excess, w[last] - minimum[last]) if w else 0
    if cut > 0:
        w[last] -= cut
        excess -= cut
    while excess > 0:
        i = max(range(len(w)), key=lambda j: (w[j] > minimum[j], w[j]))
        if w[i] <= minimum[i]:
            break
        w[i] -= 1
        excess -= 1
    return w


def fitted_table(title: str, headers: list[str], rows: list[list[object]], width: int, wide: bool = False,
                 minimum: dict[str, int] | None = None) -> Table:
    """A table of data that fits ``width`` columns: each cell on one line, cut with an
    ellipsis (never wrapped mid-word); ``wide``: every cell whole. A cell is data (shown
    literally, control characters escaped) or a ``Text`` (already styled, from data)."""
    cells = [[c if isinstance(c, Text) else Text(clean(c)) for c in row] for row in rows]
    natural = [max([len(h), *(c.cell_len for c in col)]) for h, col in zip(headers, zip(*cells) if cells else
                                                                           [()] * len(headers))]
    gaps = len(headers) - 1  # one space between columns, no edges
    if wide:
        widths = natural
    else:
        mins = [min(n, (minimum or {}).get(h, 8)) for h, n in zip(headers, natural)]
        widths = fit_widths(natural, mins, width - gaps)
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0), show_edge=False,
              title_justify="left")
    for h, w in zip(headers, widths):
        t.add_column(h, width=w, no_wrap=True, overflow="ellipsis")
    for row in cells:
        t.add_row(*row)
    return t


def sev_text(sev: object) -> Text:
    return Text(clean(sev), style=SEVERITY_STYLE.get(sev, "")) if isinstance(sev, str) else Text(clean(sev))


def detail_text(detail: dict) -> str:
    """An anomaly's detail on one line: its scalar fields (lists and tables left to --json)."""
    parts = []
    for k, v in detail.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (list, dict)):
            continue
        parts.append(f"{k}={v}")
    return " ".join(parts)


def summarize_detail(detail: dict, width: int = 90) -> str:
    """``detail_text`` cut to ``width`` and made safe for rich markup (the demo's live view)."""
    text = detail_text(detail)
    return safe(text if len(text) <= width else text[: width - 1] + "…")
