"""Sign facts about expressions: what can be shown >= 0 or > 0 from hyperparameter ranges,
symbol assumptions and facts already established (states proven non-negative).

A small interval-free sign analysis, deliberately conservative: `False` means "not shown",
never "shown negative"."""

from __future__ import annotations

import sympy

from .expr import GlobalSum, ReduceMax, ReduceMin, ReduceSum


class SignFacts:
    def __init__(self, nonneg=None, positive=None, bounded_by_one=None, at_most_one=None):
        self.nonneg = set(nonneg or ())  # symbols known >= 0
        self.positive = set(positive or ())  # symbols known > 0
        self.below_one = set(bounded_by_one or ())  # symbols known in [0, 1)
        self.at_most_one = set(at_most_one or ()) | self.below_one  # symbols known in [0, 1]

    def is_nonneg(self, e: sympy.Basic) -> bool:
        return self._sign(e) in ("+", "0+")

    def is_positive(self, e: sympy.Basic) -> bool:
        return self._sign(e) == "+"

    def _sign(self, e) -> str | None:
        """'+' (> 0), '0+' (>= 0), or None (unknown)."""
        if e.is_Number:
            return "+" if e > 0 else "0+" if e == 0 else None
        if e.is_Symbol:
            if e in self.positive or e.is_positive:
                return "+"
            if e in self.nonneg or e.is_nonnegative:
                return "0+"
            return None
        if isinstance(e, sympy.Add):
            sign = self._add_sign(e)
            if sign is None and len(e.free_symbols) <= 3:
                sign = "+" if e.is_positive else "0+" if e.is_nonnegative else None  # step - 1 >= 0
            return sign
        if isinstance(e, sympy.Mul):
            signs = [self._sign(a) for a in e.args]
            if None in signs:
                return self._one_minus(e)
            return "+" if all(s == "+" for s in signs) else "0+"
        if isinstance(e, sympy.Pow):
            return self._pow_sign(e)
        if isinstance(e, (sympy.Abs,)):
            return "0+"
        if isinstance(e, sympy.exp):
            return "+"
        if isinstance(e, sympy.Max):
            signs = [self._sign(a) for a in e.args]
            return "+" if "+" in signs else "0+" if "0+" in signs else None
        if isinstance(e, (sympy.Min, ReduceMin, ReduceMax, ReduceSum, GlobalSum)):
            signs = [self._sign(a) for a in e.args]
            if None in signs:
                return None
            return "+" if all(s == "+" for s in signs) else "0+"
        if isinstance(e, sympy.floor):  # floor(x) >= 0 for x >= 0
            return "0+" if self._sign(e.args[0]) in ("+", "0+") else None
        if isinstance(e, sympy.Mod):  # floored: a % b has b's sign
            return "0+" if self._sign(e.args[1]) == "+" else None
        if isinstance(e, sympy.Piecewise):
            signs = [self._sign(a.expr) for a in e.args]
            if None in signs:
                return None
            return "+" if all(s == "+" for s in signs) else "0+"
        return None

    def _add_sign(self, e: sympy.Add) -> str | None:
        signs = [self._sign(a) for a in e.args]
        if None not in signs:
            return "+" if "+" in signs else "0+"
        return self._one_minus(e)

    def _one_minus(self, e) -> str | None:
        """1 - x**k with x in [0, 1) and k a positive integer (bias corrections) is > 0;
        1 - x with x in [0, 1) likewise."""
        if isinstance(e, sympy.Add) and len(e.args) == 2 and sympy.S.One in e.args:
            other = e.args[0] if e.args[1] == 1 else e.args[1]
            neg = -other
            base = neg.base if isinstance(neg, sympy.Pow) else neg
            exp = neg.exp if isinstance(neg, sympy.Pow) else sympy.S.One
            if base in self.below_one and (exp.is_positive is True):
                return "+"
            if base in self.at_most_one and (exp.is_positive is True):
                return "0+"
        return None

    def _pow_sign(self, e: sympy.Pow) -> str | None:
        base, exp = e.args
        if exp.is_Integer and int(exp) % 2 == 0 and exp > 0:
            return "+" if self._sign(base) == "+" else "0+"
        b = self._sign(base)
        if b == "+":
            return "+"
        if b == "0+":
            return "0+"  # where defined: x**-k with x = 0 is not a number at all
        if exp.is_positive and exp.is_Rational and not exp.is_Integer:
            return "0+"  # a real root (sqrt) is >= 0 wherever it is defined
        return None
