"""Money in integer minor units with an ISO 4217 currency. Never floats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# ISO 4217 active codes and their minor-unit exponents (the ones not listed use 2).
_ZERO_DECIMAL = {
    "BIF",
    "CLP",
    "DJF",
    "GNF",
    "ISK",
    "JPY",
    "KMF",
    "KRW",
    "PYG",
    "RWF",
    "UGX",
    "UYI",
    "VND",
    "VUV",
    "XAF",
    "XOF",
    "XPF",
}
_THREE_DECIMAL = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}
_ISO_4217_CODES = """
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN
BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD
FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY
KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP
MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR
RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT
TND TOP TRY TTD TWD TZS UAH UGX USD UYU UYI UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR
ZMW ZWL
"""
ISO_4217 = frozenset(_ISO_4217_CODES.split())


def is_currency(code: str) -> bool:
    return isinstance(code, str) and code.upper() == code and code in ISO_4217


def exponent(currency: str) -> int:
    if currency in _ZERO_DECIMAL:
        return 0
    if currency in _THREE_DECIMAL:
        return 3
    return 2


def to_major_str(amount_minor: int, currency: str) -> str:
    """'32700', 'SGD' -> '327.00': exact, for CSV and receipts."""
    exp = exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    whole, frac = divmod(abs(amount_minor), 10**exp)
    return f"{sign}{whole}.{frac:0{exp}d}" if exp else f"{sign}{whole}"


def format_money(amount_minor: int, currency: str) -> str:
    return f"{currency} {to_major_str(amount_minor, currency)}"


def div_round_half_up(numerator: int, denominator: int) -> int:
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    sign = -1 if numerator < 0 else 1
    q, r = divmod(abs(numerator), denominator)
    return sign * (q + (1 if 2 * r >= denominator else 0))


def net_of_tax(gross_minor: int, rate_bp: int) -> int:
    """The net part of a tax-inclusive amount: 32700 at 900 bp -> 30000."""
    return div_round_half_up(gross_minor * 10_000, 10_000 + rate_bp)


def tax_on_net(net_minor: int, rate_bp: int) -> int:
    return div_round_half_up(net_minor * rate_bp, 10_000)


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` in proportion to `weights`, to the cent, by largest remainder.

    Ties go to the earlier weight, so the result is deterministic. With all-zero weights the
    total is split evenly."""
    if not weights:
        if total:
            raise ValueError("cannot allocate a non-zero total over nothing")
        return []
    if any(w < 0 for w in weights):
        raise ValueError("weights must not be negative")
    base = sum(weights)
    if base == 0:
        weights = [1] * len(weights)
        base = len(weights)
    sign = -1 if total < 0 else 1
    magnitude = abs(total)
    shares = [magnitude * w // base for w in weights]
    remainders = [magnitude * w % base for w in weights]
    left = magnitude - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[:left]:
        shares[i] += 1
    return [sign * s for s in shares]


@dataclass(frozen=True, slots=True)
class Money:
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.amount_minor, int) or isinstance(self.amount_minor, bool):
            raise TypeError("Money is integer minor units")
        if not is_currency(self.currency):
            raise ValueError(f"{self.currency!r} is not an ISO 4217 currency code")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"cannot mix {self.currency} and {other.currency}")

    def __str__(self) -> str:
        return format_money(self.amount_minor, self.currency)

    def as_dict(self) -> dict:
        return {
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "display": str(self),
        }
