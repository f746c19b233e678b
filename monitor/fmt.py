"""Numbers for people: ``$1.03M``, ``4.2x``. Text only (callers escape it for their medium).

>>> money(102_600_000.0), money(404_200.0), money(3_440.0), money(-1_500_000.0), times(4.24), times(64.0)
('$102.6M', '$404k', '$3,440', '-$1.5M', '4.2x', '64x')
"""

from __future__ import annotations

from typing import Any


def money(x: Any) -> str:
    """USD, humanized; non-numbers as they are."""
    if not isinstance(x, (int, float)) or x != x:
        return str(x)
    a = abs(x)
    sign = "-" if x < 0 else ""
    if a >= 1e9:
        return f"{sign}${a / 1e9:.3g}B"
    if a >= 1e6:
        return f"{sign}${a / 1e6:.4g}M"
    if a >= 1e4:
        return f"{sign}${a / 1e3:.3g}k"
    return f"{sign}${a:,.0f}"


def times(x: Any) -> str:
    """A ratio: two significant digits below 10, whole numbers above."""
    if not isinstance(x, (int, float)):
        return str(x)
    return f"{x:.2g}x" if x < 10 else f"{x:,.0f}x"


def pct(x: float) -> str:
    """A fraction as a signed percentage (``-0.042`` -> ``-4.2%``)."""
    return f"{x * 100:+.3g}%"
