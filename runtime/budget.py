"""Memory budgets as users write them, and byte counts as the runtime prints them.

`parse_bytes("300MB")` -> 300_000_000. Decimal units are powers of 1000 (k / kB, M / MB, G / GB,
T / TB), binary units powers of 1024 (Ki / KiB, Mi / MiB, Gi / GiB, Ti / TiB); case-insensitive,
so "mb" and "MB" are the same thing (nobody means millibytes), a bare number or "B" is bytes and
a space between number and unit is fine. Fractions are allowed and rounded to whole bytes.

`format_bytes(n)` prints one style everywhere: decimal megabytes with a thousands separator,
"1,130.3 MB" (the same as `mote-edge info`), so numbers in a report can be compared at a glance.
"""

from __future__ import annotations

import math
import re

from mote_edge.errors import MoteError

__all__ = ["BudgetError", "parse_bytes", "format_bytes"]


class BudgetError(MoteError):
    """A memory budget that cannot be parsed, or one that is not a positive number of bytes."""


_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40,
}
_PATTERN = re.compile(r"\s*([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)
_EXAMPLES = "(examples: 300MB, 1.5GiB, 123456789)"


def parse_bytes(text: "str | int") -> int:
    """A memory budget -> bytes (> 0). Raises BudgetError with a one-line message otherwise."""
    if isinstance(text, bool):  # True is an int to Python, not a budget
        raise BudgetError(f"invalid memory budget {text!r} {_EXAMPLES}")
    if isinstance(text, int):
        value = text
    elif isinstance(text, float):
        if not math.isfinite(text):
            raise BudgetError(f"invalid memory budget {text!r} {_EXAMPLES}")
        value = round(text)
    elif isinstance(text, str):
        m = _PATTERN.fullmatch(text)
        if m is None or m.group(3).lower() not in _UNITS:
            raise BudgetError(f"invalid memory budget {text!r} {_EXAMPLES}")
        sign, number, unit = m.groups()
        multiplier = _UNITS[unit.lower()]
        if "." in number:
            whole, _, frac = number.partition(".")
            # exact for any number of digits: (whole.frac) * multiplier, rounded half up
            scaled = (int(whole or "0") * 10 ** len(frac) + int(frac or "0")) * multiplier
            value = (2 * scaled + 10 ** len(frac)) // (2 * 10 ** len(frac))
        else:
            value = int(number) * multiplier
        if sign == "-":
            value = -value
    else:
        raise BudgetError(f"invalid memory budget {text!r} {_EXAMPLES}")
    if value <= 0:
        raise BudgetError(f"invalid memory budget {text!r}: it must be more than 0 bytes {_EXAMPLES}")
    return int(value)


def format_bytes(n: "int | float") -> str:
    """Bytes -> "1,130.3 MB" (MB = 10^6 bytes). Non-zero amounts under 0.05 MB get three decimals
    ("0.004 MB") so that they never print as zero."""
    mb = n / 1e6
    if n != 0 and abs(mb) < 0.05:
        return f"{mb:,.3f} MB"
    return f"{mb:,.1f} MB"
