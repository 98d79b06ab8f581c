"""`flask billing catalog load FILE` and `flask billing catalog export`."""

from __future__ import annotations

import sqlalchemy as sa

from billing.extensions import db
from billing.plans import service
from billing.plans.catalog_file import DEFAULT_CATALOG
from billing.plans.models import Plan, PlanVersion, Treatment


def counts() -> tuple[int, int, int]:
    return tuple(
        db.session.scalar(sa.select(sa.func.count()).select_from(m))
        for m in (Treatment, Plan, PlanVersion)
    )


def load(runner, *args):
    return runner.invoke(args=["billing", "catalog", "load", *map(str, args)])


def test_load_prints_what_it_created_then_that_nothing_changed(runner):
    first = load(runner, DEFAULT_CATALOG)
    assert first.exit_code == 0, first.output
    assert "treatments: 27 created" in first.output
    assert "plans: 4 created" in first.output
    assert "optimum-facial-rejuvenation" in first.output
    after_first = counts()

    second = load(runner, DEFAULT_CATALOG)
    assert second.exit_code == 0, second.output
    assert "treatments: 27 unchanged" in second.output
    assert "plans: 4 unchanged" in second.output
    assert counts() == after_first


def test_a_changed_file_reports_the_new_version(runner, tmp_path):
    assert load(runner, DEFAULT_CATALOG).exit_code == 0
    changed = tmp_path / "catalog.yaml"
    changed.write_text(
        DEFAULT_CATALOG.read_text(encoding="utf-8").replace('price: "1090.00"', 'price: "990.00"'),
        encoding="utf-8",
    )
    result = load(runner, changed)
    assert result.exit_code == 0, result.output
    assert "new version: bbl-series-3 (v2)" in result.output
    assert service.get_plan("bbl-series-3").current_version.price_minor == 99000


def test_a_bad_file_loads_nothing_and_says_why(runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        DEFAULT_CATALOG.read_text(encoding="utf-8").replace(
            "      - treatment: cutis-anti-acne-peel\n", "      - treatment: cutis-anti-acne-pee\n"
        ),
        encoding="utf-8",
    )
    result = load(runner, bad)
    assert result.exit_code == 1
    assert "nothing was loaded" in result.output
    assert "plans[0].items[6].treatment" in result.output
    assert "cutis-anti-acne-pee" in result.output
    assert counts() == (0, 0, 0)


def test_dry_run_and_if_empty_write_nothing(runner):
    dry = load(runner, DEFAULT_CATALOG, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "Dry run" in dry.output and "27 created" in dry.output
    assert counts() == (0, 0, 0)

    assert load(runner, DEFAULT_CATALOG, "--if-empty").exit_code == 0
    loaded = counts()
    assert loaded[0] == 27
    again = load(runner, DEFAULT_CATALOG, "--if-empty")
    assert "not empty" in again.output
    assert counts() == loaded


def test_export_to_a_file_loads_back_with_no_change(runner, tmp_path):
    assert load(runner, DEFAULT_CATALOG).exit_code == 0
    service.update_plan_details(
        "optimum-facial-rejuvenation", {"name": "Optimum Facial Rejuvenation (2026)"}, actor="t"
    )
    out = tmp_path / "export.yaml"
    result = runner.invoke(args=["billing", "catalog", "export", "--output", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Catalogue exported")
    assert "Optimum Facial Rejuvenation (2026)" in text
    before = counts()

    again = load(runner, out)
    assert again.exit_code == 0, again.output
    assert "treatments: 27 unchanged" in again.output
    assert "plans: 4 unchanged" in again.output
    assert counts() == before


def test_export_to_standard_output(runner):
    assert load(runner, DEFAULT_CATALOG).exit_code == 0
    result = runner.invoke(args=["billing", "catalog", "export"])
    assert result.exit_code == 0
    assert "code: optimum-facial-rejuvenation" in result.output
    assert "price: '1090.00'" in result.output
