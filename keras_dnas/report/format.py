"""Numbers in messages: byte counts and other quantities with thousands separators.

One formatter for every message, so a byte count never prints as `3.934e+04`.
"""

import math

# Units whose values are whole counts: printed as integers with separators.
_INTEGER_UNITS = {"B", "bytes", "parameters", "MACs", "cycles"}


def fmt_quantity(value, unit=""):
    """A quantity for a message: separators, no exponent; counts as integers.

    Args:
        value: a number (int, float, numpy scalar) or `None`.
        unit: the unit; `"bytes"` / `"B"`, `"parameters"`, `"MACs"` and `"cycles"` are
            counts, printed rounded to integers. Others (`"ms"`, `"uJ"`, ...) keep up to
            three decimals, trailing zeros dropped.

    Returns:
        The text, e.g. `"39,340 B"`; `"n/a"` for `None` or NaN.

    Example:

    >>> fmt_quantity(39340.0, "bytes"), fmt_quantity(1234567, "MACs"), fmt_quantity(2.5, "ms")
    ('39,340 B', '1,234,567 MACs', '2.5 ms')
    >>> fmt_quantity(0.0001234, "ms"), fmt_quantity(12345.678)
    ('0.0001234 ms', '12,345.678')
    """
    if value is None:
        return "n/a"
    value = float(value)
    if math.isnan(value):
        return "n/a"
    shown = "B" if unit == "bytes" else unit
    if math.isinf(value):
        text = "inf" if value > 0 else "-inf"
    elif unit in _INTEGER_UNITS:
        text = f"{int(round(value)):,}"
    elif value != 0 and abs(value) < 1e-3:
        text = f"{value:.4g}"  # tiny values: significant digits (no exponent above 1e-5)
        if "e" in text:
            text = f"{value:.10f}".rstrip("0").rstrip(".")
    else:
        text = f"{value:,.3f}".rstrip("0").rstrip(".")
    return f"{text} {shown}" if shown else text


__all__ = ["fmt_quantity"]
