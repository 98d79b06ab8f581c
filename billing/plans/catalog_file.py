"""The catalogue as a YAML file a person edits: money as major-unit strings ("388.00").

Reading converts every amount exactly (Decimal) to integer minor units and refuses YAML floats,
which cannot hold money exactly; writing does the reverse, so export -> load changes nothing.
The dictionary in between is the shape billing.plans.service.load_catalog takes."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path as FilePath
from typing import Any

import yaml

from billing.errors import InvalidInput
from billing.money import exponent, to_major_str
from billing.plans.service import invalid

# Money fields: the file's name -> the API's name.
TREATMENT_MONEY = {"list_price": "list_price_minor"}
PLAN_MONEY = {
    "price": "price_minor",
    "signup_fee": "signup_fee_minor",
    "early_termination_fee": "early_termination_fee_minor",
}
ITEM_MONEY = {"ssp_override": "ssp_override_minor"}
_ALL_MONEY = {**TREATMENT_MONEY, **PLAN_MONEY, **ITEM_MONEY}
_AMOUNT = re.compile(r"^\d+(?:\.\d+)?$")
_MINOR_NAMES = re.compile(r"\b(" + "|".join(_ALL_MONEY) + r")_minor\b")

DEFAULT_CATALOG = FilePath(__file__).with_name("default_catalog.yaml")


# ------------------------------------------------------------------------------ reading


def read_catalog(path: str | FilePath) -> dict[str, Any]:
    return parse_catalog(FilePath(path).read_text(encoding="utf-8"))


def parse_catalog(text: str) -> dict[str, Any]:
    """YAML text -> the minor-unit dictionary load_catalog takes. Raises InvalidInput."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"The file is not valid YAML: {exc}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise InvalidInput("The file must be a mapping with `treatments:` and `plans:` lists.")
    _refuse_floats(document, ())
    document = dict(document)
    currency = document.pop("currency", None)
    for kind in ("treatments", "plans"):
        entries = document.get(kind)
        if entries is None:
            document[kind] = []
        elif not isinstance(entries, list):
            raise invalid((kind,), "Must be a list.")
    document["treatments"] = [
        _convert_entry(t, currency, TREATMENT_MONEY, ("treatments", i))
        for i, t in enumerate(document["treatments"])
    ]
    document["plans"] = [
        _convert_plan(p, currency, ("plans", i)) for i, p in enumerate(document["plans"])
    ]
    return document


def load_catalog_file(path: str | FilePath, *, actor: str, now, dry_run: bool = False):
    """Read and load a catalogue file; errors name the file's own field names."""
    from billing.plans.service import load_catalog

    data = read_catalog(path)
    try:
        return load_catalog(data, actor=actor, now=now, dry_run=dry_run)
    except InvalidInput as exc:
        exc.detail = _MINOR_NAMES.sub(r"\1", exc.detail)
        exc.errors = _rename_minor(exc.errors)
        raise


def _rename_minor(errors: Any) -> Any:
    if not isinstance(errors, dict):
        return errors
    renamed = {}
    for key, value in errors.items():
        if isinstance(key, str):
            key = _MINOR_NAMES.sub(r"\1", key)
        renamed[key] = _rename_minor(value)
    return renamed


def _refuse_floats(node: Any, path: tuple) -> None:
    if isinstance(node, float):
        raise invalid(
            path,
            f"{node!r} is a YAML float, which cannot hold money or counts exactly. Write money "
            'as a quoted string in major units (e.g. "388.00") and counts as whole numbers.',
        )
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_floats(value, (*path, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_floats(value, (*path, i))


def _convert_entry(entry: Any, currency: str | None, money: dict[str, str], path: tuple) -> Any:
    if not isinstance(entry, dict):
        return entry  # the schema says what is wrong with it
    out = dict(entry)
    if currency is not None:
        out.setdefault("currency", currency)
    for file_name, api_name in money.items():
        if api_name in out:
            raise invalid(
                (*path, api_name),
                f'In the file, write {file_name}: "388.00" (major units as a quoted string).',
            )
        if file_name in out:
            out[api_name] = to_minor(out.pop(file_name), out.get("currency"), (*path, file_name))
    return out


def _convert_plan(entry: Any, currency: str | None, path: tuple) -> Any:
    out = _convert_entry(entry, currency, PLAN_MONEY, path)
    if isinstance(out, dict) and isinstance(out.get("items"), list):
        out["items"] = [
            _convert_item(item, out.get("currency"), (*path, "items", i))
            for i, item in enumerate(out["items"])
        ]
    return out


def _convert_item(item: Any, currency: str | None, path: tuple) -> Any:
    if not isinstance(item, dict):
        return item
    out = dict(item)
    for file_name, api_name in ITEM_MONEY.items():
        if api_name in out:
            raise invalid((*path, api_name), f'In the file, write {file_name}: "60.00".')
        if file_name in out:
            out[api_name] = to_minor(out.pop(file_name), currency, (*path, file_name))
    return out


def to_minor(value: Any, currency: str | None, path: tuple) -> int | None:
    """'388.00' -> 38800 (exactly). None stays None (an optional amount not set)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _AMOUNT.match(value.strip()):
        raise invalid(
            path,
            f"{value!r} is not an amount: write a quoted string in major units, e.g. "
            '"388.00" (no currency sign, no thousands separator, not negative).',
        )
    places = exponent(currency) if isinstance(currency, str) else 2
    try:
        scaled = Decimal(value.strip()).scaleb(places)
    except InvalidOperation:  # pragma: no cover - the pattern above admits only digits
        raise invalid(path, f"{value!r} is not an amount.") from None
    if scaled != scaled.to_integral_value():
        raise invalid(
            path, f"{value!r} has more decimal places than {currency or 'the currency'} has."
        )
    return int(scaled)


# ------------------------------------------------------------------------------ writing


def to_file_dict(catalog: dict[str, Any]) -> dict[str, Any]:
    """export_catalog()'s dictionary -> the file's: major-unit strings, one shared currency."""
    currencies = {e["currency"] for kind in ("treatments", "plans") for e in catalog[kind]}
    shared = currencies.pop() if len(currencies) == 1 else None
    out: dict[str, Any] = {}
    if shared:
        out["currency"] = shared
    out["treatments"] = [_to_file(t, shared, TREATMENT_MONEY) for t in catalog["treatments"]]
    plans = []
    for plan in catalog["plans"]:
        converted = _to_file(plan, shared, PLAN_MONEY)
        converted["items"] = [
            _to_file(item, None, ITEM_MONEY, plan["currency"]) for item in plan["items"]
        ]
        plans.append(converted)
    out["plans"] = plans
    return out


def _to_file(
    entry: dict[str, Any], shared: str | None, money: dict[str, str], currency: str | None = None
) -> dict[str, Any]:
    currency = currency or entry["currency"]
    to_file_name = {api: name for name, api in money.items()}
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "currency" and value == shared:
            continue
        if key in to_file_name:
            out[to_file_name[key]] = None if value is None else to_major_str(value, currency)
        else:
            out[key] = value
    return out


def dump_catalog(catalog: dict[str, Any], header: str = "") -> str:
    """The YAML text of export_catalog()'s dictionary."""
    body = yaml.safe_dump(
        to_file_dict(catalog), sort_keys=False, allow_unicode=True, width=100, indent=2
    )
    comment = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    return comment + body
