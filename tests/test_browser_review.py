"""The review queue in a real headless Chromium: filter it, act on every row matching the filter
in one click, see the count fall, undo it in one click, and go back to the unfiltered queue. The
queue with its rows and bulk form, and an export page with its card, pass axe-core (the site-wide
sweep in test_browser_a11y sees them empty)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from annotation.models import Item
from curation.models import CurationAction
from curation.services import curation_action_apply
from tests.conftest import jsonl, login
from tests.test_browser_a11y import AXE, FAILING_IMPACTS, _axe
from tests.test_export import PAIRWISE, import_as_annotators, pair_rows
from tests.test_export_card_page import EVIL, _export
from tests.test_review_queue import plant

pytestmark = pytest.mark.django_db(transaction=True)


def test_filter_bulk_drop_all_matching_and_undo(page, make_project, make_user, curator) -> None:
    project = make_project("rqb", curator=curator, overlap=3)
    plant(project, make_user, n=60)  # 53 candidates; the AI flips on r3, r11, ..., r59: 8
    flips = [f"r{i}" for i in range(3, 60, 8)]
    login(page, "carol", "carol-pw-123")
    page.goto(f"/p/{project.slug}/review/")
    matching = page.locator("[data-testid=matching]")
    assert matching.inner_text() == "53"
    assert page.inner_text("[data-testid=page]") == "Page 1 of 2"
    serious = _serious(page)

    page.check("#filters input[name=reason][value=ai_order_flip]")
    page.click("[data-testid=apply-filters]")
    expect(matching).to_have_text("8")
    expect(page).to_have_url(re.compile(r"reason=ai_order_flip"))  # the filter is in the address bar
    shown = page.locator("[data-testid=candidates] tr[data-item]").evaluate_all("rs => rs.map(r => r.dataset.item)")
    assert sorted(shown) == sorted(flips)

    page.check("[data-testid=scope-all]")
    page.fill("#bulk-reason", "judge unreliable on these")
    page.click("[data-testid=bulk-drop]")
    page.wait_for_selector("[data-testid=bulk-done]")
    assert matching.inner_text() == "0"
    assert "Drop from the dataset: 8 items." in page.inner_text("[data-testid=bulk-done]")
    dropped = Item.objects.filter(project=project, status="dropped")
    assert sorted(dropped.values_list("external_id", flat=True)) == sorted(flips)
    assert "bulk of 8" in page.inner_text("[data-testid=history]")  # the history was refreshed too
    serious += _serious(page)

    page.click("[data-testid=bulk-undo]")
    page.wait_for_selector("[data-testid=bulk-undone]")
    assert matching.inner_text() == "8"
    assert not Item.objects.filter(project=project, status="dropped").exists()
    actions = CurationAction.objects.filter(project=project)
    assert actions.count() == 8 and not actions.filter(undone_at__isnull=True).exists()

    # "Select every row on this page" ticks all 8, and clearing two leaves it part-ticked.
    rows = page.locator("[data-testid=candidates] input[name=item]")
    page.check("[data-testid=select-page]")
    assert rows.evaluate_all("bs => bs.filter(b => b.checked).length") == 8
    for i in range(19, 60, 8):
        page.uncheck(f"tr[data-item=r{i}] input[name=item]")
    assert page.locator("[data-testid=select-page]").evaluate("b => [b.checked, b.indeterminate]") == [False, True]
    # Accept just the two rows left ticked.
    page.click("[data-testid=bulk-accept]")
    page.wait_for_selector("[data-testid=bulk-done]")
    assert matching.inner_text() == "6"
    standing = CurationAction.objects.filter(project=project, undone_at__isnull=True)
    assert sorted(standing.values_list("item__external_id", flat=True)) == ["r11", "r3"]

    page.go_back()  # to the unfiltered queue: 53 less the 2 accepted
    expect(page).to_have_url(re.compile(r"/review/$"))
    expect(matching).to_have_text("51")
    assert not serious, serious


def _serious(page) -> list[dict]:
    if not AXE.exists():
        return []
    return [v for v in _axe(page, AXE.read_text()) if v["impact"] in FAILING_IMPACTS]


def test_the_export_page_shows_its_card(page, make_project, curator, settings, tmp_path) -> None:
    settings.VAR_DIR = tmp_path / "var"  # the live server runs in this process: it reads the same
    project = make_project("cardb", schema=PAIRWISE, curator=curator, description=f"About {EVIL}")
    import_as_annotators(project=project, fileobj=jsonl(pair_rows()))
    curation_action_apply(item=Item.objects.get(project=project, external_id="r0"), actor=curator, action="drop")
    snapshot = _export(project, curator, min_agreement=0.5)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    login(page, "carol", "carol-pw-123")
    page.goto(f"/exports/{snapshot.code}/")
    expect(page.locator("[data-testid=card-exported]")).to_have_text("3")
    expect(page.locator("[data-testid=card-left-out] tr[data-reason=dropped]")).to_contain_text("dropped by a curator")
    expect(page.locator("[data-testid=card-text] h2", has_text="Counts")).to_be_visible()
    expect(page.locator("[data-testid=card-text]")).to_contain_text('<script>alert("x")</script>')  # as text
    assert not dialogs  # nothing from the strings ran
    assert not _serious(page)
