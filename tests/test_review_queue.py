"""The review queue at scale: a project with 1,050 candidates, paged with its total, filtered by
reason, labeler, category and out-of-fold margin, sorted, and acted on in bulk (the rows ticked,
or every row matching the filter) with one undo; the queries do not grow with the page size; a
curator of another project reaches none of it.

Planted data, item r<i> for i < 1,200 (ann1 always votes A):
- i % 4 == 0: ann2 votes B: a tie (agreement 0.5), low_agreement;
- i % 4 == 1: ann2 B, ann3 A: 2 of 3 (0.667), low_agreement;
- i % 4 == 2: ann2 A, and the out-of-fold model leans B by i / 1000: out_of_fold_disagrees with a
  margin for the label of -i / 1000;
- i % 4 == 3: ann2 A, ann3 A; when i % 8 == 3 the AI judge flips with the order: ai_order_flip.
Category "math" when i % 3 == 0, else "chat".
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from annotation.importing import import_items
from annotation.models import Item, Judgment, Labeler, Membership
from annotation.services import membership_set
from curation import selectors, services
from curation.models import CurationAction
from curation.selectors import ReviewFilters
from models_srv.models import CrossFitRun, DataSnapshot, OutOfFoldMargin, RunStatus
from tests.conftest import jsonl

N = 1200


def _reasons(i: int) -> set[str]:
    return {
        0: {"low_agreement"},
        1: {"low_agreement"},
        2: {"out_of_fold_disagrees"},
        3: {"ai_order_flip"} if i % 8 == 3 else set(),
    }[i % 4]


EXPECTED = {i: _reasons(i) for i in range(N) if _reasons(i)}  # 1,050 candidates


def plant(project: Any, make_user: Any, n: int = N) -> dict[int, Item]:
    rows = [
        {
            "id": f"r{i}",
            "prompt": f"prompt {i}",
            "response_a": f"a{i}",
            "response_b": f"b{i}",
            "metadata": {"category": "math" if i % 3 == 0 else "chat"},
        }
        for i in range(n)
    ]
    import_items(project=project, fileobj=jsonl(rows))
    items = {int(i.external_id[1:]): i for i in Item.objects.filter(project=project)}
    people = {
        name: Labeler.objects.create(kind="human", user=make_user(f"{name}-{project.slug}"), name=name)
        for name in ("ann1", "ann2", "ann3")
    }
    judge = Labeler.objects.create(project=project, kind="llm", name="judge", config={})

    def vote(i: int, who: Labeler, choice: str, raw: str = "") -> Judgment:
        return Judgment(
            item=items[i],
            labeler=who,
            payload={"pairwise": {"choice": choice, "strength": 1}},
            schema_version=1,
            raw_output=raw,
        )

    judgments = []
    for i in range(n):
        judgments.append(vote(i, people["ann1"], "A"))
        judgments.append(vote(i, people["ann2"], "B" if i % 4 in (0, 1) else "A"))
        if i % 4 in (1, 3):
            judgments.append(vote(i, people["ann3"], "A"))
        if i % 8 == 3:
            judgments.append(vote(i, judge, "A", '{"order_consistent": false}'))
    Judgment.objects.bulk_create(judgments)
    run = CrossFitRun.objects.create(
        project=project,
        config={},
        snapshot=DataSnapshot.objects.create(project=project),
        status=RunStatus.SUCCEEDED,
        finished_at=timezone.now(),
    )
    OutOfFoldMargin.objects.bulk_create(
        OutOfFoldMargin(run=run, item=items[i], fold=i % 5, margin=i / 1000) for i in range(n) if i % 4 == 2
    )
    return items


@pytest.fixture
def big(make_project, make_user, curator) -> tuple[Any, dict[int, Item]]:
    project = make_project("rq", curator=curator, overlap=3)
    return project, plant(project, make_user)


def _client(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


def _matching(html: str) -> int:
    return int(re.search(r'data-testid="matching">([\d,]+)<', html).group(1).replace(",", ""))


def _shown(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'<tr data-item="r(\d+)">', html)]


def _labeler(name: str) -> int:
    return Labeler.objects.get(name=name).id


# ---------------------------------------------------------------------------------------------
# Reading: paging, filters, sort


def test_every_candidate_is_paged_with_the_total(big, curator) -> None:
    project, _ = big
    c = _client(curator)
    url = reverse("curation:review", args=[project.slug])
    first = c.get(url, {"per": 25}).content.decode()
    assert _matching(first) == len(EXPECTED) == 1050
    assert "Page 1 of 42" in first and len(_shown(first)) == 25
    second = c.get(url, {"per": 25, "page": 2}).content.decode()
    assert len(_shown(second)) == 25 and not set(_shown(first)) & set(_shown(second))
    assert "Page 42 of 42" in c.get(url, {"per": 25, "page": 999}).content.decode()  # clamped to the last
    # The old limit of 200 rows is gone: 200 a page, six pages, every candidate once.
    seen: list[int] = []
    for page in range(1, 7):
        html = c.get(url, {"per": 200, "page": page}).content.decode()
        assert f"Page {page} of 6" in html
        seen += _shown(html)
    assert len(seen) == 1050 and set(seen) == set(EXPECTED)


def test_filters_by_reason_labeler_category_and_margin(big, curator) -> None:
    project, _ = big
    c = _client(curator)
    url = reverse("curation:review", args=[project.slug])

    def count(**params: Any) -> int:
        response = c.get(url, params)
        assert response.status_code == 200
        return _matching(response.content.decode())

    assert count(reason="low_agreement") == sum("low_agreement" in r for r in EXPECTED.values()) == 600
    assert count(reason=["ai_order_flip", "out_of_fold_disagrees"]) == 150 + 300
    # ann3 judged i % 4 in (1, 3): the 2-of-3 splits and the AI flips among the candidates.
    assert count(labeler=_labeler("ann3")) == sum(1 for i in EXPECTED if i % 4 in (1, 3)) == 450
    assert count(labeler=_labeler("judge")) == 150
    assert count(category="math") == sum(1 for i in EXPECTED if i % 3 == 0)
    assert count(category="math", reason="low_agreement") == sum(1 for i in EXPECTED if i % 3 == 0 and i % 4 < 2)
    # Margin for the label is -i / 1000 on i % 4 == 2; a bound leaves out rows without a margin.
    expected = sum(1 for i in EXPECTED if i % 4 == 2 and -0.5 <= -i / 1000 <= -0.2)
    assert count(margin_min=-0.5, margin_max=-0.2) == expected == 75
    assert count(margin_max=0) == 300
    assert count(category="nothing-like-it") == 0
    assert c.get(url, {"margin_min": "lots"}).status_code == 400
    assert c.get(url, {"sort": "nonsense"}).status_code == 400


def test_sort_orders(big, curator) -> None:
    project, items = big
    # Dates: the last judgment of r<i> is i minutes after a start (so newest first is i descending).
    start = timezone.now() - timedelta(days=3)
    for i in (5, 9, 13):
        Judgment.objects.filter(item=items[i]).update(created_at=start + timedelta(minutes=i))
    Judgment.objects.filter(item__project=project).exclude(item_id__in=[items[i].id for i in (5, 9, 13)]).update(
        created_at=start - timedelta(days=1)
    )

    def order(sort: str, **f: Any) -> list[int]:
        q = selectors.review_queue(project, ReviewFilters(sort=sort, **f), per_page=2000)
        return [int(r["external_id"][1:]) for r in q.rows]

    oof = {"reasons": ("out_of_fold_disagrees",)}
    assert order("margin", **oof)[:3] == [1198, 1194, 1190]  # the model most against the label first
    assert order("-margin", **oof)[:3] == [2, 6, 10]
    by_disagreement = order("disagreement", reasons=("low_agreement",))
    assert all(i % 4 == 0 for i in by_disagreement[:300]) and all(i % 4 == 1 for i in by_disagreement[300:])
    assert order("-disagreement", reasons=("low_agreement",))[0] % 4 == 1
    assert order("date", reasons=("low_agreement",))[:3] == [13, 9, 5]
    assert order("-date", reasons=("low_agreement",))[-3:] == [5, 9, 13]
    margins = [r["margin"] for r in selectors.review_queue(project, ReviewFilters(sort="margin"), per_page=2000).rows]
    assert margins[:300] == sorted(margins[:300]) and set(margins[300:]) == {None}  # rows without one go last


def test_queries_do_not_grow_with_the_page_size(big, curator, django_assert_max_num_queries) -> None:
    project, _ = big
    c = _client(curator)
    url = reverse("curation:review", args=[project.slug])
    counts = {}
    for per in (25, 200):
        with CaptureQueriesContext(connection) as ctx:
            response = c.get(url, {"per": per})
        assert response.status_code == 200 and len(_shown(response.content.decode())) == per
        counts[per] = len(ctx.captured_queries)
    assert counts[25] == counts[200], counts
    with django_assert_max_num_queries(25):
        c.get(url, {"per": 200, "page": 3, "sort": "margin", "category": "chat"})
    with django_assert_max_num_queries(25):  # the fragment a filter or the pager asks for
        c.get(url, {"per": 100}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="queue")


def test_the_url_carries_the_filters(big, curator) -> None:
    project, _ = big
    c = _client(curator)
    url = reverse("curation:review", args=[project.slug])
    labeler = _labeler("ann3")
    html = c.get(url, {"reason": "low_agreement", "labeler": labeler, "per": 25, "page": 2}).content.decode()
    state = f"reason=low_agreement&amp;labeler={labeler}&amp;per=25"
    assert f'href="?{state}&amp;page=3"' in html and f'href="?{state}&amp;page=1"' in html  # the pager keeps them
    assert f'<option value="{labeler}" selected>ann3-rq</option>' in html  # the form shows them
    assert '<input type="hidden" name="reason" value="low_agreement">' in html  # the bulk form posts them
    fragment = c.get(url, {"reason": "low_agreement"}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="queue")
    body = fragment.content.decode()
    assert '<section id="queue"' in body and "<html" not in body and _matching(body) == 600
    poll = c.get(url, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="crossfit").content.decode()
    assert poll.lstrip().startswith('<div id="crossfit"')  # the out-of-fold run's polling, as before
    restore = c.get(url, {"reason": "flagged"}, HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true")
    assert "<html" in restore.content.decode()  # the back button after a cache miss: the whole page


# ---------------------------------------------------------------------------------------------
# Bulk actions and their undo


def test_bulk_on_the_rows_ticked_and_one_undo(big, curator) -> None:
    project, items = big
    c = _client(curator)
    picked = [items[i] for i in (0, 1, 2, 11)]
    response = c.post(
        reverse("curation:review_bulk", args=[project.slug]),
        {"scope": "selected", "item": [i.id for i in picked], "action": "drop", "note": "junk prompts"},
        HTTP_HX_REQUEST="true",
        HTTP_HX_TARGET="queue",
    )
    html = response.content.decode()
    assert response.status_code == 200 and _matching(html) == 1050 - 4
    assert 'hx-swap-oob="true"' in html and "bulk of 4" in html  # the history, refreshed beside the queue
    actions = list(CurationAction.objects.filter(project=project))
    assert len(actions) == 4 and {a.item_id for a in actions} == {i.id for i in picked}
    batch = {a.evidence["bulk"]["id"] for a in actions}
    assert len(batch) == 1 and all(a.reason == "junk prompts" and a.actor == curator for a in actions)
    r2 = next(a for a in actions if a.item_id == items[2].id)
    assert r2.evidence["reasons"] == ["out_of_fold_disagrees"]  # each row keeps its own evidence
    assert r2.evidence["out_of_fold_disagrees"]["margin_b_minus_a"] == 0.002
    assert set(Item.objects.filter(id__in=[i.id for i in picked]).values_list("status", flat=True)) == {"dropped"}

    undo = c.post(
        reverse("curation:review_bulk_undo", args=[project.slug, actions[-1].id]),
        HTTP_HX_REQUEST="true",
        HTTP_HX_TARGET="queue",
    )
    assert undo.status_code == 200 and _matching(undo.content.decode()) == 1050
    assert "undone on 4 items" in undo.content.decode()
    assert CurationAction.objects.filter(project=project, undone_at__isnull=True).count() == 0
    assert "dropped" not in set(Item.objects.filter(id__in=[i.id for i in picked]).values_list("status", flat=True))
    again = c.post(reverse("curation:review_bulk_undo", args=[project.slug, actions[0].id]))
    assert again.status_code == 302  # undoing twice changes nothing
    assert CurationAction.objects.filter(project=project).count() == 4


def test_bulk_on_all_matching_the_filter_without_javascript(big, curator) -> None:
    project, _ = big
    c = _client(curator)
    url = reverse("curation:review_bulk", args=[project.slug])
    state = {"reason": "ai_order_flip", "category": "chat"}
    n = sum(1 for i, r in EXPECTED.items() if "ai_order_flip" in r and i % 3 != 0)
    stale = c.post(url, {**state, "scope": "all", "count": n + 1, "action": "requeue"})
    assert stale.status_code == 409 and not CurationAction.objects.exists()  # the set changed: nothing done

    response = c.post(url, {**state, "scope": "all", "count": n, "action": "requeue"})
    assert response.status_code == 302
    assert (
        response["Location"] == reverse("curation:review", args=[project.slug]) + "?reason=ai_order_flip&category=chat"
    )
    acted = CurationAction.objects.filter(project=project)
    assert acted.count() == n == 100
    assert {a.evidence["bulk"]["scope"] for a in acted} == {"all"}
    assert {a.evidence["bulk"]["filter"] for a in acted} == {"reason=ai_order_flip&category=chat"}
    assert set(Item.objects.filter(curation_actions__in=acted).values_list("status", flat=True)) == {"open"}
    page = c.get(reverse("curation:review", args=[project.slug]), state).content.decode()
    assert _matching(page) == 0 and "No candidate matches these filters." in page
    assert "Undo the bulk" in page  # the history offers the one-step undo without JavaScript
    total = c.get(reverse("curation:review", args=[project.slug])).content.decode()
    assert _matching(total) == 1050 - n

    c.post(reverse("curation:review_bulk_undo", args=[project.slug, acted.first().id]), state)
    assert not CurationAction.objects.filter(project=project, undone_at__isnull=True).exists()
    assert _matching(c.get(reverse("curation:review", args=[project.slug]), state).content.decode()) == n


def test_bulk_undo_is_all_or_nothing(big, curator) -> None:
    project, items = big
    ids = [items[i].id for i in (0, 4, 8)]
    actions = services.curation_bulk_apply(project=project, item_ids=ids, actor=curator, action="accept")
    services.curation_action_apply(item=items[4], actor=curator, action="drop")  # a newer action on one of them
    c = _client(curator)
    response = c.post(reverse("curation:review_bulk_undo", args=[project.slug, actions[0].id]))
    assert response.status_code == 409 and b"undo the newer drop" in response.content
    assert CurationAction.objects.filter(project=project, undone_at__isnull=True).count() == 4  # nothing undone
    with pytest.raises(services.CurationError, match="no items"):
        services.curation_bulk_apply(project=project, item_ids=[], actor=curator, action="accept")


def test_bad_bulk_requests(big, curator) -> None:
    project, items = big
    c = _client(curator)
    url = reverse("curation:review_bulk", args=[project.slug])
    assert c.post(url, {"scope": "selected", "action": "drop"}).status_code == 400  # nothing ticked
    assert c.post(url, {"scope": "all", "action": "drop"}).status_code == 400  # no count
    assert c.post(url, {"scope": "selected", "item": ["x"], "action": "drop"}).status_code == 400
    assert c.post(url, {"scope": "selected", "item": [items[0].id], "action": "explode"}).status_code == 400
    plain = CurationAction.objects.create(project=project, item=items[0], action="accept")
    assert c.post(reverse("curation:review_bulk_undo", args=[project.slug, plain.id])).status_code == 404
    assert not Item.objects.filter(project=project, status="dropped").exists()


# ---------------------------------------------------------------------------------------------
# Access


def test_the_queue_and_its_bulk_actions_stay_in_the_project(big, curator, make_project, make_user) -> None:
    project, items = big
    other_curator = make_user("quinn", can_create=True)
    other = make_project("rq-other", curator=other_curator)
    import_items(project=other, fileobj=jsonl([{"id": "o1", "prompt": "p", "response_a": "a", "response_b": "b"}]))
    theirs = Item.objects.get(project=other)
    annotator = make_user("anna")
    membership_set(project=project, user=annotator, role=Membership.Role.ANNOTATOR)
    actions = services.curation_bulk_apply(project=project, item_ids=[items[0].id], actor=curator, action="accept")

    for who in (other_curator, annotator):
        c = _client(who)
        assert c.get(reverse("curation:review", args=[project.slug])).status_code == 404
        bulk = {"scope": "selected", "item": [items[1].id], "action": "drop"}
        assert c.post(reverse("curation:review_bulk", args=[project.slug]), bulk).status_code == 404
        assert c.post(reverse("curation:review_bulk_undo", args=[project.slug, actions[0].id])).status_code == 404
    # Another project's curator with their own slug and P's action, or P's items in their bulk.
    c = _client(other_curator)
    assert c.post(reverse("curation:review_bulk_undo", args=[other.slug, actions[0].id])).status_code == 404
    mixed = {"scope": "selected", "item": [items[1].id], "action": "drop"}
    assert c.post(reverse("curation:review_bulk", args=[other.slug]), mixed).status_code == 409
    # P's curator cannot reach Q's items through P's bulk either.
    mine = _client(curator).post(
        reverse("curation:review_bulk", args=[project.slug]),
        {"scope": "selected", "item": [items[1].id, theirs.id], "action": "drop"},
    )
    assert mine.status_code == 409 and b"not in this project" in mine.content
    assert not Item.objects.filter(status="dropped").exists()
    assert CurationAction.objects.filter(undone_at__isnull=True).count() == 1
