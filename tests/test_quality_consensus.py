"""The Quality page shows the AI consensus (majority and confidence-weighted) and Cohen's kappa per
pair of labelers, with the numbers the functions compute, on data worked out by hand."""

from __future__ import annotations

import csv
import io
from html.parser import HTMLParser

import pytest
from django.test import Client
from django.urls import reverse

from annotation.importing import import_items
from annotation.models import Item, Judgment, Labeler
from curation.metrics import cohen_kappa
from models_srv.labeling import ai_consensus
from tests.conftest import jsonl

DASH = "\u2013"  # what the page shows for a figure it does not have

# Annotators' choices (q2 and q5 split 1-1, q4 judged once) and AI labelers' (choice, confidence).
HUMANS = {
    "q1": {"ann1": "B", "ann2": "B"},
    "q2": {"ann1": "B", "ann2": "A"},
    "q3": {"ann1": "A", "ann2": "A"},
    "q4": {"ann1": "A"},
    "q5": {"ann1": "B", "ann2": "A"},
}
AIS = {
    "q1": {"j1": ("A", 0.9), "j2": ("B", 0.6), "j3": ("B", 0.55)},  # B either way
    "q2": {"j1": ("A", 0.9), "j2": ("B", 0.3), "j3": ("B", 0.4)},  # majority B, weighted A (0.9 > 0.7)
    "q3": {"j1": ("B", None), "j2": ("A", 0.8)},  # majority a split (tie), weighted A (0.8 > 0.5)
    "q4": {"j1": ("tie", 0.7), "j2": ("A", 0.7)},  # a tie either way
    "q5": {"j1": ("B", 0.9)},
}


@pytest.fixture
def judged(make_project, make_user, curator):
    project = make_project("consensus", curator=curator, overlap=2)
    rows = [{"id": q, "prompt": f"prompt {q}", "response_a": "one", "response_b": "two"} for q in HUMANS]
    import_items(project=project, fileobj=jsonl(rows))
    items = {i.external_id: i for i in Item.objects.filter(project=project)}
    people = {n: Labeler.objects.create(kind="human", user=make_user(n), name=n) for n in ("ann1", "ann2")}
    ais = {
        n: Labeler.objects.create(project=project, kind=kind, name=n, config={})
        for n, kind in (("j1", "llm"), ("j2", "llm"), ("j3", "reward_model"))
    }
    for q, votes in HUMANS.items():
        for name, choice in votes.items():
            payload = {"pairwise": {"choice": choice, "strength": 1}}
            Judgment.objects.create(item=items[q], labeler=people[name], payload=payload, schema_version=1)
    for q, votes in AIS.items():
        for name, (choice, confidence) in votes.items():
            payload = {"pairwise": {"choice": choice, "strength": 0 if choice == "tie" else 1}}
            Judgment.objects.create(
                item=items[q], labeler=ais[name], payload=payload, schema_version=1, confidence=confidence
            )
    return project


class _Tables(HTMLParser):
    """The text of each cell of each row of the tables with a data-testid, by that id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.current: str | None = None
        self.row: list[str] | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.current = dict(attrs).get("data-testid")
            if self.current:
                self.tables[self.current] = []
        elif tag == "tr" and self.current:
            self.row = []
        elif tag == "td" and self.row is not None:
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self.cell is not None and self.row is not None:
            self.row.append(" ".join("".join(self.cell).split()))
            self.cell = None
        elif tag == "tr" and self.row is not None and self.current:
            if self.row:
                self.tables[self.current].append(self.row)
            self.row = None
        elif tag == "table":
            self.current = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def _page_tables(client: Client, project) -> dict[str, list[list[str]]]:
    response = client.get(reverse("curation:quality", args=[project.slug]), {"fresh": "1"})
    assert response.status_code == 200
    parser = _Tables()
    parser.feed(response.content.decode())
    return parser.tables


def test_the_ai_consensus_table_shows_what_ai_consensus_computes(judged, curator) -> None:
    c = Client()
    c.force_login(curator)
    tables = _page_tables(c, judged)
    items = {i.external_id: i for i in Item.objects.filter(project=judged)}
    # The per-item answers of models_srv.labeling.ai_consensus, summed up as the page sums them.
    expected = {}
    for method in ("majority", "weighted"):
        answers = {q: ai_consensus(items[q], method) for q in AIS}
        choices = [a["pairwise"]["choice"] for a in answers.values()]
        agreement = sum(a["agreement"] for a in answers.values()) / len(answers)
        humans = {"q1": "B", "q3": "A", "q4": "A"}  # the items with an annotators' consensus
        agree = sum(answers[q]["pairwise"]["choice"] == label for q, label in humans.items())
        expected[method] = [
            method,
            "5",
            f"{choices.count('A')} / {choices.count('B')} / {choices.count('tie')}",
            f"{agreement:.3f}".rstrip("0"),
            f"{agree / 3:.3f} (n=3)",
            f"{DASH} (n=0)",
        ]
    # By hand: majority B, B, tie, tie, B; weighted B, A, A, tie, B.
    assert expected["majority"][2] == "0 / 3 / 2" and expected["majority"][3] == "0.667"
    assert expected["weighted"][2] == "2 / 2 / 1" and expected["weighted"][3] == "0.648"
    assert expected["majority"][4].startswith("0.333") and expected["weighted"][4].startswith("0.667")
    assert tables["ai-consensus"] == [expected["majority"], expected["weighted"]]
    assert tables["ai-consensus-differ"] == [
        ["q2", "3", "B (0.667)", "A (0.562)", DASH],
        ["q3", "2", "tie (0.5)", "A (0.615)", "A"],
    ]


def test_cohen_kappa_per_pair_of_labelers_is_shown(judged, curator) -> None:
    c = Client()
    c.force_login(curator)
    rows = _page_tables(c, judged)["kappa-pairs"]
    shown = {(r[0], r[1]): r[2:] for r in rows}
    assert len(rows) == 10  # every pair of the five labelers shares an item
    # ann1 vs ann2 on q1, q2, q3, q5: B/B, B/A, A/A, B/A -> p_o 0.5, p_e (3*1 + 1*3) / 16, kappa 0.2.
    assert rows[0] == ["ann1 human", "ann2 human", "4", "0.5", "0.2"]  # annotators first
    for (a, b), cells in shown.items():
        na, nb = a.split()[0], b.split()[0]
        votes = {q: {**HUMANS[q], **{n: v[0] for n, v in AIS[q].items()}} for q in HUMANS}
        both = [q for q in votes if na in votes[q] and nb in votes[q]]
        kappa = cohen_kappa([votes[q][na] for q in both], [votes[q][nb] for q in both])
        assert cells[0] == str(len(both))
        assert cells[2] == (DASH if kappa is None else str(round(kappa, 3)))
    assert shown[("j1 ai", "j2 ai")] == [
        "4",
        "0.0",
        str(round(cohen_kappa(["A", "A", "B", "tie"], ["B", "B", "A", "A"]), 3)),
    ]


def test_the_two_tables_as_csv(judged, curator) -> None:
    c = Client()
    c.force_login(curator)
    url = reverse("curation:quality_csv", args=[judged.slug])

    def rows(table: str) -> list[dict[str, str]]:
        response = c.get(url, {"table": table, "fresh": "1"})
        assert response.status_code == 200
        return list(csv.DictReader(io.StringIO(response.content.decode())))

    methods = {r["method"]: r for r in rows("ai_consensus")}
    assert (methods["weighted"]["A"], methods["weighted"]["vs_annotators"]) == ("2", "0.667")
    assert [r["external_id"] for r in rows("ai_consensus_differ")] == ["q2", "q3"]
    kappas = rows("kappa_pairs")
    assert len(kappas) == 10 and kappas[0]["cohen_kappa"] == "0.2"
    page = c.get(reverse("curation:quality", args=[judged.slug])).content.decode()
    assert "?table=kappa_pairs" in page and "?table=ai_consensus" in page


def test_a_project_that_requires_audits_counts_only_audited_labelers(judged, curator) -> None:
    """With require_ai_audit and no audit passed, no AI labeler takes part: the page agrees with
    ai_consensus, which answers None for every item."""
    judged.require_ai_audit = True
    judged.save(update_fields=["require_ai_audit"])
    item = Item.objects.get(project=judged, external_id="q1")
    assert ai_consensus(item, "majority") is None
    c = Client()
    c.force_login(curator)
    tables = _page_tables(c, judged)
    shown = [row[:3] for row in tables["ai-consensus"]]
    assert shown == [["majority", "0", "0 / 0 / 0"], ["weighted", "0", "0 / 0 / 0"]]
    assert len(tables["kappa-pairs"]) == 10  # kappa compares what each labeler said, trusted or not
