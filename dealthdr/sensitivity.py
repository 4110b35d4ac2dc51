"""The attention sensitivity s of Eq. 6 as text: one spelling for every file the project writes
("0", "15", "inf") and one parser for every command-line flag that takes it."""
from __future__ import annotations

import argparse
import math


def s_text(value: float | str) -> str:
    """Canonical text of s: 0 -> "0", 15.0 -> "15", inf or "inf" -> "inf"."""
    s = float(value)
    if math.isnan(s) or s < 0:
        raise ValueError(f"s must be >= 0, got {value!r}")
    return "inf" if math.isinf(s) else f"{s:g}"


def parse_s(text: str) -> float:
    """One s from a flag: a number >= 0 or inf (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"s must be a number or inf, got {text!r}") from None
    if value < 0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"s must be >= 0, got {text!r}")
    return value


def parse_s_list(text: str) -> list[float]:
    """'0,1,15,100,inf' -> [0.0, 1.0, 15.0, 100.0, inf] (an argparse type)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"s values must be numbers or inf, got {text!r}") from None
    if not values or any(v < 0 or math.isnan(v) for v in values):
        raise argparse.ArgumentTypeError(f"s values must be >= 0, got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"s values have duplicates: {text!r}")
    return values


def parse_s_texts(text: str) -> list[str]:
    """'0,15,inf' -> ["0", "15", "inf"]: `parse_s_list` in the text form records use."""
    return [s_text(v) for v in parse_s_list(text)]
