"""The request guard reads a JSON body's bytes before walking it (billing/guards.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.guards import BIG_MAX, plain_json, unstorable


@pytest.mark.parametrize(
    "body",
    [
        b'{"member_id": 12, "treatment": "hydrafacial", "location": "orchard"}',
        b'{"amount": 999999999999999999, "name": "Mei \\u00e9"}',  # 18 digits
        '{"name": "Zoë 林"}'.encode(),
    ],
)
def test_a_body_with_nothing_to_refuse_is_not_walked(body):
    assert plain_json(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "a\\u0000b"}',  # NUL
        b'{"name": "\\ud800"}',  # a surrogate escape (lone or not: walked to tell)
        b'{"amount": 9223372036854775808}',  # 19 digits
        b'{"amount": -1234567890123456789}',
        b'{"name": "a\x00b"}',  # a raw NUL byte
        b'{"name": "\xff"}',  # not UTF-8
    ],
)
def test_a_body_that_might_hold_what_cannot_be_stored_is_walked(body):
    assert not plain_json(body)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_plain_json_never_passes_what_the_walk_would_refuse(value):
    """Whatever json.dumps makes of a value: if the bytes say plain, no string in it is
    unstorable and no integer is past BIGINT."""
    body = json.dumps(value).encode()

    def strings_and_ints(v):
        if isinstance(v, str):
            yield v
        elif isinstance(v, bool):
            return
        elif isinstance(v, int):
            yield v
        elif isinstance(v, dict):
            for k, item in v.items():
                yield k
                yield from strings_and_ints(item)
        elif isinstance(v, list):
            for item in v:
                yield from strings_and_ints(item)

    refused = any(
        unstorable(x) if isinstance(x, str) else abs(x) > BIG_MAX for x in strings_and_ints(value)
    )
    if refused:
        assert not plain_json(body)
