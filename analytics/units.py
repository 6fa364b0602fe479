"""Unit spellings to one symbol, so a metric's unit is reported once and the same way every time.

The predecessor grouped statistics by the unit string stored with each row and split one metric
into "°C" and "C". Here the unit belongs to the metric (telemetry.Metric.unit) and is passed
through `normalise_unit` before it is shown.
"""

from __future__ import annotations

_ALIASES: dict[str, str] = {}
for symbol, spellings in {
    "°C": ("°c", "c", "degc", "deg c", "deg_c", "celsius", "degrees c", "degree celsius", "℃", "ºc"),
    "°F": ("°f", "f", "degf", "deg f", "deg_f", "fahrenheit", "℉", "ºf"),
    "K": ("k", "kelvin"),
    "%": ("%", "pct", "percent"),
    "%RH": ("%rh", "% rh", "rh", "%r.h."),
    "bar": ("bar",),
    "mbar": ("mbar",),
    "hPa": ("hpa",),
    "kPa": ("kpa",),
    "Pa": ("pa",),
    "psi": ("psi",),
    "mm/s": ("mm/s", "mm s-1", "mm/sec"),
    "A": ("a", "amp", "amps", "ampere", "amperes"),
    "mA": ("ma", "milliamp"),
    "V": ("v", "volt", "volts"),
    "W": ("w", "watt", "watts"),
    "kW": ("kw", "kilowatt"),
    "kWh": ("kwh",),
    "Hz": ("hz", "hertz"),
    "rpm": ("rpm", "1/min"),
    "m³/h": ("m3/h", "m^3/h", "m³/h", "cmh"),
    "L/min": ("l/min", "lpm"),
}.items():
    for spelling in spellings:
        _ALIASES[spelling] = symbol


def normalise_unit(unit: str | None) -> str:
    """The canonical symbol of `unit` ("C", "degC", "celsius" -> "°C"); unknown units unchanged, trimmed."""
    text = " ".join((unit or "").split())
    return _ALIASES.get(text.lower(), text)
