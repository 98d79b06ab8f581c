"""Input the database cannot store is refused at the door with a 4xx, never a 500 at commit.

Ids in URLs are bounded to the id columns (a larger one is simply not found); JSON bodies and
query strings may not carry text PostgreSQL or UTF-8 cannot store (NUL, unpaired surrogates);
a JSON body nested absurdly deep is refused before anything walks it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from flask import Flask, request
from werkzeug.routing import IntegerConverter

from billing.errors import InvalidInput

ID_MAX = 2**31 - 1  # INTEGER primary keys on PostgreSQL
BIG_MAX = 2**63 - 1  # BIGINT amounts


class BoundedIntConverter(IntegerConverter):
    """`<int:id>` that does not match past the id columns, so /members/2199023255552 is a 404."""

    def __init__(self, map, *args, **kwargs):
        kwargs.setdefault("max", ID_MAX)
        super().__init__(map, *args, **kwargs)


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, depth + 1)


def _numbers(value: Any) -> Iterator[int]:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(text: str) -> bool:
    """NUL (PostgreSQL text cannot hold it) or a lone surrogate (not UTF-8)."""
    return _UNSTORABLE.search(text) is not None


# In JSON text a NUL or a lone surrogate can only be one of these escapes (once the body is strict
# UTF-8 without NUL bytes), and an integer past BIGINT has 19 digits or more. Digits are found as
# a run of zeros once each digit is made a zero: a regex \d{19} tried at every digit took 28 us
# of a 4 KB body, this 2.
_GUARDED_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19


def plain_json(body: bytes) -> bool:
    """A JSON body in which nothing can be what check_request refuses: no string can hold a NUL
    or a lone surrogate, no number is past BIGINT. Read on the bytes, so the parsed body need not
    be walked value by value (a match, even inside a string, only means it is walked)."""
    if b"\x00" in body:
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return _GUARDED_ESCAPE.search(body) is None and _NINETEEN_DIGITS not in body.translate(
        _DIGITS_AS_ZEROS
    )


def check_request() -> None:
    values: list[Any] = [list(request.args.keys()), list(request.args.values())]
    if request.is_json and request.content_length:
        try:
            body = request.get_json(silent=True)
        except RecursionError:
            raise InvalidInput(
                "The JSON body is nested too deeply.", slug="json-too-deep"
            ) from None
        if not plain_json(request.get_data(cache=True)):
            values.append(body)
            if any(abs(n) > BIG_MAX for n in _numbers(body)):
                raise InvalidInput(
                    "A number in the body is out of range.", slug="number-out-of-range"
                )
    for value in values:
        if any(unstorable(text) for text in _strings(value)):
            raise InvalidInput(
                "The request has text with a character that cannot be stored "
                "(a NUL or an unpaired surrogate).",
                slug="unstorable-text",
            )


def init_app(app: Flask) -> None:
    app.url_map.converters["int"] = BoundedIntConverter
    app.before_request(check_request)
