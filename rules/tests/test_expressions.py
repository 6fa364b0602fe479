"""The comparison rules' expression language: a table of valid and invalid expressions (with the
position of the error), evaluation semantics, and fuzzing: any input either parses or raises
ExpressionError, quickly."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.expressions import MAX_DEPTH, MAX_LENGTH, ExpressionError, parse

VALUES = {(None, "inlet_temp"): 80.0, (None, "outlet_temp"): 70.0, (None, "flow"): 0.5, ("pump-2", "pressure"): 3.0,
          (None, "pressure"): 2.0, (None, "flow-rate"): 12.0, (None, "zero"): 0.0, (None, "a.b"): 1.0}  # fmt: skip


def run(source: str):
    return parse(source).evaluate(VALUES.get)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("inlet_temp - outlet_temp > 5", True),
        ("inlet_temp - outlet_temp > 15", False),
        ("inlet_temp-outlet_temp>=10", True),
        ("abs(pressure - device(\"pump-2\").pressure) >= 0.5 and not (flow < 1)", False),
        ("abs(pressure - device('pump-2').pressure) >= 0.5 or flow < 1", True),
        ("`flow-rate` / max(flow, 1) > 2.5", True),
        ("min(inlet_temp, outlet_temp, 75) == 70", True),
        ("-inlet_temp < -79.5", True),
        ("+flow != 0.5", False),
        ("inlet_temp % 7 == 3", True),
        ("(inlet_temp + outlet_temp) / 2 > 74.9 and true", True),
        ("not not (flow > 0)", True),
        ("flow > 1e-3 and flow < .6", True),
        ("a.b == 1", True),
        ("inlet_temp > 2 * 3 + 4 * 5", True),  # precedence: 26
        ("flow > 0 or inlet_temp / zero > 1", True),  # short-circuit: the undefined side is never evaluated
        ("inlet_temp / zero > 1", None),  # division by zero: unknown
        ("missing_metric > 1", None),  # no value yet: unknown
        ("inlet_temp * 1e308 * 1e308 > 0", None),  # overflow: unknown
    ],
)
def test_valid_expressions(source, expected):
    assert run(source) is expected


def test_references_name_devices_and_metrics():
    compiled = parse('inlet_temp - device("pump-2").pressure > `flow-rate`')
    assert compiled.references == {(None, "inlet_temp"), ("pump-2", "pressure"), (None, "flow-rate")}
    assert compiled.devices == {"pump-2"}


@pytest.mark.parametrize(
    ("source", "position", "fragment"),
    [
        ("", 0, "empty"),
        ("   ", 3, "empty"),
        ("inlet_temp >", 12, "missing"),
        ("inlet_temp > > 5", 13, "Unexpected '>'"),
        ("inlet_temp >> 5", 12, "Unexpected '>'"),
        ("a < b < c", 6, "do not chain"),
        ("inlet_temp = 5", 11, "=="),
        ("!flow", 0, "'not'"),
        ("inlet_temp - outlet_temp", 0, "must be a condition"),
        ("1 > 2", 0, "no metric"),
        ("flow and inlet_temp > 1", 0, "must be a boolean"),
        ("(flow > 1) + 2 > 1", 0, "must be a number"),
        ("not flow", 4, "must be a boolean"),
        ("((flow > 1)", 11, "')'"),
        ("flow > 1)", 8, "after the end"),
        ("flow > 1 flow", 9, "after the end"),
        ("abs(flow, 2) > 1", 0, "exactly one"),
        ("max(flow) > 1", 0, "at least two"),
        ("sqrt(flow) > 1", 4, "after the end"),  # an unknown function reads as a metric followed by '('
        ('device(pump).x > 1', 7, "quoted device uid"),
        ('device("pump") > 1', 15, "'.'"),
        ('device("pump").and > 1', 15, "metric name"),
        ('"pump" > 1', 0, "string"),
        ("`flow-rate > 1", 0, "Unterminated"),
        ("`` > 1", 0, "1-64"),
        ("flow > 1.2.3", 10, "after the end"),
        ("flow > 12abc", 7, "Malformed number"),
        ("flow > 1e999", 7, "out of range"),
        ("flow. > 1", 0, "cannot end with"),
        ("flow > 1 @", 9, "Unexpected character"),
        ("flow > 1 and", 12, "missing"),
        ("true", 0, "no metric"),
    ],
)
def test_invalid_expressions_point_at_the_bad_token(source, position, fragment):
    with pytest.raises(ExpressionError) as caught:
        parse(source)
    assert caught.value.position == position, str(caught.value)
    assert fragment in str(caught.value)


def test_size_and_depth_are_bounded():
    with pytest.raises(ExpressionError, match="too long"):
        parse("flow > " + "1 + " * 300 + "1")
    with pytest.raises(ExpressionError, match="too long"):
        parse("x" * (MAX_LENGTH + 1))
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse("(" * (MAX_DEPTH + 1) + "flow > 1" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse("-" * (MAX_DEPTH + 2) + "flow > 1")
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse("not " * (MAX_DEPTH + 2) + "flow > 1")
    assert parse("(" * 10 + "flow > 1" + ")" * 10).evaluate(VALUES.get) is False


ALPHABET = st.sampled_from(
    ["flow", "inlet_temp", "x", "device", "(", ")", '"pump-2"', "'", '"', ".", "pressure", "`flow-rate`", "`", "abs", "min",
     "max", ",", "+", "-", "*", "/", "%", "<", "<=", ">", ">=", "==", "!=", "=", "!", "and", "or", "not", "true", "false",
     "0", "1.5", "1e3", "1e999", ".5", " ", "@", "é", "\n", "12abc"]
)  # fmt: skip


@settings(max_examples=600, deadline=200)
@given(st.lists(ALPHABET, max_size=60).map(" ".join) | st.lists(ALPHABET, max_size=60).map("".join) | st.text(max_size=200))
def test_fuzzed_input_parses_or_raises_expression_error_quickly(source):
    started = time.perf_counter()
    try:
        compiled = parse(source)
    except ExpressionError as exc:
        assert 0 <= exc.position <= len(source)
    else:
        assert compiled.evaluate(VALUES.get) in (True, False, None)
        assert compiled.references
    assert time.perf_counter() - started < 0.1
