"""Round trips on the shared data: import through the app's importer, export, and compare field
by field with the source file (QA-Feedback spans and pairwise preferences; HH-RLHF pairs)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from annotation.importing import import_items
from annotation.models import Labeler, Project
from curation.export import pseudonym
from curation.services import export_copy_to, export_create, export_run
from tests.conftest import HH_FILE, QA_FILE, jsonl, needs_shared

pytestmark = pytest.mark.shared_data

CATEGORIES = ["Irrelevant", "Wrong-Grounding", "Unverifiable", "Redundant", "Incoherent"]
PAIRS = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]  # the order of QA-Feedback's `preference`
LABEL = {1: "A", 2: "B", 0: "tie"}


@pytest.fixture(autouse=True)
def _exports_in_tmp(settings: Any, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path / "var"


def build(project: Project, formats: list[str], out: Path, **filters: Any) -> Path:
    filters.setdefault("label_source", "imported")  # the shared data sets' labels come in the file
    snapshot = export_create(project=project, user=None, filters=filters, formats=formats, enqueue=False)
    snapshot = export_run(snapshot_id=snapshot.id)
    assert snapshot is not None and snapshot.status == "done", snapshot and snapshot.error
    export_copy_to(snapshot=snapshot, out=out)
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    table = pq.read_table(path.with_suffix(".parquet")).to_pylist()
    for row in table:  # JSONL writes times as ISO 8601 in UTC, Parquet as timestamps
        if "created_at" in row:
            row["created_at"] = row["created_at"].isoformat().replace("+00:00", "Z")
    assert table == rows  # both files say the same
    return rows


def qa_entries() -> list[dict[str, Any]]:
    with gzip.open(QA_FILE, "rt", encoding="utf-8") as fh:
        return json.load(fh)


@needs_shared(QA_FILE)
def test_qa_feedback_spans_round_trip(make_project: Any, tmp_path: Path) -> None:
    entries = qa_entries()
    project = make_project("qa-spans", schema={"spans": {"categories": [{"name": c} for c in CATEGORIES]}})
    rows = [
        {
            "id": f"qa-{n}",
            "prompt": e["question"],
            "responses": [e["prediction 1"]],
            "annotator": "qa-feedback",
            "spans": [
                {"response": 0, "start": x["start"], "end": x["end"], "category": x["error type"]}
                for x in e["feedback"]["errors"]
            ],
        }
        for n, e in enumerate(entries)
    ]
    import_items(project=project, fileobj=jsonl(rows))
    out = build(project, ["spans", "raw"], tmp_path / "qa-spans")

    spans = read_jsonl(out / "spans" / "train.jsonl")
    labeler = pseudonym(project.slug, Labeler.objects.get(project=project, name="qa-feedback").id)
    assert len(spans) == len(entries) == 350
    checked = 0
    for row in spans:
        e = entries[int(row["item_id"].split("-")[1])]
        assert (row["prompt"], row["response"], row["response_index"]) == (e["question"], e["prediction 1"], 0)
        expected = [
            {"start": x["start"], "end": x["end"], "category": x["error type"], "labeler": labeler}
            for x in e["feedback"]["errors"]
        ]
        assert row["spans"] == expected
        for s in row["spans"]:
            assert row["response"][s["start"] : s["end"]] == e["prediction 1"][s["start"] : s["end"]]
            checked += 1
    assert checked == 953

    raw = read_jsonl(out / "raw" / "train.jsonl")
    assert len(raw) == 350
    for row in raw:
        e = entries[int(row["item_id"].split("-")[1])]
        assert row["responses"] == [e["prediction 1"]] and row["labeler"] == labeler
        assert [(s["start"], s["end"], s["category"]) for s in row["spans"]] == [
            (x["start"], x["end"], x["error type"]) for x in e["feedback"]["errors"]
        ]


@needs_shared(QA_FILE)
def test_qa_feedback_pairwise_preferences_round_trip(make_project: Any, tmp_path: Path) -> None:
    entries = qa_entries()
    project = make_project("qa-pairs", schema={"pairwise": {"strengths": ["better"], "allow_tie": True}})
    rows = []
    for n, e in enumerate(entries):
        for (i, j), pref in zip(PAIRS, e["preference"], strict=True):
            rows.append(
                {
                    "id": f"qa-{n}-{i}v{j}",
                    "prompt": e["question"],
                    "response_a": e[f"prediction {i}"],
                    "response_b": e[f"prediction {j}"],
                    "model_a": f"prediction {i}",
                    "model_b": f"prediction {j}",
                    "label": LABEL[pref],
                    "annotator": "qa-feedback",
                }
            )
    import_items(project=project, fileobj=jsonl(rows))
    out = build(project, ["pairs", "raw"], tmp_path / "qa-pairs")

    def source(item_id: str) -> tuple[dict[str, Any], int, int, int]:
        _, n, pair = item_id.split("-")
        i, j = (int(x) for x in pair.split("v"))
        e = entries[int(n)]
        return e, i, j, e["preference"][PAIRS.index((i, j))]

    pairs = read_jsonl(out / "pairs" / "train.jsonl") + read_jsonl(out / "pairs" / "test.jsonl")
    decided = sum(1 for e in entries for p in e["preference"] if p != 0)
    assert len(pairs) == decided and decided > 1000
    for row in pairs:
        e, i, j, pref = source(row["item_id"])
        win, lose = (i, j) if pref == 1 else (j, i)
        assert row["prompt"] == e["question"]
        assert (row["chosen"], row["rejected"]) == (e[f"prediction {win}"], e[f"prediction {lose}"])
        assert (row["chosen_model"], row["rejected_model"]) == (f"prediction {win}", f"prediction {lose}")
        assert (row["strength"], row["agreement"], row["n_judgments"]) == (1, 1, 1)

    raw = read_jsonl(out / "raw" / "train.jsonl")
    assert len(raw) == len(rows) == 2100
    for row in raw:
        e, i, j, pref = source(row["item_id"])
        assert row["responses"] == [e[f"prediction {i}"], e[f"prediction {j}"]]
        assert row["choice"] == LABEL[pref] and row["strength"] == (0 if pref == 0 else 1)


@needs_shared(HH_FILE)
def test_hh_pairs_round_trip_exactly(make_project: Any, tmp_path: Path) -> None:
    project = make_project("hh", schema={"pairwise": {"strengths": ["better", "much better"]}})
    with HH_FILE.open("rb") as fh:
        import_items(project=project, fileobj=fh)
    out = build(project, ["pairs"], tmp_path / "hh")

    with gzip.open(HH_FILE, "rt", encoding="utf-8") as fh:
        source = [json.loads(line) for line in fh]
    pairs = read_jsonl(out / "pairs" / "train.jsonl") + read_jsonl(out / "pairs" / "test.jsonl")
    assert len(pairs) == len(source) == 1600
    assert {r["margin"] for r in pairs} == {0.0}  # one strength level: the app trains HH with no margin

    def dialogue(prompt: list[dict[str, str]], final: list[dict[str, str]]) -> str:
        turns = prompt + final
        return "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in turns)

    exported = []
    for row in pairs:
        assert row["prompt"][-1]["role"] == "user"
        assert [m["role"] for m in row["chosen"]] == ["assistant"] == [m["role"] for m in row["rejected"]]
        exported.append(
            {"chosen": dialogue(row["prompt"], row["chosen"]), "rejected": dialogue(row["prompt"], row["rejected"])}
        )
    key = lambda r: (r["chosen"], r["rejected"])  # noqa: E731
    assert sorted(exported, key=key) == sorted(source, key=key)  # prompt, chosen and rejected, exactly
