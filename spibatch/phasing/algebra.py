"""The algebra of phase-retrieval recipes: operators that compose (``*``) and repeat (``**``).

``A * B`` applies A, then B; ``A ** n`` applies A n times; ``repr`` prints the recipe back as
it is written.  The algorithms themselves (ER, HIO, RAAR, DM, ShrinkWrap) and the recipe
parser are in :mod:`spibatch.phasing.operators`.  Limits on what a recipe may ask for are
here, beside the counts they bound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spibatch.phasing.reconstruction import Reconstruction

MAX_RECIPE_CHARS = 10_000     # a recipe is a line of a config file; the default is 80 characters
MAX_OPERATORS = 500           # operator calls written out (repeats are written with **)
MAX_NESTING = 32              # levels of parentheses
MAX_STEPS = 1_000_000         # operator applications per start: 1e6 modulus projections of even a 64^3
                              # box take hours; the default recipe runs 610


class RecipeError(ValueError):
    """A recipe that cannot be read or run; the message is one line."""


def _number(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


class Operator:
    """Base: ``apply(rec)``; ``*`` composes, ``**`` repeats, ``repr`` is the recipe."""

    def apply(self, rec: Reconstruction) -> Reconstruction:
        raise NotImplementedError

    def __call__(self, rec: Reconstruction) -> Reconstruction:
        return self.apply(rec)

    def __mul__(self, other):
        if not isinstance(other, Operator):
            return NotImplemented
        return Product([*flat_terms(self), *flat_terms(other)])

    def __pow__(self, count: int) -> "Operator":
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise RecipeError(f"an operator can be repeated a whole number of times, not {count!r}")
        return Power(self, count)

    def iterations(self) -> int:
        """Iterations (HIO, ER, RAAR, DM: one error each) this operator runs (for progress)."""
        return 0

    def steps(self) -> int:
        """Elementary operators this one applies (an iteration or a shrink-wrap each): its cost."""
        return 1

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


def flat_terms(op: Operator) -> list[Operator]:
    return list(op.terms) if isinstance(op, Product) else [op]


class Product(Operator):
    """``A * B * C``: A first, C last."""

    def __init__(self, terms: list[Operator]):
        self.terms = terms

    def apply(self, rec):
        for op in self.terms:
            op.apply(rec)
        return rec

    def iterations(self) -> int:
        return sum(t.iterations() for t in self.terms)

    def steps(self) -> int:
        return sum(t.steps() for t in self.terms)

    def __repr__(self) -> str:
        return " * ".join(repr(t) for t in self.terms)


class Power(Operator):
    """``A ** n``."""

    def __init__(self, base: Operator, count: int):
        self.base, self.count = base, count

    def apply(self, rec):
        for _ in range(self.count):
            self.base.apply(rec)
        return rec

    def iterations(self) -> int:
        return self.count * self.base.iterations()

    def steps(self) -> int:
        return self.count * self.base.steps()

    def __repr__(self) -> str:
        base = repr(self.base)
        if isinstance(self.base, (Product, Power)):
            base = f"({base})"
        return f"{base} ** {self.count}"


class Step(Operator):
    """An elementary operator with keyword parameters (``defaults`` names them)."""

    defaults: dict[str, float] = {}

    def __init__(self, **params):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults) or "none"
            raise RecipeError(f"{type(self).__name__} has no parameter {unknown[0]!r} (parameters: {known})")
        self.given = dict(params)
        self.params = {**self.defaults, **params}
        self.check()

    def check(self) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={_number(v)}" for name, v in self.given.items())
        return f"{type(self).__name__}({args})"

    def _beta(self, low: float = 0.01, high: float = 1.0) -> float:
        """beta in [low, high] (below 0.01 an update is the plain projection, and DM's 1 / beta overflows)."""
        beta = self.params["beta"]
        if not isinstance(beta, (int, float)) or not low <= beta <= high:
            raise RecipeError(f"{type(self).__name__}: beta must be in [{low}, {high}], not {beta!r}")
        return float(beta)


def check_budget(recipe: Operator) -> Operator:
    """``recipe`` itself, or RecipeError when one start would apply more than MAX_STEPS operators
    (or would run no iteration at all)."""
    steps = recipe.steps()
    if steps > MAX_STEPS:
        raise RecipeError(f"the recipe applies {_count(steps)} operators per start ({_count(recipe.iterations())} "
                          f"iterations); at most {MAX_STEPS:,} are allowed: lower a repeat count")
    if recipe.iterations() == 0:
        raise RecipeError("the recipe has no iteration (HIO, ER, RAAR or DM)")
    return recipe


def _count(n: int) -> str:
    """A count for a message: 1,234,567, or 'more than 10^40' for one too long to print."""
    return f"{n:,}" if n < 10 ** 18 else f"more than 10^{len(str(n)) - 1}"
