"""Exact unit handling for medication doses, patient weights and dosing periods.

Every conversion factor here is an exact rational number and all arithmetic is done
with :class:`fractions.Fraction`.  Values leave this module either as ``Fraction``
(the ``*_exact`` functions) or as :class:`decimal.Decimal`.

Decimal results are exact whenever the exact value has a terminating decimal
expansion (always the case for metric mass/volume conversions, pounds and ounces).
A value such as 1/3 (e.g. "every 8 hours" expressed in days) has no finite decimal
form; it is then rounded once, half-even, to :data:`DECIMAL_PRECISION` significant
digits.  Callers that must stay exact (e.g. a dose multiplied by a frequency) should
chain the ``*_exact`` functions and convert only the final result with
:func:`fraction_to_decimal`.

Anything that cannot be converted exactly raises :class:`UnitError` with a reason
in plain English; nothing is guessed:

* a volume (mL) is a mass only when a strength in mg/mL is given,
* international units ``[iU]`` are never a mass,
* months and years (``mo``, ``a``) have no exact length in days,
* the UCUM enzyme unit ``U`` is not ``[iU]``, and a bare ``oz`` (fluid or mass?) is
  not accepted; ``G`` and ``S`` (UCUM gauss/siemens) are not read as gram/second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import MAX_EMAX, MIN_EMIN, ROUND_HALF_EVEN, Context, Decimal, localcontext
from fractions import Fraction
from typing import Final, Literal, TypeAlias

__all__ = [
    "DECIMAL_PRECISION",
    "Number",
    "UnitError",
    "concentration_to_mg_per_ml",
    "concentration_to_mg_per_ml_exact",
    "convert",
    "convert_exact",
    "dimension",
    "fraction_to_decimal",
    "is_terminating",
    "normalize_unit",
    "parse_strength",
    "parse_strength_exact",
    "period_to_days",
    "period_to_days_exact",
    "to_fraction",
    "to_mg",
    "to_mg_exact",
    "weight_to_kg",
    "weight_to_kg_exact",
]

Number: TypeAlias = Decimal | float | int | Fraction
Dimension: TypeAlias = Literal["mass", "volume", "time", "iu", "count", "ratio"]

#: Significant digits used only when an exact result has no finite decimal expansion.
DECIMAL_PRECISION: Final[int] = 34

# Guards against pathological input (e.g. Decimal("1E+999999999")).
_MAX_EXPONENT: Final[int] = 1000
_MAX_DIGITS: Final[int] = 1000
_MAX_INT_BITS: Final[int] = 3000


class UnitError(ValueError):
    """A value/unit that cannot be converted exactly; ``str(err)`` is the reason."""


# --------------------------------------------------------------------------- factors
#: mass in milligrams (exact).  1 [lb_av] = 0.45359237 kg (exact by definition),
#: 1 [oz_av] = 1/16 [lb_av].
_MASS_MG: Final[dict[str, Fraction]] = {
    "kg": Fraction(10**6),
    "g": Fraction(10**3),
    "mg": Fraction(1),
    "ug": Fraction(1, 10**3),
    "ng": Fraction(1, 10**6),
    "[lb_av]": Fraction(45359237, 100),
    "[oz_av]": Fraction(45359237, 1600),
}
#: volume in millilitres (exact).
_VOLUME_ML: Final[dict[str, Fraction]] = {
    "L": Fraction(1000),
    "dL": Fraction(100),
    "mL": Fraction(1),
    "uL": Fraction(1, 1000),
}
#: time in days (exact).  ``mo`` and ``a`` are deliberately absent.
_TIME_D: Final[dict[str, Fraction]] = {
    "s": Fraction(1, 86400),
    "min": Fraction(1, 1440),
    "h": Fraction(1, 24),
    "d": Fraction(1),
    "wk": Fraction(7),
}
_INEXACT_TIME: Final[frozenset[str]] = frozenset({"mo", "a"})
_IU: Final[str] = "[iU]"

_CANONICAL: Final[frozenset[str]] = frozenset(
    {*_MASS_MG, *_VOLUME_ML, *_TIME_D, *_INEXACT_TIME, _IU, "1"}
)

# Exact (case-sensitive) spellings -> canonical UCUM.  Includes the UCUM
# case-insensitive forms where they cannot be confused with another unit.
_ALIASES: Final[dict[str, str]] = {
    **{u: u for u in _CANONICAL},
    # mass
    "KG": "kg",
    "MG": "mg",
    "UG": "ug",
    "NG": "ng",
    "mcg": "ug",
    "MCG": "ug",
    "Mcg": "ug",
    "\u00b5g": "ug",  # MICRO SIGN
    "\u03bcg": "ug",  # GREEK SMALL LETTER MU
    "[LB_AV]": "[lb_av]",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "[OZ_AV]": "[oz_av]",
    # volume
    "l": "L",
    "dl": "dL",
    "DL": "dL",
    "ml": "mL",
    "ML": "mL",
    "ul": "uL",
    "\u00b5L": "uL",
    "\u03bcL": "uL",
    "\u00b5l": "uL",
    "\u03bcl": "uL",
    # time (UCUM case-insensitive forms; "S" is siemens in case-sensitive UCUM: not accepted)
    "MIN": "min",
    "HR": "h",
    "hr": "h",
    "D": "d",
    "WK": "wk",
    "MO": "mo",
    "ANN": "a",
    # international units
    "[IU]": _IU,
    "IU": _IU,
    "iu": _IU,
}

# Whole-word spellings, matched case-insensitively.
_WORDS: Final[dict[str, str]] = {
    **{w: "kg" for w in ("kilogram", "kilograms", "kilogramme", "kilogrammes")},
    **{w: "g" for w in ("gram", "grams", "gramme", "grammes")},
    **{w: "mg" for w in ("milligram", "milligrams", "milligramme", "milligrammes")},
    **{w: "ug" for w in ("microgram", "micrograms", "microgramme", "microgrammes")},
    **{w: "ng" for w in ("nanogram", "nanograms")},
    **{w: "[lb_av]" for w in ("pound", "pounds")},
    **{w: "L" for w in ("litre", "litres", "liter", "liters")},
    **{w: "dL" for w in ("decilitre", "decilitres", "deciliter", "deciliters")},
    **{w: "mL" for w in ("millilitre", "millilitres", "milliliter", "milliliters")},
    **{w: "uL" for w in ("microlitre", "microlitres", "microliter", "microliters")},
    **{w: "s" for w in ("second", "seconds", "sec")},
    **{w: "min" for w in ("minute", "minutes")},
    **{w: "h" for w in ("hour", "hours", "hrs")},
    **{w: "d" for w in ("day", "days")},
    **{w: "wk" for w in ("week", "weeks")},
    **{w: "mo" for w in ("month", "months")},
    **{w: "a" for w in ("year", "years")},
    **{w: _IU for w in ("international unit", "international units")},
}

_ANNOTATION_RE: Final = re.compile(r"\{[^{}]*\}")
_UCUM_FACTOR_DEN_RE: Final = re.compile(r"\(\s*([0-9]+)\s*\.\s*([^().\s]+)\s*\)")
_TEXT_FACTOR_DEN_RE: Final = re.compile(r"([0-9]+)\s*([^\s0-9./()][^\s./()]*)")
_UCUM_AMBIGUOUS_DEN_RE: Final = re.compile(r"[0-9]+\s*\.\s*\S+")


# --------------------------------------------------------------------- numbers
def to_fraction(value: object, what: str = "value") -> Fraction:
    """Exact rational value of a JSON-ish number.

    Floats are read through their shortest ``repr`` (i.e. the digits that were in
    the JSON text), so ``0.1`` is exactly 1/10.  Booleans, strings, NaN and
    infinities are rejected.
    """
    if isinstance(value, bool):
        raise UnitError(f"{what} must be a number, not a boolean")
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:
            raise UnitError(f"{what} is out of the supported range")
        return Fraction(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise UnitError(f"{what} must be a finite number")
        return Fraction(Decimal(repr(value)))
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise UnitError(f"{what} must be a finite number")
        tup = value.as_tuple()
        exponent = tup.exponent
        assert isinstance(exponent, int)
        if abs(exponent) > _MAX_EXPONENT or len(tup.digits) > _MAX_DIGITS:
            raise UnitError(f"{what} is out of the supported range")
        return Fraction(value)
    if isinstance(value, Fraction):
        if (
            value.numerator.bit_length() > _MAX_INT_BITS
            or value.denominator.bit_length() > _MAX_INT_BITS
        ):
            raise UnitError(f"{what} is out of the supported range")
        return value
    raise UnitError(f"{what} must be a number, got {type(value).__name__}")


def is_terminating(value: Fraction) -> bool:
    """True when ``value`` has a finite decimal expansion."""
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    return den == 1


def fraction_to_decimal(value: Fraction) -> Decimal:
    """Exact Decimal when possible, else rounded half-even to DECIMAL_PRECISION digits.

    Exact results carry no trailing zeros after the decimal point and never use
    exponent notation for integers (``Decimal(500)``, not ``5E+2``).
    """
    num, den = value.numerator, value.denominator
    if den == 1:
        return Decimal(num)
    twos = fives = 0
    rest = den
    while rest % 2 == 0:
        rest //= 2
        twos += 1
    while rest % 5 == 0:
        rest //= 5
        fives += 1
    if rest == 1:
        k = max(twos, fives)
        scaled = num * 2 ** (k - twos) * 5 ** (k - fives)  # == value * 10**k, an integer
        sign, digits, _ = Decimal(scaled).as_tuple()
        return Decimal((sign, digits, -k))
    ctx = Context(prec=DECIMAL_PRECISION, rounding=ROUND_HALF_EVEN, Emax=MAX_EMAX, Emin=MIN_EMIN)
    with localcontext(ctx):
        return Decimal(num) / Decimal(den)


def _show(value: object) -> str:
    """A value as a clinician reads it (these texts end up on cards): 7.5, not Fraction(15, 2)."""
    try:
        if isinstance(value, Fraction):
            d = Decimal(value.numerator) / Decimal(value.denominator)
            text = format(d.normalize(), "f") if value.denominator != 1 else str(value.numerator)
        elif isinstance(value, Decimal):
            text = format(value.normalize(), "f")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            text = format(value, "g") if isinstance(value, float) else str(value)
        else:
            text = repr(value) if not isinstance(value, str) else value
    except (ValueError, ArithmeticError):  # e.g. int too large to print
        return "<number>"
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------- units
@dataclass(frozen=True, slots=True)
class _Unit:
    """A parsed unit: ``num`` alone, or ``num / (factor . den)``."""

    num: str
    den: str | None = None
    factor: int = 1

    @property
    def canonical(self) -> str:
        if self.den is None:
            return self.num
        if self.factor == 1:
            return f"{self.num}/{self.den}"
        return f"{self.num}/({self.factor}.{self.den})"


def _simple(unit: str) -> str | None:
    u = unit.strip()
    if u in _ALIASES:
        return _ALIASES[u]
    word = " ".join(u.lower().split())
    if word in _WORDS:
        return _WORDS[word]
    if u.lower() == "mcg":
        return "ug"
    if _ANNOTATION_RE.fullmatch(u):
        return u  # UCUM annotation, a dimensionless count such as {tablet}
    return None


def _parse(unit: object) -> _Unit:
    if not isinstance(unit, str):
        raise UnitError(f"unit must be text, got {type(unit).__name__}")
    text = unit.strip()
    if not text:
        raise UnitError("unit is empty")
    simple = _simple(text)
    if simple is not None:
        return _Unit(simple)
    if "/" in text:
        num_text, den_text = (part.strip() for part in text.split("/", 1))
        num = _simple(num_text) if num_text else None
        if num is None or "/" in den_text:
            raise UnitError(f"unknown unit '{_show(unit)}'")
        den = _simple(den_text)
        factor = 1
        if den is None:
            m = _UCUM_FACTOR_DEN_RE.fullmatch(den_text) or _TEXT_FACTOR_DEN_RE.fullmatch(den_text)
            if m is None:
                if _UCUM_AMBIGUOUS_DEN_RE.fullmatch(den_text):
                    raise UnitError(
                        f"ambiguous unit '{_show(unit)}': in UCUM 'a/5.b' means (a/5).b; "
                        "write e.g. 'mg/(5.mL)'"
                    )
                raise UnitError(f"unknown unit '{_show(unit)}'")
            factor = int(m.group(1))
            den = _simple(m.group(2))
            if den is None or factor <= 0:
                raise UnitError(f"unknown unit '{_show(unit)}'")
        return _Unit(num, den, factor)
    raise UnitError(f"unknown unit '{_show(unit)}'")


def _dim(simple: str) -> Dimension:
    if simple in _MASS_MG:
        return "mass"
    if simple in _VOLUME_ML:
        return "volume"
    if simple in _TIME_D or simple in _INEXACT_TIME:
        return "time"
    if simple == _IU:
        return "iu"
    return "count"  # "1" or an annotation


def normalize_unit(unit: str) -> str:
    """Canonical UCUM spelling of ``unit`` (e.g. ``mcg`` -> ``ug``, ``mg/5 mL`` -> ``mg/(5.mL)``).

    Raises UnitError for anything not recognised.
    """
    return _parse(unit).canonical


def dimension(unit: str) -> Dimension:
    """``mass``, ``volume``, ``time``, ``iu``, ``count`` or ``ratio`` (any ``a/b`` unit)."""
    parsed = _parse(unit)
    return "ratio" if parsed.den is not None else _dim(parsed.num)


def _not_mass_reason(parsed: _Unit, value: object) -> str:
    canon = parsed.canonical
    if parsed.den is not None:
        if _dim(parsed.num) == "mass" and _dim(parsed.den) == "mass":
            return f"'{canon}' is a weight-based dose; the patient's weight is needed to get mg"
        if _dim(parsed.num) == "mass" and _dim(parsed.den) == "volume":
            return f"'{canon}' is a concentration, not a dose"
        return f"'{canon}' is not a mass"
    kind = _dim(parsed.num)
    if kind == "iu":
        return "[iU] is not a mass (international units cannot be converted to mg)"
    if kind == "time":
        return f"'{canon}' is a unit of time, not a mass"
    if kind == "count":
        return (
            f"'{canon}' counts dose units (tablets, puffs, ...); "
            "mg cannot be determined without the product strength"
        )
    return f"'{canon}' is not a mass"  # pragma: no cover - all kinds handled above


def to_mg_exact(value: Number, unit: str, strength_mg_per_ml: Number | None = None) -> Fraction:
    """Exact amount in mg.  A volume needs ``strength_mg_per_ml``."""
    amount = to_fraction(value, "dose value")
    if amount < 0:
        raise UnitError(f"dose value must not be negative (got {_show(value)})")
    parsed = _parse(unit)
    if parsed.den is None:
        if parsed.num in _MASS_MG:
            return amount * _MASS_MG[parsed.num]
        if parsed.num in _VOLUME_ML:
            if strength_mg_per_ml is None:
                raise UnitError(
                    f"mL dose without known concentration: {_show(value)} {parsed.num} "
                    "cannot be converted to mg without a strength in mg/mL"
                )
            strength = to_fraction(strength_mg_per_ml, "strength")
            if strength <= 0:
                raise UnitError("strength (mg/mL) must be positive")
            return amount * _VOLUME_ML[parsed.num] * strength
    raise UnitError(_not_mass_reason(parsed, value))


def to_mg(value: Number, unit: str, strength_mg_per_ml: Number | None = None) -> Decimal:
    """Amount in mg as a Decimal (see :func:`to_mg_exact`)."""
    return fraction_to_decimal(to_mg_exact(value, unit, strength_mg_per_ml))


def weight_to_kg_exact(value: Number, unit: str) -> Fraction:
    amount = to_fraction(value, "weight")
    if amount <= 0:
        raise UnitError(f"weight must be positive (got {_show(value)})")
    parsed = _parse(unit)
    if parsed.den is None and parsed.num in _MASS_MG:
        return amount * _MASS_MG[parsed.num] / _MASS_MG["kg"]
    raise UnitError(f"'{parsed.canonical}' is not a unit of body weight")


def weight_to_kg(value: Number, unit: str) -> Decimal:
    """Body weight in kg, exact (1 [lb_av] = 0.45359237 kg)."""
    return fraction_to_decimal(weight_to_kg_exact(value, unit))


def period_to_days_exact(value: Number, unit: str) -> Fraction:
    amount = to_fraction(value, "period")
    if amount <= 0:
        raise UnitError(f"period must be positive (got {_show(value)})")
    parsed = _parse(unit)
    if parsed.den is None:
        if parsed.num in _TIME_D:
            return amount * _TIME_D[parsed.num]
        if parsed.num in _INEXACT_TIME:
            name = "month" if parsed.num == "mo" else "year"
            raise UnitError(
                f"period unit '{parsed.num}' ({name}) has no exact length in days; "
                "per-day amounts cannot be computed"
            )
    raise UnitError(f"'{parsed.canonical}' is not a unit of time")


def period_to_days(value: Number, unit: str) -> Decimal:
    """Period length in days; raises UnitError for ``mo`` and ``a``.

    Results such as 8 h = 1/3 d have no finite decimal form and are rounded to
    DECIMAL_PRECISION digits; use :func:`period_to_days_exact` to stay exact.
    """
    return fraction_to_decimal(period_to_days_exact(value, unit))


def _volume_ml(value: Number, unit: str, what: str) -> Fraction:
    amount = to_fraction(value, f"{what} value")
    if amount <= 0:
        raise UnitError(f"{what} must be positive (got {_show(value)})")
    parsed = _parse(unit)
    if parsed.den is None and parsed.num in _VOLUME_ML:
        return amount * _VOLUME_ML[parsed.num]
    raise UnitError(f"{what} unit '{parsed.canonical}' is not a volume")


def parse_strength_exact(
    numerator_value: Number,
    numerator_unit: str,
    denominator_value: Number,
    denominator_unit: str,
) -> Fraction:
    """Exact strength in mg per mL from a FHIR Ratio (e.g. 250 mg / 5 mL -> 50)."""
    parsed = _parse(numerator_unit)
    if not (parsed.den is None and parsed.num in _MASS_MG):
        raise UnitError(
            "strength numerator: "
            + ("[iU] is not a mass" if parsed.num == _IU and parsed.den is None else f"'{parsed.canonical}' is not a mass")
        )
    mg = to_mg_exact(numerator_value, numerator_unit)
    den = _parse(denominator_unit)
    if den.den is not None:
        raise UnitError(f"strength denominator unit '{den.canonical}' is not a volume")
    ml = _volume_ml(denominator_value, den.num, "strength denominator")
    return mg / ml


def parse_strength(
    numerator_value: Number,
    numerator_unit: str,
    denominator_value: Number,
    denominator_unit: str,
) -> Decimal:
    """Strength in mg per mL from a FHIR Ratio (e.g. 250 mg / 5 mL -> Decimal(50))."""
    return fraction_to_decimal(
        parse_strength_exact(numerator_value, numerator_unit, denominator_value, denominator_unit)
    )


def concentration_to_mg_per_ml_exact(value: Number, unit: str) -> Fraction:
    """Exact mg/mL from a concentration quantity such as ``250 'mg/(5.mL)'`` or ``1 'g/L'``."""
    amount = to_fraction(value, "concentration value")
    if amount < 0:
        raise UnitError("concentration must not be negative")
    parsed = _parse(unit)
    if parsed.den is None or parsed.den not in _VOLUME_ML or parsed.num not in _MASS_MG:
        raise UnitError(f"'{parsed.canonical}' is not a mass per volume concentration")
    return amount * _MASS_MG[parsed.num] / (parsed.factor * _VOLUME_ML[parsed.den])


def concentration_to_mg_per_ml(value: Number, unit: str) -> Decimal:
    return fraction_to_decimal(concentration_to_mg_per_ml_exact(value, unit))


def convert_exact(value: Number, from_unit: str, to_unit: str) -> Fraction:
    """Exact conversion between two mass, two volume or two (exact) time units."""
    amount = to_fraction(value)
    src, dst = _parse(from_unit), _parse(to_unit)
    if src.den is None and dst.den is None:
        for table in (_MASS_MG, _VOLUME_ML, _TIME_D):
            if src.num in table and dst.num in table:
                return amount * table[src.num] / table[dst.num]
    raise UnitError(f"cannot convert '{src.canonical}' to '{dst.canonical}' exactly")


def convert(value: Number, from_unit: str, to_unit: str) -> Decimal:
    return fraction_to_decimal(convert_exact(value, from_unit, to_unit))
