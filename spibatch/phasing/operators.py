"""Phase-retrieval algorithms as operators that compose into a recipe.

    recipe = (HIO(beta=0.9) ** 50 * ShrinkWrap(sigma=2, threshold=0.1)) ** 10 * ER() ** 100
    recipe(reconstruction)

A recipe runs in reading order: ``A * B`` applies A, then B; ``A ** n`` applies A
n times.  (PyNX composes right to left, ``B * A * cdi``; a recipe string here is a
list of steps, so the default above ends with the ER polish.)
``repr`` prints the recipe back as written, and :func:`parse_recipe` reads it from
a string (the config's ``phasing.recipe``) without ``eval``.

Algorithms (y = P_M x, the modulus projection; P_S the support, with positivity):
ER (x <- P_S y), HIO (Fienup 1982), RAAR (Luke 2005), DM (Elser 2003, with
gamma_S = -1/beta and gamma_M = 1/beta; two modulus projections per iteration),
and ShrinkWrap (Marchesini 2003: blur the iterate with a Gaussian of ``sigma`` voxels
in Fourier space and keep what exceeds ``threshold`` times the maximum, or the
``keep`` fraction of the box with the highest values, found by a histogram).
"""

from __future__ import annotations

import ast
import math

import numpy as np

from spibatch.phasing.reconstruction import Reconstruction


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
        return Product([*_terms(self), *_terms(other)])

    def __pow__(self, count: int) -> "Operator":
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise RecipeError(f"an operator can be repeated a whole number of times, not {count!r}")
        return Power(self, count)

    def iterations(self) -> int:
        """Modulus projections this operator performs (for progress and budgets)."""
        return 0

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


def _terms(op: Operator) -> list[Operator]:
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

    def _beta(self, low: float = 0.0, high: float = 1.0) -> float:
        beta = self.params["beta"]
        if not isinstance(beta, (int, float)) or not low < beta <= high:
            raise RecipeError(f"{type(self).__name__}: beta must be in ({low}, {high}], not {beta!r}")
        return float(beta)


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
        if not self.params["sigma"] > 0:
            raise RecipeError(f"ShrinkWrap: sigma must be > 0 voxels, not {self.params['sigma']!r}")
        if not 0 < self.params["threshold"] < 1:
            raise RecipeError(f"ShrinkWrap: threshold must be in (0, 1), not {self.params['threshold']!r}")
        if not 0 <= self.params["keep"] < 1:
            raise RecipeError(f"ShrinkWrap: keep must be a fraction in (0, 1), not {self.params['keep']!r}")

    def apply(self, rec):
        n = rec.n
        sigma = float(self.params["sigma"])
        g = np.exp(-2 * (math.pi * sigma * np.fft.fftfreq(n)) ** 2)
        gz = np.exp(-2 * (math.pi * sigma * (np.fft.rfftfreq(n) if rec.measurement.real else np.fft.fftfreq(n))) ** 2)
        # blur the current estimate: P_S of the last modulus projection (P_S x if there was none);
        # the raw HIO/RAAR iterate outside the support is feedback, not density
        source = rec.fft.y if rec.y_is_projection else rec.x
        rec.kernels.project_support(source, rec.support, rec.positivity, rec.fft.y)
        rec.y_is_projection = False
        spectrum = rec.fft.forward(rec.fft.y)
        rec.changed()
        blurred_spectrum = rec.fft.spare_spectrum()
        rec.kernels.multiply_separable(spectrum, blurred_spectrum, (g / n ** 3).astype(np.float32), g.astype(np.float32),
                             gz.astype(np.float32))
        blurred = rec.fft.inverse(blurred_spectrum)
        for start, (volume, support) in enumerate(rec.per_start(blurred)):   # one, or each start of a GPU batch
            top = rec.kernels.max_real(volume)
            if not top > 0:
                raise RecipeError("ShrinkWrap: the blurred density has no positive value; the support would be empty")
            if self.params["keep"] > 0:
                level = _level_keeping(rec.kernels, volume, top, self.params["keep"])
            else:
                level = self.params["threshold"] * top
            kept = rec.kernels.threshold_support(volume, np.float32(level), support)
            if kept == 0:
                raise RecipeError(f"ShrinkWrap: threshold {self.params['threshold']} emptied the support; lower it")
            rec.record_support(start, int(kept))
        return rec


def _level_keeping(kernels, blurred: np.ndarray, top: float, fraction: float, bins: int = 4096) -> float:
    """The value above which ``fraction`` of all voxels lie, to 1/bins of the maximum (a histogram, no sort)."""
    counts = kernels.histogram_real(blurred, float(top), bins)
    above = np.cumsum(counts[::-1])[::-1]           # voxels at or above each bin's lower edge
    want = fraction * blurred.size
    index = int(np.searchsorted(-above, -want, side="right")) - 1
    index = max(index, 0)
    return top * index / bins


OPERATORS: dict[str, type[Step]] = {cls.__name__: cls for cls in (ER, HIO, RAAR, DM, ShrinkWrap)}


def parse_recipe(text: str) -> Operator:
    """The operator a recipe string describes, e.g. ``"(HIO(beta=0.9) ** 50 * ShrinkWrap()) ** 10 * ER() ** 100"``.

    Only operator names, keyword numbers, ``*``, ``**`` and parentheses are allowed.
    Raises RecipeError with a one-line message.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise RecipeError(f"cannot read the recipe {text!r}: {exc.msg} at column {exc.offset}") from None
    return _build(tree.body, text)


def _constant(node) -> float | int:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_constant(node.operand)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    raise RecipeError(f"expected a number, found {ast.unparse(node)!r}")


def _build(node, text: str) -> Operator:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return _build(node.left, text) * _build(node.right, text)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        count = _constant(node.right)
        if not isinstance(count, int) or count < 0:
            raise RecipeError(f"a repeat count must be a whole number >= 0, found {ast.unparse(node.right)!r}")
        return _build(node.left, text) ** count
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = node.func.id
        if name not in OPERATORS:
            raise RecipeError(f"unknown operator {name!r} in the recipe (known: {', '.join(OPERATORS)})")
        if node.args:
            raise RecipeError(f"{name}: give parameters by name, e.g. {name}(beta=0.9)")
        return OPERATORS[name](**{kw.arg: _constant(kw.value) for kw in node.keywords})
    if isinstance(node, ast.Name):
        hint = f"; write {node.id}()" if node.id in OPERATORS else f" (known: {', '.join(OPERATORS)})"
        raise RecipeError(f"unknown operator {node.id!r} in the recipe{hint}" if node.id not in OPERATORS
                          else f"{node.id} needs parentheses{hint}")
    raise RecipeError(f"cannot read {ast.unparse(node)!r} in the recipe: use operators, * and ** only")
