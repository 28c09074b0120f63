"""Phase-retrieval algorithms as operators that compose into a recipe.

    recipe = (HIO(beta=0.9) ** 50 * ShrinkWrap(sigma=2, threshold=0.1)) ** 10 * ER() ** 100
    recipe(reconstruction)

A recipe runs in reading order: ``A * B`` applies A, then B; ``A ** n`` applies A
n times.  (PyNX composes right to left, ``B * A * cdi``; a recipe string here is a
list of steps, so the default above ends with the ER polish.)
``repr`` prints the recipe back as written, and :func:`parse_recipe` reads it from
a string (the config's ``phasing.recipe``) without ``eval``, refusing recipes too long,
too deeply nested or too long-running to be meant (:data:`MAX_RECIPE_CHARS`,
:data:`MAX_OPERATORS`, :data:`MAX_NESTING`, :data:`~spibatch.phasing.algebra.MAX_STEPS`).  A parsed recipe pickles
(it travels to Parsl workers as it is).

Algorithms (y = P_M x, the modulus projection; P_S the support, with positivity):
ER (x <- P_S y), HIO (Fienup 1982), RAAR (Luke 2005), DM (Elser 2003, with
gamma_S = -1/beta and gamma_M = 1/beta; two modulus projections per iteration),
and ShrinkWrap (Marchesini 2003: blur the iterate with a Gaussian of ``sigma`` voxels
in Fourier space and keep what exceeds ``threshold`` times the maximum, or the
``keep`` fraction of the box with the highest values, found by a histogram).
"""

from __future__ import annotations

import math
import re

import numpy as np

from spibatch.phasing.algebra import (MAX_NESTING, MAX_OPERATORS, MAX_RECIPE_CHARS, Operator, Product,
                                      RecipeError, Step, flat_terms, check_budget)
from spibatch.phasing.auto import Auto
from spibatch.phasing.support import MIN_SUPPORT_VOXELS, shrink_wrap

__all__ = ["ER", "HIO", "RAAR", "DM", "ShrinkWrap", "Auto", "OPERATORS", "Operator", "RecipeError", "parse_recipe"]


class _Iteration(Step):
    """One modulus projection y = P_M x, then the algorithm's pointwise real-space update."""

    def apply(self, rec):
        rec.algorithm = type(self).__name__
        y = rec.modulus_projection()
        self.update(rec, y)
        rec.changed()
        return rec

    def update(self, rec, y) -> None:
        raise NotImplementedError

    def iterations(self) -> int:
        return 1


class ER(_Iteration):
    """Error reduction: x <- P_S P_M x."""

    def update(self, rec, y):
        rec.kernels.update_er(rec.x, y, rec.support, rec.positivity)


class _Relaxed(_Iteration):
    """An iteration with a relaxation / feedback parameter ``beta`` in (0, 1]."""

    defaults = {"beta": 0.9}

    def check(self):
        self._beta()


class HIO(_Relaxed):
    """Hybrid input-output with feedback ``beta``."""

    def update(self, rec, y):
        rec.kernels.update_hio(rec.x, y, rec.support, rec.positivity, np.float32(self.params["beta"]))


class RAAR(_Relaxed):
    """Relaxed averaged alternating reflections with relaxation ``beta``."""

    def update(self, rec, y):
        rec.kernels.update_raar(rec.x, y, rec.support, rec.positivity, np.float32(self.params["beta"]))


class DM(Step):
    """Difference map (Elser) with ``beta``; gamma_S = -1/beta, gamma_M = 1/beta."""

    defaults = {"beta": 1.0}

    def check(self):
        self._beta()

    def apply(self, rec):
        rec.algorithm = "DM"
        beta = self.params["beta"]
        gamma_m, gamma_s = 1.0 / beta, -1.0 / beta
        y = rec.modulus_projection()
        a = rec.xp.empty_like(rec.x)
        # b overwrites y in place (each element of y is read before it is written)
        rec.kernels.dm_first(rec.x, y, rec.support, rec.positivity, np.float32(gamma_m), np.float32(gamma_s), a, y)
        pb = rec.modulus_projection(src=y, record=False)
        rec.y_is_projection = False
        rec.kernels.dm_second(rec.x, a, pb, np.float32(beta))
        rec.changed()
        return rec

    def iterations(self) -> int:
        return 1


class ShrinkWrap(Step):
    """Support update: blur the current estimate (P_S P_M x) by a Gaussian of ``sigma`` voxels, threshold it.

    ``threshold``: keep voxels above this fraction of the blurred maximum; or ``keep``:
    keep this fraction of the box (the highest blurred values, cut found by a histogram).
    """

    defaults = {"sigma": 2.0, "threshold": 0.1, "keep": 0.0}

    def check(self):
        if not 0 < self.params["sigma"] <= MAX_SIGMA:
            raise RecipeError(f"ShrinkWrap: sigma must be in (0, {MAX_SIGMA}] voxels, not {self.params['sigma']!r}")
        if not MIN_THRESHOLD <= self.params["threshold"] <= MAX_THRESHOLD:
            raise RecipeError(f"ShrinkWrap: threshold must be in [{MIN_THRESHOLD}, {MAX_THRESHOLD}] (of the blurred "
                              f"maximum), not {self.params['threshold']!r}")
        if not (self.params["keep"] == 0 or MIN_KEEP <= self.params["keep"] <= MAX_KEEP):
            raise RecipeError(f"ShrinkWrap: keep must be 0 (off) or a fraction of the box in [{MIN_KEEP}, {MAX_KEEP}] "
                              f"(an object oversampled twice fills at most 1/8 of it), not {self.params['keep']!r}")

    def apply(self, rec):
        shrink_wrap(rec, float(self.params["sigma"]), [self.params["threshold"]] * rec.batch, self.params["keep"],
                    name=repr(self), min_voxels=MIN_SUPPORT_VOXELS)
        return rec


MAX_SIGMA = 100.0                          # voxels: a wider blur is wider than any box phased
MIN_THRESHOLD, MAX_THRESHOLD = 1e-3, 0.95  # below: every voxel of the box; above: a voxel or two
MIN_KEEP, MAX_KEEP = 1e-6, 0.5


OPERATORS: dict[str, type[Step]] = {cls.__name__: cls for cls in (ER, HIO, RAAR, DM, ShrinkWrap, Auto)}

_TOKEN = re.compile(r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_]\w*)|(?P<op>\*\*|\S))", re.ASCII)


def parse_recipe(text: str) -> Operator:
    """The operator a recipe string describes, e.g. ``"(HIO(beta=0.9) ** 50 * ShrinkWrap()) ** 10 * ER() ** 100"``.

    Only operator names, keyword numbers, ``*``, ``**`` and parentheses are allowed.  The parser
    keeps its own stack (no recursion): any text gives an operator or one RecipeError (a ValueError)
    with a one-line message, also a text too long (> MAX_RECIPE_CHARS characters, > MAX_OPERATORS
    operators), too deep (> MAX_NESTING parentheses) or too long-running (> MAX_STEPS per start).
    """
    if not isinstance(text, str):
        raise RecipeError(f"a recipe is a text such as 'HIO() ** 50 * ER() ** 10', not {type(text).__name__}")
    if len(text) > MAX_RECIPE_CHARS:
        raise RecipeError(f"the recipe is {len(text):,} characters long; at most {MAX_RECIPE_CHARS:,} are read: "
                          "write repeats with **, e.g. (HIO() ** 50 * ShrinkWrap()) ** 10")
    if text.strip().lower() == "auto":
        return Auto()
    return check_budget(_Parser(text).recipe())


class _Parser:
    """``recipe := product; product := factor ('*' factor)*; factor := (call | '(' product ')') ['**' count]``."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = _TOKEN.finditer(text.rstrip())
        self.kind, self.value, self.column = "", "", 0
        self.calls = 0
        self.advance()

    def advance(self) -> None:
        match = next(self.tokens, None)
        if match is None:
            self.kind, self.value, self.column = "end", "", len(self.text.rstrip()) + 1
            return
        self.kind = match.lastgroup
        self.value = match.group(self.kind)
        self.column = match.start(self.kind) + 1

    def fail(self, why: str) -> RecipeError:
        shown = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        return RecipeError(f"cannot read the recipe {shown!r}: {why} at column {self.column}")

    def found(self) -> str:
        return "the end" if self.kind == "end" else repr(self.value)

    def recipe(self) -> Operator:
        stack: list[list[Operator]] = [[]]       # the terms of each open parenthesis (and of the whole)
        while True:
            if self.value == "(" and self.kind == "op":
                if len(stack) > MAX_NESTING:
                    raise RecipeError(f"the recipe nests parentheses more than {MAX_NESTING} deep")
                stack.append([])
                self.advance()
                continue
            operand = self.call()
            while True:
                operand = self.repeat(operand)
                stack[-1].extend(flat_terms(operand))
                if self.value == ")" and self.kind == "op" and len(stack) > 1:
                    terms = stack.pop()
                    operand = terms[0] if len(terms) == 1 else Product(terms)
                    self.advance()
                    continue
                break
            if self.value == "*" and self.kind == "op":
                self.advance()
                continue
            if self.kind != "end":
                if self.value in "+-/%@&|^<>=[]{}.,:;~" and self.kind == "op":
                    raise RecipeError(f"cannot read {self.value!r} at column {self.column} of the recipe: use "
                                      "operators, * and ** only")
                raise self.fail(f"expected '*' or the end, found {self.found()}")
            if len(stack) > 1:
                raise self.fail("a '(' is not closed")
            terms = stack[0]
            return terms[0] if len(terms) == 1 else Product(terms)

    def repeat(self, operand: Operator) -> Operator:
        if not (self.value == "**" and self.kind == "op"):
            return operand
        self.advance()
        count = self.number()
        if not isinstance(count, int) or count < 0:
            raise RecipeError(f"a repeat count must be a whole number >= 0, found {count!r}")
        if self.value == "**" and self.kind == "op":
            raise self.fail("write (A ** n) ** m, not A ** n ** m")
        return operand ** count

    def call(self) -> Operator:
        if self.kind != "name":
            raise self.fail(f"expected an operator (one of {', '.join(OPERATORS)}) or '(', found {self.found()}")
        name = self.value
        known = ", ".join(OPERATORS)
        if name not in OPERATORS:
            raise RecipeError(f"unknown operator {name!r} in the recipe (known: {known})")
        self.advance()
        if self.value != "(":
            raise RecipeError(f"{name} needs parentheses; write {name}()")
        self.calls += 1
        if self.calls > MAX_OPERATORS:
            raise RecipeError(f"the recipe writes out more than {MAX_OPERATORS} operators: write repeats with **")
        self.advance()
        params: dict[str, float | int] = {}
        while not (self.value == ")" and self.kind == "op"):
            if self.kind != "name":
                if self.kind in ("number", "op") and self.value not in (",", ")"):
                    raise RecipeError(f"{name}: give parameters by name, e.g. {name}(beta=0.9)")
                raise self.fail(f"expected a parameter name, found {self.found()}")
            key = self.value
            self.advance()
            if self.value != "=":
                raise RecipeError(f"{name}: give parameters by name, e.g. {name}(beta=0.9)")
            self.advance()
            if key in params:
                raise RecipeError(f"{name}: parameter {key!r} given twice")
            params[key] = self.number()
            if self.value == ",":
                self.advance()
            elif self.value != ")":
                raise self.fail(f"expected ',' or ')', found {self.found()}")
        self.advance()
        return OPERATORS[name](**params)

    def number(self) -> float | int:
        sign = 1
        if self.value == "-" and self.kind == "op":
            sign = -1
            self.advance()
        if self.kind != "number":
            raise self.fail(f"expected a number, found {self.found()}")
        text = self.value
        self.advance()
        try:
            value = int(text) if text.isdigit() else float(text)
        except ValueError:        # more digits than Python converts
            raise RecipeError(f"the number {text[:20]}... in the recipe is too long") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise RecipeError(f"expected a finite number in the recipe, found {text}")
        return sign * value
