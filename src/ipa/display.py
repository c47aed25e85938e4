"""Numbers as people read them, in the terminal and in the report: about four significant digits, thousands
grouped, never an exponent. Files keep every figure exact."""

from __future__ import annotations

import math


def plain(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 1 or v == 0:
        return f"{v:.4g}"
    return f"{v:.6f}".rstrip("0").rstrip(".") if abs(v) >= 1e-6 else "0"
