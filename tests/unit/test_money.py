"""Money helpers: exact, deterministic, and never a float."""

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.money import (
    Money,
    allocate,
    div_round_half_up,
    format_money,
    is_currency,
    net_of_tax,
    tax_on_net,
    to_major_str,
)

weights = st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=12)


@given(total=st.integers(min_value=-(10**9), max_value=10**9), weights=weights)
def test_allocate_sums_to_the_total_and_each_share_is_within_a_cent_of_its_proportion(
    total, weights
):
    shares = allocate(total, weights)
    assert sum(shares) == total
    assert len(shares) == len(weights)
    base = sum(weights) or len(weights)
    effective = weights if sum(weights) else [1] * len(weights)
    for share, weight in zip(shares, effective, strict=True):
        exact = Fraction(total * weight, base)
        assert abs(share - exact) < 1


@given(total=st.integers(min_value=0, max_value=10**9), weights=weights)
def test_allocate_is_deterministic(total, weights):
    assert allocate(total, weights) == allocate(total, list(weights))


def test_allocate_gives_tied_remainders_to_the_earlier_weights():
    assert allocate(100, [1, 1, 1]) == [34, 33, 33]
    assert allocate(-100, [1, 1, 1]) == [-34, -33, -33]
    assert allocate(5, [0, 0]) == [3, 2]


def test_allocate_by_largest_remainder_not_by_position():
    # 10 over 3:3:4 -> 3, 3, 4 exactly; 10 over 1:1:1:3 -> 1.67, 1.67, 1.67, 5 -> 2, 2, 1, 5.
    assert allocate(10, [3, 3, 4]) == [3, 3, 4]
    assert allocate(10, [1, 1, 1, 3]) == [2, 2, 1, 5]


def test_allocate_refuses_negative_weights_and_a_total_over_nothing():
    with pytest.raises(ValueError):
        allocate(10, [1, -1])
    with pytest.raises(ValueError):
        allocate(10, [])
    assert allocate(0, []) == []


def test_net_of_tax_takes_gst_out_of_an_inclusive_price():
    assert net_of_tax(32700, 900) == 30000
    assert net_of_tax(38800, 900) == 35596  # 38800 / 1.09 = 35596.33
    assert net_of_tax(0, 900) == 0
    assert net_of_tax(1000, 0) == 1000


def test_tax_on_net_and_net_add_back_up_for_a_round_net():
    assert tax_on_net(30000, 900) == 2700
    assert net_of_tax(30000 + tax_on_net(30000, 900), 900) == 30000


def test_div_round_half_up_rounds_halves_away_from_zero():
    assert div_round_half_up(5, 2) == 3
    assert div_round_half_up(-5, 2) == -3
    assert div_round_half_up(4, 3) == 1
    with pytest.raises(ValueError):
        div_round_half_up(1, 0)


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (32700, "SGD", "327.00"),
        (5, "SGD", "0.05"),
        (-1999, "SGD", "-19.99"),
        (1500, "JPY", "1500"),
        (1234, "KWD", "1.234"),
    ],
)
def test_to_major_str_is_exact_in_the_currencys_own_minor_unit(minor, currency, text):
    assert to_major_str(minor, currency) == text


def test_money_refuses_floats_and_unknown_currencies():
    assert str(Money(38800, "SGD")) == format_money(38800, "SGD") == "SGD 388.00"
    with pytest.raises(TypeError):
        Money(388.0, "SGD")
    with pytest.raises(ValueError):
        Money(100, "sgd")
    with pytest.raises(ValueError):
        Money(100, "SGD") + Money(100, "USD")
    assert is_currency("SGD") and not is_currency("XYZ") and not is_currency("sgd")
