"""The YAML catalogue: the default file's contents, loading (idempotent, all or nothing) and
export -> load round trips."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing.errors import DomainError, InvalidInput
from billing.extensions import db
from billing.members.models import Member
from billing.memberships.models import Membership
from billing.plans import service
from billing.plans.catalog_file import (
    DEFAULT_CATALOG,
    dump_catalog,
    load_catalog_file,
    parse_catalog,
    to_minor,
)
from billing.plans.models import Plan, PlanItem, PlanVersion, Treatment
from billing.plans.service import ssp_per_credit

SEED = Path("/work/shared/seeds/000_1af7e41a97e5aadc.txt")

OPTIMUM_ITEMS = [
    ("DiamondTome Microdermabrasion", 1),
    ("Clarifying Medical-Grade Facial with Microderm, Extraction & Sapphire", 1),
    ("Anti-Aging Skin Rejuvenation with Microderm, Massage & Perfectio+", 1),
    ("Hydra-Clarifying Medical-Grade Facial with Extraction & Sapphire", 1),
    (
        "Hydra-Anti Aging Skin Rejuvenation with Microcurrent BIO, Facial & Eye Ultrasonic, "
        "Skin Scrubber, Lymphatic Drainage, and Oxygen Spray",
        1,
    ),
    ("Cutis Crystal Peel", 1),
    ("Cutis Anti Acne Peel", 1),
    ("Crystal Carboxy CO2 Mask", 2),
]
PLATINUM_ITEMS = [
    "Premium Anti-Aging Skin Rejuvenation (including Exilis Full Face & Facial Mask)",
    "Imperium Deep Cleanse & Lift Full Face – with Sonoblade 25 & RF Spheres & Facial Mask",
    "Cutis High Power NIR Technology Full Face",
]
CODES_OTHER_TEAMS_USE = [
    "crystal-carboxy-co2-mask",
    "cutis-crystal-peel",
    "cutis-anti-acne-peel",
    "diamondtome-microdermabrasion",
    "bbl",
    "botox",
    "dermal-filler",
    "hydrafacial",
    "microneedling",
    "doctor-consultation",
    "chemical-peel-deep",
    "clarifying-facial-sapphire",
]


def load_default():
    return load_catalog_file(DEFAULT_CATALOG, actor="test", now=_now())


def _now():
    from billing import clock

    return clock.now()


def load_text(text: str, dry_run: bool = False):
    return service.load_catalog(parse_catalog(text), actor="test", now=_now(), dry_run=dry_run)


def snapshot() -> dict:
    rows = {}
    for model in (Treatment, Plan, PlanVersion, PlanItem):
        rows[model.__tablename__] = db.session.scalar(sa.select(sa.func.count()).select_from(model))
    rows["prices"] = sorted(
        db.session.execute(sa.select(Treatment.code, Treatment.list_price_minor)).all()
    )
    rows["names"] = sorted(db.session.execute(sa.select(Plan.code, Plan.name)).all())
    return rows


def current_items(code: str) -> list[tuple[str, int]]:
    version = service.get_plan(code).current_version
    return [(item.treatment.name, item.quantity) for item in version.items]


SMALL = """
currency: SGD
treatments:
  - code: glow-facial
    name: Glow Facial
    category: spa_facial
    list_price: "128.00"
  - code: toxin
    name: Toxin
    category: injectable
    list_price: "18.00"
    counted_in: unit
    is_medical: true
plans:
  - code: glow
    kind: tier
    name: Glow
    price: "98.00"
    items:
      - treatment: glow-facial
        sessions: 1
"""


# ---------------------------------------------------------------------------- the default file


def test_default_catalogue_has_optimum_with_exactly_its_eight_items(app):
    load_default()
    optimum = service.get_plan("optimum-facial-rejuvenation")
    assert optimum.name == "Optimum Facial Rejuvenation"
    assert optimum.kind == "tier"
    assert current_items("optimum-facial-rejuvenation") == OPTIMUM_ITEMS
    masks = [
        i for i in optimum.current_version.items if i.treatment.code == "crystal-carboxy-co2-mask"
    ]
    assert [m.quantity for m in masks] == [2]


def test_default_catalogue_has_platinum_with_its_three_medical_device_treatments(app):
    load_default()
    platinum = service.get_plan("platinum-facial-rejuvenation")
    assert platinum.name == "Platinum Facial Rejuvenation"
    assert current_items("platinum-facial-rejuvenation") == [(n, 1) for n in PLATINUM_ITEMS]
    assert all(i.treatment.is_medical for i in platinum.current_version.items)
    version = platinum.current_version
    assert (version.unused_rule, version.rollover_max_periods, version.rollover_cap) == (
        "rollover",
        1,
        2,
    )


def test_default_catalogue_names_are_the_clinics_own(app):
    """Every Optimum and Platinum item, and the four single facials, is named on the seed page."""
    seed = SEED.read_text(encoding="utf-8")
    load_default()
    names = (
        [n for n, _ in OPTIMUM_ITEMS[:-1]]
        + PLATINUM_ITEMS
        + [
            service.get_treatment(code).name
            for code in (
                "clarifying-facial-sapphire",
                "anti-aging-facial-perfectio",
                "premium-anti-aging-facial-exilis",
                "hydrafacial",
            )
        ]
    )
    for name in names:
        assert name in seed, name


def test_default_catalogue_has_the_codes_other_teams_use_and_the_series(app):
    load_default()
    for code in CODES_OTHER_TEAMS_USE:
        assert service.get_treatment(code).currency == "SGD"
    botox = service.get_treatment("botox")
    assert (botox.counted_in, botox.is_medical, botox.requires_consultation) == ("unit", True, True)
    assert botox.min_interval_days == 90
    filler = service.get_treatment("dermal-filler")
    assert (filler.counted_in, filler.unit_label) == ("unit", "syringe")
    bbl = service.get_treatment("bbl")
    assert (bbl.category, bbl.is_medical, bbl.requires_consultation, bbl.min_interval_days) == (
        "laser_light",
        True,
        True,
        28,
    )
    assert service.get_treatment("doctor-consultation").category == "consultation"
    assert service.get_treatment("clarifying-facial-sapphire").min_interval_days >= 14
    series = service.get_plan("bbl-series-3")
    version = series.current_version
    assert (series.kind, version.price_minor, version.credit_validity_days) == (
        "series",
        109000,
        365,
    )
    assert [(i.treatment.code, i.quantity) for i in version.items] == [("bbl", 3)]
    six = service.get_plan("clarifying-facial-series-6").current_version
    assert [(i.treatment.code, i.quantity) for i in six.items] == [
        ("clarifying-facial-sapphire", 6)
    ]


def test_default_catalogue_says_whose_prices_these_are():
    header = DEFAULT_CATALOG.read_text(encoding="utf-8").split("\ncurrency:")[0]
    assert "SGD" in header and "9 % GST" in header
    assert "clinic" in header


# ---------------------------------------------------------------------------- loading


def test_loading_the_same_file_twice_changes_nothing(app):
    first = load_default()
    assert first.changed
    before = snapshot()
    second = load_default()
    assert not second.changed
    assert set(second.treatments) == {"unchanged"} and set(second.plans) == {"unchanged"}
    assert snapshot() == before


def test_a_changed_price_makes_a_new_version_and_members_keep_theirs(app):
    load_text(SMALL)
    v1 = service.get_plan("glow").current_version
    member = Member(first_name="Ada", last_name="Tan", email="ada@example.com")
    member.refresh_search_columns()
    db.session.add(member)
    db.session.flush()
    db.session.add(Membership(member_id=member.id, plan_version_id=v1.id, state="active"))
    db.session.commit()

    summary = load_text(SMALL.replace('"98.00"', '"108.00"').replace('"128.00"', '"138.00"'))
    assert summary.plans == {"new version": ["glow (v2)"]}
    assert summary.treatments == {"updated": ["glow-facial"], "unchanged": ["toxin"]}
    plan = service.show_plan("glow")
    assert plan.current_version_number == 2
    old, new = plan.versions
    assert (old.price_minor, old.grandfathered, old.member_count) == (9800, True, 1)
    assert (new.price_minor, new.is_current) == (10800, True)
    assert service.get_treatment("glow-facial").list_price_minor == 13800


def test_renaming_a_plan_in_the_file_edits_it_without_a_version(app):
    load_text(SMALL)
    summary = load_text(SMALL.replace("name: Glow\n", "name: Glow Club\n"))
    assert summary.plans == {"updated": ["glow"]}
    assert service.get_plan("glow").name == "Glow Club"
    assert len(service.get_plan("glow").versions) == 1


def test_a_bad_entry_anywhere_means_nothing_is_loaded(app):
    load_text(SMALL)
    before = snapshot()
    broken = SMALL.replace('"128.00"', '"150.00"') + (
        '  - code: broken\n    kind: tier\n    name: Broken\n    price: "1.00"\n'
        "    items:\n      - treatment: no-such-thing\n        sessions: 1\n"
    )
    with pytest.raises(InvalidInput) as caught:
        load_text(broken)
    [message] = caught.value.errors["plans"][1]["items"][0]["treatment"]
    assert "no-such-thing" in message
    assert "plans[1].items[0].treatment" in caught.value.detail
    assert snapshot() == before  # the valid price change above it was not kept either


def test_a_code_listed_twice_is_refused(app):
    twice = SMALL.replace("  - code: toxin", "  - code: glow-facial")
    with pytest.raises(InvalidInput) as caught:
        load_text(twice)
    assert "treatments[1].code" in caught.value.detail
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Treatment)) == 0


def test_a_dry_run_reports_but_writes_nothing(app):
    summary = load_text(SMALL, dry_run=True)
    assert summary.treatments == {"created": ["glow-facial", "toxin"]}
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Treatment)) == 0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('list_price: "128.00"', "list_price: 128.00"),
            "treatments[0].list_price: 128.0 is a YAML float",
        ),
        (
            ('list_price: "128.00"', "list_price: 128"),
            "treatments[0].list_price: 128 is not an amount",
        ),
        (('list_price: "128.00"', 'list_price: "128.005"'), "more decimal places than SGD"),
        (('list_price: "128.00"', 'list_price: "-1.00"'), "treatments[0].list_price"),
        (('list_price: "128.00"', 'list_price: "S$128"'), "treatments[0].list_price"),
        (('list_price: "128.00"', "list_price_minor: 12800"), "treatments[0].list_price_minor"),
        (("currency: SGD", "currency: XYZ"), "treatments[0].currency"),
        (
            ("category: spa_facial", "category: spa_facial\n    colour: pink"),
            "treatments[0].colour",
        ),
        (("        sessions: 1", "        units: 1"), "plans[0].items[0].units"),
        (("        sessions: 1", "        sessions: 0"), "plans[0].items[0].sessions"),
        (("    kind: tier", "    kind: series"), "plans[0].credit_validity_days"),
        (('price: "98.00"', 'price: "98.00"\n    currency: USD'), "plans[0].currency"),
    ],
)
def test_file_errors_name_the_field_in_the_files_own_words(app, tmp_path, change, expected):
    path = tmp_path / "catalog.yaml"
    path.write_text(SMALL.replace(*change), encoding="utf-8")
    with pytest.raises(DomainError) as caught:
        load_catalog_file(path, actor="test", now=_now())
    assert expected in caught.value.detail
    assert "_minor" not in caught.value.detail or "list_price_minor" in expected
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Treatment)) == 0


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("388.00", "SGD", 38800),
        ("1090", "SGD", 109000),
        ("0.05", "SGD", 5),
        ("1500", "JPY", 1500),
        ("1.234", "KWD", 1234),
    ],
)
def test_major_unit_strings_convert_exactly(text, currency, minor):
    assert to_minor(text, currency, ("price",)) == minor


def test_a_series_needs_sessions_and_a_choice_two_options(app):
    load_text(SMALL)
    series = SMALL + (
        '  - code: nothing-series\n    kind: series\n    name: Empty\n    price: "1.00"\n'
        "    credit_validity_days: 365\n    items: []\n"
    )
    with pytest.raises(InvalidInput, match=re.escape("plans[1].items")):
        load_text(series)
    lonely = SMALL.replace("      - treatment: glow-facial\n", "      - choice: [glow-facial]\n")
    with pytest.raises(InvalidInput, match=re.escape("plans[0].items[0].choice")):
        load_text(lonely)


# ---------------------------------------------------------------------------- export


def test_export_then_load_changes_nothing(app):
    load_default()
    service.revise_plan("bbl-series-3", {"price_minor": 99900}, actor="test")
    service.retire_treatment("led-light-therapy", actor="test", now=_now())
    before = snapshot()
    text = dump_catalog(service.export_catalog(), header="test export")
    assert text.startswith("# test export\n")
    assert parse_catalog(text) == service.export_catalog()
    summary = load_text(text)
    assert not summary.changed
    assert snapshot() == before
    assert service.get_plan("bbl-series-3").current_version.price_minor == 99900
    assert service.get_treatment("led-light-therapy").is_retired


def test_export_writes_money_as_major_unit_strings(app):
    load_text(SMALL)
    text = dump_catalog(service.export_catalog())
    assert "list_price: '128.00'" in text
    assert "price: '98.00'" in text
    assert "_minor" not in text
    assert text.count("currency: SGD") == 1  # said once, at the top


def test_export_into_an_empty_database_recreates_the_catalogue(app):
    load_default()
    exported = service.export_catalog()
    optimum = next(p for p in exported["plans"] if p["code"] == "optimum-facial-rejuvenation")
    assert optimum["items"][-1] == {"treatment": "crystal-carboxy-co2-mask", "sessions": 2}
    ssp = {
        i.treatment.code: ssp_per_credit(i)
        for i in service.get_plan("optimum-facial-rejuvenation").current_version.items
    }
    assert ssp["crystal-carboxy-co2-mask"] == 7800
