"""The comparison rules' expression language: a hand-written tokenizer and recursive-descent
parser compiled to Python closures. Nothing is ever passed to `eval`.

    inlet_temp - outlet_temp > 5
    abs(pressure - device("pump-2").pressure) >= 0.5 and not (flow < 1)
    `flow-rate` / max(level, 1) > 2.5

Grammar (lowest precedence first):

    expression  := or
    or          := and ("or" and)*
    and         := not ("and" not)*
    not         := "not" not | comparison
    comparison  := additive [("<" | "<=" | ">" | ">=" | "==" | "!=") additive]
    additive    := term (("+" | "-") term)*
    term        := unary (("*" | "/" | "%") unary)*
    unary       := ("-" | "+") unary | primary
    primary     := NUMBER | "true" | "false" | "(" expression ")"
                 | FUNCTION "(" expression ("," expression)* ")"      abs(x), min(a, b, ...), max(a, b, ...)
                 | METRIC                                             a metric of the rule's device
                 | "device" "(" STRING ")" "." METRIC                 a metric of another device (by uid)

METRIC is a name (`[A-Za-z_][A-Za-z0-9_.]*`) or any metric name in backticks (`` `flow-rate` ``).
Types are checked when parsing: arithmetic and comparisons take numbers, `and`/`or`/`not` take
booleans, and the whole expression must be a boolean. Comparisons do not chain (`a < b < c` is an
error). Size is bounded (characters, tokens, nesting depth) so that parsing and evaluation take
bounded time. Every error is an `ExpressionError` carrying the position (0-based character
offset) of the offending token.

At evaluation a missing value (the device never reported the metric) or an undefined operation
(division by zero, a result that is not finite) makes the whole expression "unknown" (None), which
rules treat as "no change".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_LENGTH = 1000
MAX_TOKENS = 200
MAX_DEPTH = 32
MAX_REFERENCES = 20
MAX_FUNCTION_ARGS = 10

KEYWORDS = {"and", "or", "not", "true", "false", "device"}
FUNCTIONS = {"abs", "min", "max"}
COMPARISONS = {"<", "<=", ">", ">=", "==", "!="}


class ExpressionError(ValueError):
    """A bad expression: `message` says what, `position` where (0-based character offset)."""

    def __init__(self, message: str, position: int, token: str = "") -> None:
        self.message = message
        self.position = position
        self.token = token
        super().__init__(f"{message} (at position {position}{f', near {token!r}' if token else ''})")


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # number, name, quoted, string, op, end
    text: str
    position: int
    value: float | str | None = None


# A reference to a metric: (device uid or None for the rule's own device, metric name).
Reference = tuple[str | None, str]
# At evaluation: reference -> value, or None when unknown.
Lookup = Callable[[Reference], "float | None"]


class _Unknown(Exception):
    """Raised inside evaluation when a value is missing or an operation undefined."""


@dataclass
class CompiledExpression:
    source: str
    references: frozenset[Reference]
    _run: Callable[[Lookup], object] = field(repr=False)

    def evaluate(self, lookup: Lookup) -> bool | None:
        """True or False, or None when a value is missing or an operation undefined."""
        try:
            return bool(self._run(lookup))
        except _Unknown:
            return None

    @property
    def devices(self) -> frozenset[str]:
        return frozenset(uid for uid, _ in self.references if uid is not None)


# --- Tokenizer -------------------------------------------------------------------------------------

_TWO_CHAR_OPS = {"<=", ">=", "==", "!="}
_ONE_CHAR_OPS = set("+-*/%()<>,.")


def tokenize(source: str) -> list[Token]:
    if not isinstance(source, str):
        raise ExpressionError("The expression must be a string.", 0)
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"The expression is too long (at most {MAX_LENGTH} characters).", MAX_LENGTH)
    tokens: list[Token] = []
    i, n = 0, len(source)
    while i < n:
        char = source[i]
        if char in " \t\r\n":
            i += 1
            continue
        if len(tokens) >= MAX_TOKENS:
            raise ExpressionError(f"The expression is too long (at most {MAX_TOKENS} tokens).", i, char)
        start = i
        if char.isascii() and (char.isdigit() or (char == "." and i + 1 < n and source[i + 1].isascii() and source[i + 1].isdigit())):
            while i < n and source[i].isascii() and source[i].isdigit():
                i += 1
            if i < n and source[i] == ".":
                i += 1
                while i < n and source[i].isascii() and source[i].isdigit():
                    i += 1
            if i < n and source[i] in "eE":
                j = i + 1
                if j < n and source[j] in "+-":
                    j += 1
                if j < n and source[j].isascii() and source[j].isdigit():
                    i = j
                    while i < n and source[i].isascii() and source[i].isdigit():
                        i += 1
            text = source[start:i]
            if i < n and (source[i].isascii() and (source[i].isalnum() or source[i] == "_")):
                raise ExpressionError("Malformed number.", start, source[start : i + 1])
            value = float(text)
            if not math.isfinite(value):
                raise ExpressionError("Number out of range.", start, text)
            tokens.append(Token("number", text, start, value))
            continue
        if char.isascii() and (char.isalpha() or char == "_"):
            while i < n and source[i].isascii() and (source[i].isalnum() or source[i] in "_."):
                i += 1
            text = source[start:i]
            if text.endswith("."):
                raise ExpressionError("A name cannot end with '.'.", start, text)
            tokens.append(Token("name", text, start, text))
            continue
        if char == "`":
            end = source.find("`", i + 1)
            if end < 0:
                raise ExpressionError("Unterminated `quoted metric name`.", start, source[start : start + 20])
            name = source[i + 1 : end]
            if not name or len(name) > 64 or any(c in name for c in "\n\r\t"):
                raise ExpressionError("A quoted metric name must be 1-64 characters on one line.", start, source[start : end + 1])
            tokens.append(Token("quoted", source[start : end + 1], start, name))
            i = end + 1
            continue
        if char in "\"'":
            end = source.find(char, i + 1)
            if end < 0:
                raise ExpressionError("Unterminated string.", start, source[start : start + 20])
            value = source[i + 1 : end]
            if not value or len(value) > 64:
                raise ExpressionError("A device uid must be 1-64 characters.", start, source[start : end + 1])
            tokens.append(Token("string", source[start : end + 1], start, value))
            i = end + 1
            continue
        pair = source[i : i + 2]
        if pair in _TWO_CHAR_OPS:
            tokens.append(Token("op", pair, start))
            i += 2
            continue
        if char in _ONE_CHAR_OPS:
            tokens.append(Token("op", char, start))
            i += 1
            continue
        if char == "=":
            raise ExpressionError("Unexpected '='; use '==' to compare.", start, char)
        if char == "!":
            raise ExpressionError("Unexpected '!'; use 'not' or '!='.", start, char)
        raise ExpressionError("Unexpected character.", start, char)
    tokens.append(Token("end", "", n))
    return tokens


# --- Parser ------------------------------------------------------------------------------------------

NUM, BOOL = "number", "boolean"
Node = tuple[str, Callable[[Lookup], object]]  # (type, evaluator)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise _Unknown
    return value


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source)
        self.index = 0
        self.depth = 0
        self.references: set[Reference] = set()

    # helpers
    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def is_op(self, *ops: str) -> bool:
        token = self.current
        return token.kind == "op" and token.text in ops

    def is_keyword(self, word: str) -> bool:
        token = self.current
        return token.kind == "name" and token.text == word

    def error(self, message: str, token: Token | None = None) -> ExpressionError:
        token = token or self.current
        return ExpressionError(message, token.position, token.text or "end of expression")

    def expect_op(self, op: str, what: str) -> Token:
        if not self.is_op(op):
            raise self.error(f"Expected {what}.")
        return self.advance()

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"The expression is nested too deeply (at most {MAX_DEPTH} levels).")

    def need(self, node: Node, kind: str, token: Token, role: str) -> None:
        if node[0] != kind:
            raise self.error(f"{role} must be a {kind}, not a {node[0]}.", token)

    # grammar
    def parse(self) -> CompiledExpression:
        if self.current.kind == "end":
            raise self.error("The expression is empty.")
        start = self.current
        node = self.expression()
        if self.current.kind != "end":
            raise self.error("Unexpected token after the end of the expression.")
        if node[0] != BOOL:
            raise ExpressionError("The expression must be a condition (a comparison or true/false), not a number.", start.position, start.text)
        if len(self.references) > MAX_REFERENCES:
            raise ExpressionError(f"Too many metric references (at most {MAX_REFERENCES}).", start.position, start.text)
        if not self.references:
            raise ExpressionError("The expression refers to no metric.", start.position, start.text)
        return CompiledExpression(source=self.source, references=frozenset(self.references), _run=node[1])

    def expression(self) -> Node:
        self.enter()
        try:
            return self.or_()
        finally:
            self.depth -= 1

    def or_(self) -> Node:
        first = self.current
        left = self.and_()
        while self.is_keyword("or"):
            operator = self.advance()
            self.need(left, BOOL, first, "The left side of 'or'")
            right_token = self.current
            right = self.and_()
            self.need(right, BOOL, right_token, "The right side of 'or'")
            left = (BOOL, _or(left[1], right[1]))
            del operator
        return left

    def and_(self) -> Node:
        first = self.current
        left = self.not_()
        while self.is_keyword("and"):
            self.advance()
            self.need(left, BOOL, first, "The left side of 'and'")
            right_token = self.current
            right = self.not_()
            self.need(right, BOOL, right_token, "The right side of 'and'")
            left = (BOOL, _and(left[1], right[1]))
        return left

    def not_(self) -> Node:
        if self.is_keyword("not"):
            self.advance()
            self.enter()
            try:
                operand_token = self.current
                operand = self.not_()
            finally:
                self.depth -= 1
            self.need(operand, BOOL, operand_token, "The operand of 'not'")
            run = operand[1]
            return (BOOL, lambda lookup: not run(lookup))
        return self.comparison()

    def comparison(self) -> Node:
        first = self.current
        left = self.additive()
        if self.current.kind == "op" and self.current.text in COMPARISONS:
            operator = self.advance()
            self.need(left, NUM, first, f"The left side of '{operator.text}'")
            right_token = self.current
            right = self.additive()
            self.need(right, NUM, right_token, f"The right side of '{operator.text}'")
            if self.current.kind == "op" and self.current.text in COMPARISONS:
                raise self.error("Comparisons do not chain; combine them with 'and'.")
            return (BOOL, _compare(operator.text, left[1], right[1]))
        return left

    def additive(self) -> Node:
        first = self.current
        left = self.term()
        while self.is_op("+", "-"):
            operator = self.advance()
            self.need(left, NUM, first, f"The left side of '{operator.text}'")
            right_token = self.current
            right = self.term()
            self.need(right, NUM, right_token, f"The right side of '{operator.text}'")
            left = (NUM, _arith(operator.text, left[1], right[1]))
        return left

    def term(self) -> Node:
        first = self.current
        left = self.unary()
        while self.is_op("*", "/", "%"):
            operator = self.advance()
            self.need(left, NUM, first, f"The left side of '{operator.text}'")
            right_token = self.current
            right = self.unary()
            self.need(right, NUM, right_token, f"The right side of '{operator.text}'")
            left = (NUM, _arith(operator.text, left[1], right[1]))
        return left

    def unary(self) -> Node:
        if self.is_op("-", "+"):
            operator = self.advance()
            self.enter()
            try:
                operand_token = self.current
                operand = self.unary()
            finally:
                self.depth -= 1
            self.need(operand, NUM, operand_token, f"The operand of unary '{operator.text}'")
            run = operand[1]
            return (NUM, (lambda lookup: -run(lookup)) if operator.text == "-" else run)
        return self.primary()

    def primary(self) -> Node:
        token = self.current
        if token.kind == "number":
            self.advance()
            value = float(token.value)  # type: ignore[arg-type]
            return (NUM, lambda lookup: value)
        if self.is_op("("):
            self.advance()
            node = self.expression()
            self.expect_op(")", "')' to close the '('")
            return node
        if token.kind == "quoted":
            self.advance()
            return self.metric(None, str(token.value))
        if token.kind == "name":
            word = token.text
            if word in ("true", "false"):
                self.advance()
                result = word == "true"
                return (BOOL, lambda lookup: result)
            if word == "device":
                return self.device_reference()
            if word in FUNCTIONS and self.tokens[self.index + 1].kind == "op" and self.tokens[self.index + 1].text == "(":
                return self.function()
            if word in KEYWORDS:
                raise self.error(f"Unexpected '{word}'.")
            self.advance()
            return self.metric(None, word)
        if token.kind == "end":
            raise self.error("Unexpected end of the expression: a value is missing.")
        if token.kind == "string":
            raise self.error("A string is only allowed as device(\"uid\").")
        raise self.error(f"Unexpected '{token.text}'.")

    def metric(self, device: str | None, name: str) -> Node:
        reference = (device, name)
        self.references.add(reference)
        if len(self.references) > MAX_REFERENCES:
            raise self.error(f"Too many metric references (at most {MAX_REFERENCES}).")

        def run(lookup: Lookup) -> float:
            value = lookup(reference)
            if value is None:
                raise _Unknown
            return value

        return (NUM, run)

    def device_reference(self) -> Node:
        self.advance()  # device
        self.expect_op("(", "'(' after device")
        uid_token = self.current
        if uid_token.kind != "string":
            raise self.error('Expected a quoted device uid, e.g. device("pump-2").')
        self.advance()
        self.expect_op(")", "')' after the device uid")
        self.expect_op(".", "'.' and a metric name after device(...)")
        name_token = self.current
        if name_token.kind == "quoted":
            self.advance()
            return self.metric(str(uid_token.value), str(name_token.value))
        if name_token.kind == "name" and name_token.text not in KEYWORDS:
            self.advance()
            return self.metric(str(uid_token.value), name_token.text)
        raise self.error("Expected a metric name after device(...).")

    def function(self) -> Node:
        name_token = self.advance()
        self.advance()  # (
        args: list[Node] = []
        while True:
            arg_token = self.current
            arg = self.expression()
            self.need(arg, NUM, arg_token, f"An argument of {name_token.text}()")
            args.append(arg)
            if len(args) > MAX_FUNCTION_ARGS:
                raise self.error(f"Too many arguments (at most {MAX_FUNCTION_ARGS}).", arg_token)
            if self.is_op(","):
                self.advance()
                continue
            self.expect_op(")", f"',' or ')' in {name_token.text}()")
            break
        runs = [arg[1] for arg in args]
        if name_token.text == "abs":
            if len(runs) != 1:
                raise ExpressionError("abs() takes exactly one argument.", name_token.position, name_token.text)
            only = runs[0]
            return (NUM, lambda lookup: abs(only(lookup)))
        if len(runs) < 2:
            raise ExpressionError(f"{name_token.text}() takes at least two arguments.", name_token.position, name_token.text)
        pick = min if name_token.text == "min" else max
        return (NUM, lambda lookup: pick(run(lookup) for run in runs))


def _or(left, right):
    return lambda lookup: left(lookup) or right(lookup)


def _and(left, right):
    return lambda lookup: left(lookup) and right(lookup)


def _compare(op: str, left, right):
    if op == "<":
        return lambda lookup: left(lookup) < right(lookup)
    if op == "<=":
        return lambda lookup: left(lookup) <= right(lookup)
    if op == ">":
        return lambda lookup: left(lookup) > right(lookup)
    if op == ">=":
        return lambda lookup: left(lookup) >= right(lookup)
    if op == "==":
        return lambda lookup: left(lookup) == right(lookup)
    return lambda lookup: left(lookup) != right(lookup)


def _arith(op: str, left, right):
    if op == "+":
        return lambda lookup: _finite(left(lookup) + right(lookup))
    if op == "-":
        return lambda lookup: _finite(left(lookup) - right(lookup))
    if op == "*":
        return lambda lookup: _finite(left(lookup) * right(lookup))

    def divide(lookup: Lookup) -> float:
        numerator, denominator = left(lookup), right(lookup)
        if denominator == 0:
            raise _Unknown
        return _finite(numerator / denominator if op == "/" else math.fmod(numerator, denominator))

    return divide


def parse(source: str) -> CompiledExpression:
    """Parse and type-check `source`; raises ExpressionError (with a position) when it is bad."""
    return _Parser(source).parse()
