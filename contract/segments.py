"""Segments: named rules over a user's features, declared in the job config's `[[segments.rules]]`:

    [[segments.rules]]
    name = "vip"
    when = "spend_30d > 200 and purchases_7d >= 3"

A rule is comparisons of a feature (a name `streamrank features` shows) with a number, joined by
`and`, `or`, `not` and parentheses. The job evaluates them where the features are, on the profile
it writes (udfs.features.profile), so a user's segments are those of their profile; the offline
replay evaluates the same rules on the same profile (the parity tests hold them equal).

The grammar is parsed by Python's own `ast` and evaluated by a closure tree: no `eval`, and any
node outside the grammar (calls, attributes, arithmetic) is refused with where it is.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Iterable

Features = dict[str, float]
Predicate = Callable[[Features], bool]

_COMPARE = {ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}
GRAMMAR = ("comparisons of a feature with a number (>, >=, <, <=, ==, !=) joined by and, or, not and "
           "parentheses, e.g. \"spend_30d > 200 and purchases_7d >= 3\"")


class SegmentRuleError(ValueError):
    """A rule outside the grammar, or naming a feature that does not exist; the message says which."""


def _operand(node: ast.expr, known: frozenset[str] | None, names: set[str]) -> Callable[[Features], float]:
    if isinstance(node, ast.Name):
        if known is not None and node.id not in known:
            raise SegmentRuleError(f"unknown feature {node.id!r}; the features are: {', '.join(sorted(known))}")
        names.add(node.id)
        name = node.id
        return lambda f: f.get(name, 0.0)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        node = ast.Constant(-node.operand.value)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = float(node.value)
        return lambda f: value
    raise SegmentRuleError(f"{ast.unparse(node)!r} is neither a feature nor a number; a rule is {GRAMMAR}")


def _compile(node: ast.expr, known: frozenset[str] | None, names: set[str]) -> Predicate:
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, known, names) for v in node.values]
        if isinstance(node.op, ast.And):
            return lambda f: all(p(f) for p in parts)
        return lambda f: any(p(f) for p in parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _compile(node.operand, known, names)
        return lambda f: not inner(f)
    if isinstance(node, ast.Compare):
        if any(type(op) not in _COMPARE for op in node.ops):
            raise SegmentRuleError(f"{ast.unparse(node)!r}: only >, >=, <, <=, ==, != compare; a rule is {GRAMMAR}")
        ops = [_COMPARE[type(op)] for op in node.ops]
        operands = [_operand(n, known, names) for n in (node.left, *node.comparators)]
        if not any(isinstance(n, ast.Name) for n in (node.left, *node.comparators)):
            raise SegmentRuleError(f"{ast.unparse(node)!r} compares no feature; a rule is {GRAMMAR}")

        def compare(f: Features) -> bool:
            values = [o(f) for o in operands]
            return all(op(a, b) for op, a, b in zip(ops, values, values[1:]))
        return compare
    raise SegmentRuleError(f"{ast.unparse(node)!r} is not a comparison; a rule is {GRAMMAR}")


def compile_rule(when: str, known: Iterable[str] | None = None) -> tuple[Predicate, frozenset[str]]:
    """The rule as a predicate over a features dict, and the features it reads. known: the feature
    names that exist (None: not checked)."""
    try:
        tree = ast.parse(when.strip(), mode="eval")
    except SyntaxError as err:
        raise SegmentRuleError(f"not a rule ({err.msg} at column {err.offset}); a rule is {GRAMMAR}") from None
    names: set[str] = set()
    predicate = _compile(tree.body, frozenset(known) if known is not None else None, names)
    return predicate, frozenset(names)


class Segments:
    """The config's segment rules, compiled once; `of(features)` gives a user's segments in the
    config's order."""

    def __init__(self, rules: Iterable[tuple[str, str]]) -> None:
        self.rules = [(name, compile_rule(when)[0]) for name, when in rules]

    @staticmethod
    def of_config(cfg) -> Segments:
        """The job config's [[segments.rules]] (contract.config.JobConfig)."""
        return Segments((r.name, r.when) for r in cfg.segments.rules)

    def of(self, features: Features) -> list[str]:
        return [name for name, holds in self.rules if holds(features)]

    def __bool__(self) -> bool:
        return bool(self.rules)


def changes(before: Iterable[str], after: Iterable[str]) -> tuple[list[str], list[str]]:
    """(entered, left) between two segment lists, each in the order given."""
    b, a = list(before), list(after)
    return [s for s in a if s not in b], [s for s in b if s not in a]
