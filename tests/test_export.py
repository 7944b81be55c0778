"""Dataset exports: formats, filters, curation state, reproducibility, the command, access,
and one export through a real Celery worker."""

from __future__ import annotations

import hashlib
import json
import random
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.http import Http404
from django.utils import timezone

from annotation.importing import import_items, recount_human_judgments
from annotation.models import Assignment, ImportJob, Item, Judgment, Labeler, Membership, Project
from annotation.queue import next_assignment
from annotation.services import membership_set
from curation.export import ExportError, ExportFilters, pseudonym
from curation.export.stats import Agreement
from curation.metrics import krippendorff_alpha, pairwise_agreement
from curation.models import CurationAction, ExportSnapshot
from curation.selectors import curation_states, export_get_for_user, with_curation_state
from curation.services import (
    CurationError,
    curation_action_apply,
    curation_action_undo,
    export_copy_to,
    export_create,
    export_reproduce,
    export_run,
    recover_stale_exports,
)
from tests.conftest import jsonl

PAIRWISE = {"pairwise": {"strengths": ["better", "much better"], "allow_tie": True}}
FULL = {
    "pairwise": {"strengths": ["better", "much better"], "allow_tie": True},
    "rubric": {"aspects": [{"name": "helpfulness"}, {"name": "correctness"}], "required": False},
    "spans": {"categories": [{"name": "factual"}, {"name": "irrelevant"}]},
}
RANKING = {"ranking": {"k": 3}}


@pytest.fixture(autouse=True)
def _exports_in_tmp(settings: Any, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # The worker test shares VAR_DIR with its worker process through the environment instead.
    if "celery_worker_process" not in request.fixturenames:
        settings.VAR_DIR = tmp_path / "var"


def import_as_annotators(*, project: Project, fileobj: Any) -> Any:
    """Import rows whose labels stand for annotators' judgments made in the app (the `human`
    source): the file's labelers become annotators, each with a user of their name."""
    result = import_items(project=project, fileobj=fileobj)
    for labeler in Labeler.objects.filter(project=project, kind=Labeler.Kind.IMPORTED):
        user = get_user_model().objects.create(username=f"{project.slug}-{labeler.name}")
        Labeler.objects.filter(id=labeler.id).update(kind=Labeler.Kind.HUMAN, user=user, project=None)
    recount_human_judgments(project, list(Item.objects.filter(project=project).values_list("id", flat=True)))
    return result


def pw(annotator: str, choice: str, strength: int | None = None, **extra: Any) -> dict[str, Any]:
    s = strength if strength is not None else (0 if choice == "tie" else 1)
    return {"annotator": annotator, "pairwise": {"choice": choice, "strength": s}, **extra}


def pair_rows() -> list[dict[str, Any]]:
    return [
        {  # A wins 2:1, strengths 2 and 1
            "id": "r0",
            "prompt": "Question 0?",
            "response_a": "Answer A0",
            "response_b": "Answer B0",
            "model_a": "m-large",
            "model_b": "m-small",
            "judgments": [pw("ann1", "A", 2), pw("ann2", "A", 1), pw("ann3", "B", 1)],
        },
        {  # a tie: no pair
            "id": "r1",
            "prompt": "Question 1?",
            "response_a": "Answer A1",
            "response_b": "Answer B1",
            "judgments": [pw("ann1", "tie"), pw("ann2", "tie")],
        },
        {  # B, unanimous, much better, held out
            "id": "r2",
            "prompt": "Question 2?",
            "response_a": "Answer A2",
            "response_b": "Answer B2 — ünïcode",
            "model_a": "m-small",
            "model_b": "m-large",
            "split": "eval",
            "judgments": [pw("ann1", "B", 2)],
        },
        {  # split 1:1: undecided
            "id": "r3",
            "prompt": "Question 3?",
            "response_a": "Answer A3",
            "response_b": "Answer B3",
            "judgments": [pw("ann1", "A"), pw("ann2", "B")],
        },
        {"id": "r4", "prompt": "Question 4?", "response_a": "Answer A4", "response_b": "Answer B4"},  # unlabeled
    ]


@pytest.fixture
def pairs_project(make_project: Any, curator: Any) -> Project:
    project = make_project("exp", schema=PAIRWISE, curator=curator)
    import_as_annotators(project=project, fileobj=jsonl(pair_rows()))
    return project


def ai_judge(project: Project, name: str = "judge") -> Labeler:
    return Labeler.objects.create(project=project, kind=Labeler.Kind.LLM, name=name)


def judge(item: Item, labeler: Labeler, payload: dict[str, Any], **extra: Any) -> Judgment:
    return Judgment.objects.create(item=item, labeler=labeler, payload=payload, schema_version=1, **extra)


def build(project: Project, formats: Any, out: Path, **filters: Any) -> tuple[ExportSnapshot, Path]:
    snapshot = export_create(project=project, user=None, filters=filters, formats=formats, enqueue=False)
    snapshot = export_run(snapshot_id=snapshot.id)
    assert snapshot is not None and snapshot.status == "done", snapshot and snapshot.error
    target = out / f"files-{snapshot.code}"
    export_copy_to(snapshot=snapshot, out=target)
    return snapshot, target


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def item(project: Project, ext: str) -> Item:
    return Item.objects.get(project=project, external_id=ext)


# ---------------------------------------------------------------------------------------------
# Formats


def test_pairs_follow_trl_and_carry_consensus_split_and_models(pairs_project: Project, tmp_path: Path) -> None:
    snapshot, out = build(pairs_project, ["pairs"], tmp_path)
    train = read_jsonl(out / "pairs" / "train.jsonl")
    evals = read_jsonl(out / "pairs" / "test.jsonl")  # r2 is in the project's eval split: held out
    assert [r["item_id"] for r in train] == ["r0"] and [r["item_id"] for r in evals] == ["r2"]
    r0 = train[0]
    assert (r0["prompt"], r0["chosen"], r0["rejected"]) == ("Question 0?", "Answer A0", "Answer B0")
    assert (r0["chosen_model"], r0["rejected_model"]) == ("m-large", "m-small")
    assert r0["strength"] == 1.5 and r0["margin"] == 0.25 and r0["n_judgments"] == 3  # 0.5 a level above 1
    assert r0["agreement"] == pytest.approx(2 / 3)
    assert (r0["split"], r0["label_source"], r0["curation"]) == ("train", "human", None)
    r2 = evals[0]
    assert (r2["chosen"], r2["rejected"], r2["strength"], r2["margin"]) == ("Answer B2 — ünïcode", "Answer A2", 2, 0.5)
    assert r2["split"] == "test"
    assert "ünïcode" in (out / "pairs" / "test.jsonl").read_text(encoding="utf-8")  # UTF-8, not \u escapes

    table = pq.read_table(out / "pairs" / "train.parquet")
    assert table.column_names == [
        "prompt", "chosen", "rejected", "margin", "strength", "agreement", "n_judgments",
        "chosen_model", "rejected_model", "item_id", "split", "label_source", "curation",
    ]  # fmt: skip
    assert table.schema.field("prompt").type == pa.string()
    assert table.to_pylist() == train

    counts = snapshot.counts
    assert counts["rows"]["pairs"] == counts["rows"]["pairs_plain"] == {"train": 1, "test": 1}
    assert counts["skipped_rows"] == {"pairs:tie": 1, "pairs:undecided": 1}
    assert counts["items_considered"] == 4 and counts["items_exported"] == 4  # r4 has no judgment at all
    assert counts["judgments"] == 8


def test_chat_prompts_are_conversational_lists_of_structs(make_project: Any, tmp_path: Path) -> None:
    project = make_project("chat", schema=PAIRWISE)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Capital of France?"},
    ]
    rows = [
        {"id": "c0", "messages": messages, "response_a": "Paris.", "response_b": "Lyon.", "label": "A"},
        {"id": "c1", "prompt": "Plain text prompt", "response_a": "x", "response_b": "y", "label": "B"},
    ]
    import_as_annotators(project=project, fileobj=jsonl(rows))
    _, out = build(project, "pairs,raw", tmp_path)
    rows_out = {r["item_id"]: r for r in read_jsonl(out / "pairs" / "train.jsonl")}
    assert rows_out["c0"]["prompt"] == messages
    assert rows_out["c0"]["chosen"] == [{"role": "assistant", "content": "Paris."}]
    assert rows_out["c0"]["rejected"] == [{"role": "assistant", "content": "Lyon."}]
    assert rows_out["c1"]["prompt"] == [{"role": "user", "content": "Plain text prompt"}]  # one type per column
    schema = pq.read_schema(out / "pairs" / "train.parquet")
    message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    for name in ("prompt", "chosen", "rejected"):
        assert schema.field(name).type == message
    table = pq.read_table(out / "pairs" / "train.parquet")
    assert {r["item_id"]: r for r in table.to_pylist()} == rows_out
    assert pq.read_schema(out / "raw" / "train.parquet").field("prompt").type == message


def test_rubric_spans_and_raw(make_project: Any, tmp_path: Path) -> None:
    project = make_project("full", schema=FULL)
    rubric_1 = [{"helpfulness": 4, "correctness": 5}, {"helpfulness": 2, "correctness": 3}]
    rubric_2 = [{"helpfulness": 5, "correctness": 4}, {"helpfulness": 2}]
    spans_1 = [{"response": 1, "start": 0, "end": 5, "category": "factual"}]
    spans_2 = [
        {"response": 1, "start": 6, "end": 9, "category": "irrelevant"},
        {"response": 0, "start": 0, "end": 3, "category": "factual"},
    ]
    row = {
        "id": "f0",
        "prompt": "Tell me.",
        "response_a": "Good answer",
        "response_b": "Wrong and off topic",
        "judgments": [
            pw("ann1", "A", 2, rubric=rubric_1, spans=spans_1, justification="A is right"),
            pw("ann2", "A", 1, rubric=rubric_2, spans=spans_2),
        ],
    }
    import_as_annotators(project=project, fileobj=jsonl([row]))
    snapshot, out = build(project, ["pairs", "rubric", "spans", "raw"], tmp_path)

    rubric = read_jsonl(out / "rubric" / "train.jsonl")
    assert [(r["response_index"], r["helpfulness"], r["correctness"], r["n_judgments"]) for r in rubric] == [
        (0, 4.5, 4.5, 2),
        (1, 2.0, 3.0, 2),
    ]
    assert pq.read_schema(out / "rubric" / "train.parquet").field("helpfulness").type == pa.float64()

    labelers = {j.labeler.name: j.labeler_id for j in Judgment.objects.select_related("labeler")}
    p1, p2 = pseudonym("full", labelers["ann1"]), pseudonym("full", labelers["ann2"])
    spans = read_jsonl(out / "spans" / "train.jsonl")
    assert [(r["response_index"], r["response"]) for r in spans] == [(0, "Good answer"), (1, "Wrong and off topic")]
    assert spans[0]["spans"] == [{"start": 0, "end": 3, "category": "factual", "labeler": p2}]
    assert spans[1]["spans"] == [
        {"start": 0, "end": 5, "category": "factual", "labeler": p1},
        {"start": 6, "end": 9, "category": "irrelevant", "labeler": p2},
    ]
    assert pq.read_table(out / "spans" / "train.parquet").to_pylist() == spans

    raw = read_jsonl(out / "raw" / "train.jsonl")
    assert [r["labeler"] for r in raw] == [p1, p2] and len(p1) == 16 and "ann1" not in json.dumps(raw)
    first = raw[0]
    assert (first["choice"], first["strength"], first["justification"]) == ("A", 2, "A is right")
    assert first["rubric"] == rubric_1 and first["spans"] == spans_1
    assert raw[1]["rubric"] == [{"helpfulness": 5, "correctness": 4}, {"helpfulness": 2, "correctness": None}]
    assert (first["labeler_kind"], first["labeler_type"], first["schema_version"]) == ("human", "human", 1)
    assert first["responses"] == ["Good answer", "Wrong and off topic"]
    table = pq.read_table(out / "raw" / "train.parquet")
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert table.column("rubric").to_pylist()[1] == raw[1]["rubric"]

    card = (out / "README.md").read_text()
    assert "`helpfulness`" in card and "`factual` (2)" in card and "`irrelevant` (1)" in card
    assert snapshot.counts["agreement"]["rubric"]["helpfulness"]["units"] == 2


def test_listwise_orders_responses_by_mean_rank(make_project: Any, tmp_path: Path) -> None:
    project = make_project("rank", schema=RANKING)
    row = {
        "id": "k0",
        "prompt": "Rank these",
        "responses": [{"text": "one", "model": "m1"}, {"text": "two", "model": "m2"}, "three"],
        "judgments": [
            {"annotator": "a", "ranking": [2, 1, 3]},
            {"annotator": "b", "ranking": [1, 2, 3]},
            {"annotator": "c", "ranking": [2, 1, 3]},
        ],
    }
    import_as_annotators(project=project, fileobj=jsonl([row]))
    snapshot, out = build(project, "listwise,raw", tmp_path)
    (r,) = read_jsonl(out / "listwise" / "train.jsonl")
    assert r["responses"] == ["two", "one", "three"] and r["models"] == ["m2", "m1", ""]
    assert r["response_indexes"] == [1, 0, 2]
    assert r["mean_ranks"] == pytest.approx([4 / 3, 5 / 3, 3.0])
    assert 0 < r["kendall_w"] < 1 and r["n_judgments"] == 3
    assert read_jsonl(out / "raw" / "train.jsonl")[0]["ranking"] == [2, 1, 3]
    assert snapshot.counts["agreement"]["ranking"]["items"] == 1
    with pytest.raises(ExportError, match="pairs format needs a pairwise"):
        export_create(project=project, user=None, filters={}, formats=["pairs"])


def test_card_checksums_and_bundle(pairs_project: Project, tmp_path: Path) -> None:
    snapshot, out = build(pairs_project, ["pairs", "raw"], tmp_path, min_agreement=0.5)
    text = (out / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "unknown"
    configs = {c["config_name"]: c for c in front["configs"]}
    assert configs["pairs"]["data_files"] == [
        {"split": "test", "path": "pairs/test.parquet"},
        {"split": "train", "path": "pairs/train.parquet"},
    ]
    assert configs["pairs_plain"]["data_files"] == [
        {"split": "test", "path": "pairs_plain/test.parquet"},
        {"split": "train", "path": "pairs_plain/train.parquet"},
    ]
    assert configs["pairs"].get("default") is True and list(configs) == ["pairs", "pairs_plain", "raw"]
    assert str(snapshot.cutoff.year) in text and '"min_agreement": 0.5' in text
    assert "Krippendorff's alpha" in text and "percent agreement" in text
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    files = {f["name"]: f for f in snapshot.files}
    assert files["pairs/train.jsonl"]["rows"] == 1 and files["raw/train.jsonl"]["rows"] == 7
    bundle = snapshot.bundle_file
    assert bundle is not None and bundle.exists() and bundle.parent == snapshot.folder
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() == snapshot.bundle_sha256
    assert snapshot.bundle_bytes == bundle.stat().st_size
    assert sorted(p.name for p in snapshot.folder.iterdir()) == sorted(["README.md", "SHA256SUMS", bundle.name])
    zipped = tmp_path / "copy.zip"
    export_copy_to(snapshot=snapshot, out=zipped)
    assert zipped.read_bytes() == bundle.read_bytes()


def test_agreement_figures_match_the_metrics_module() -> None:
    rng = random.Random(3)
    units = [[rng.choice(["A", "B", "tie"]) for _ in range(rng.randint(1, 5))] for _ in range(200)]
    acc = Agreement("nominal")
    for u in units:
        acc.add(u)
    assert acc.alpha() == pytest.approx(krippendorff_alpha(units, "nominal"))
    assert acc.percent() == pytest.approx(pairwise_agreement(units))
    scores = [[rng.randint(1, 5) for _ in range(rng.randint(1, 4))] for _ in range(200)]
    acc = Agreement("interval")
    for u in scores:
        acc.add(u)
    assert acc.alpha() == pytest.approx(krippendorff_alpha(scores, "interval"))


# ---------------------------------------------------------------------------------------------
# Filters and curation state


def pair_ids(out: Path) -> dict[str, dict[str, Any]]:
    rows = []
    for name in ("train.jsonl", "test.jsonl"):
        path = out / "pairs" / name
        if path.exists():
            rows += read_jsonl(path)
    return {r["item_id"]: r for r in rows}


def test_min_agreement_and_min_strength(pairs_project: Project, tmp_path: Path) -> None:
    snapshot, out = build(pairs_project, ["pairs", "raw"], tmp_path, min_agreement=0.9)
    assert set(pair_ids(out)) == {"r2"}
    assert snapshot.counts["excluded"] == {"low_agreement": 2}
    assert {r["item_id"] for r in read_jsonl(out / "raw" / "train.jsonl")} == {"r1"}  # the tie agrees fully
    snapshot, out = build(pairs_project, ["pairs"], tmp_path, min_strength=2)
    assert set(pair_ids(out)) == {"r2"}
    assert snapshot.counts["excluded"] == {"low_strength": 3}


def test_label_sources(pairs_project: Project, tmp_path: Path) -> None:
    ai = ai_judge(pairs_project)
    judge(item(pairs_project, "r0"), ai, {"pairwise": {"choice": "B", "strength": 2}}, confidence=0.9)
    judge(item(pairs_project, "r4"), ai, {"pairwise": {"choice": "A", "strength": 1}}, confidence=0.6)

    _, out = build(pairs_project, ["pairs"], tmp_path, label_source="human")
    assert {k: r["chosen"] for k, r in pair_ids(out).items()} == {"r0": "Answer A0", "r2": "Answer B2 — ünïcode"}

    snapshot, out = build(pairs_project, ["pairs"], tmp_path, label_source="ai")
    assert snapshot.counts["ai_labelers"] == [
        {"name": "judge", "type": "llm", "model": "", "version": 1, "judgments": 2}
    ]
    assert snapshot.counts["human_annotators"] == 0
    assert "AI labeler `judge` (llm, version 1): 2 judgments" in (out / "README.md").read_text()
    got = pair_ids(out)
    assert {k: (r["chosen"], r["label_source"]) for k, r in got.items()} == {
        "r0": ("Answer B0", "ai"),
        "r4": ("Answer A4", "ai"),
    }

    _, out = build(pairs_project, ["pairs"], tmp_path, label_source="consensus")
    got = pair_ids(out)
    assert {k: (r["chosen"], r["label_source"]) for k, r in got.items()} == {
        "r0": ("Answer A0", "human"),
        "r2": ("Answer B2 — ünïcode", "human"),
        "r4": ("Answer A4", "ai"),
    }

    _, out = build(pairs_project, ["pairs"], tmp_path, label_source="all")
    r0 = pair_ids(out)["r0"]
    assert (r0["chosen"], r0["label_source"], r0["n_judgments"]) == ("Answer A0", "human+ai", 4)
    assert r0["agreement"] == pytest.approx(2 / 3.9)  # the AI vote weighs its confidence


def test_dropped_flipped_and_flagged_items(pairs_project: Project, curator: Any, tmp_path: Path) -> None:
    r0, r2 = item(pairs_project, "r0"), item(pairs_project, "r2")
    curation_action_apply(item=r0, actor=curator, action="drop", reason="bad prompt")
    curation_action_apply(item=r2, actor=curator, action="flip", reason="mislabeled", evidence={"rm_margin": -3.1})

    _, out = build(pairs_project, ["pairs", "raw"], tmp_path)
    got = pair_ids(out)
    assert set(got) == {"r2"}
    assert (got["r2"]["chosen"], got["r2"]["rejected"], got["r2"]["curation"]) == (
        "Answer A2",
        "Answer B2 — ünïcode",
        "flip",
    )
    raw = read_jsonl(out / "raw" / "eval.jsonl")
    assert raw[0]["choice"] == "B" and raw[0]["curation"] == "flip"  # raw judgments stay as given

    _, out = build(pairs_project, ["pairs"], tmp_path, exclude_dropped=False)
    assert pair_ids(out)["r0"]["curation"] == "drop"

    now = timezone.now()
    Assignment.objects.create(
        item=r2,
        annotator=curator,
        state=Assignment.State.SKIPPED,
        response_order=[0, 1],
        leased_at=now - timedelta(minutes=1),
        expires_at=now + timedelta(minutes=5),
        finished_at=now,
        flagged=True,
        flag_reason="offensive",
    )
    snapshot, out = build(pairs_project, ["pairs"], tmp_path, exclude_flagged=True)
    assert pair_ids(out) == {}
    assert snapshot.counts["excluded"] == {"dropped": 1, "flagged": 1}


def test_splits_dates_and_labelers(pairs_project: Project, tmp_path: Path) -> None:
    _, out = build(pairs_project, ["pairs", "raw"], tmp_path, splits=["eval"])
    assert sorted(p.name for p in (out / "pairs").iterdir()) == ["test.jsonl", "test.parquet"]
    assert sorted(p.name for p in (out / "raw").iterdir()) == ["eval.jsonl", "eval.parquet"]

    today = timezone.now().date()
    snapshot, _ = build(pairs_project, ["raw"], tmp_path, date_to=str(today - timedelta(days=1)))
    assert snapshot.counts["judgments"] == 0 and snapshot.counts["rows"]["raw"] == {}
    snapshot, _ = build(pairs_project, ["raw"], tmp_path, date_from=str(today), date_to=str(today))
    assert snapshot.counts["judgments"] == 8

    ann3 = Labeler.objects.get(name="ann3")
    _, out = build(pairs_project, ["pairs"], tmp_path, labelers=[ann3.id])
    assert {k: r["chosen"] for k, r in pair_ids(out).items()} == {"r0": "Answer B0"}
    with pytest.raises(ExportError, match="no labeler"):
        export_create(project=pairs_project, user=None, filters={"labelers": [999999]}, formats="pairs")


def test_bad_filters_and_formats_are_refused(pairs_project: Project) -> None:
    for filters, message in [
        ({"min_agreement": 2}, "min_agreement"),
        ({"label_source": "crowd"}, "label_source"),
        ({"splits": ["dev"]}, "splits"),
        ({"date_from": "2025-02-01", "date_to": "2025-01-01"}, "date_from is after date_to"),
        ({"colour": "red"}, "colour"),
    ]:
        with pytest.raises(ExportError, match=message):
            export_create(project=pairs_project, user=None, filters=filters, formats="pairs")
    with pytest.raises(ExportError, match="unknown format"):
        export_create(project=pairs_project, user=None, filters={}, formats="pairs,csv")
    with pytest.raises(ExportError, match="rubric format needs a rubric"):
        export_create(project=pairs_project, user=None, filters={}, formats=["rubric"])
    assert ExportSnapshot.objects.count() == 0
    assert ExportFilters.parse({"splits": ["train", "eval", "train"]}).splits == ["eval", "train"]


# ---------------------------------------------------------------------------------------------
# Reproducibility


def test_no_snapshot_is_cut_while_an_import_runs(pairs_project: Project) -> None:
    job = ImportJob.objects.create(
        project=pairs_project, source=ImportJob.Source.API, status=ImportJob.Status.RUNNING, format="jsonl"
    )
    with pytest.raises(ExportError, match="import into this project is running"):
        export_create(project=pairs_project, user=None, filters={}, formats="pairs", enqueue=False)
    ImportJob.objects.filter(id=job.id).update(status=ImportJob.Status.SUCCEEDED)
    assert export_create(project=pairs_project, user=None, filters={}, formats="pairs", enqueue=False).pk


def test_a_reproduced_snapshot_has_identical_files(pairs_project: Project, curator: Any, tmp_path: Path) -> None:
    flip = curation_action_apply(item=item(pairs_project, "r0"), actor=curator, action="flip")
    first, out1 = build(pairs_project, ["pairs", "raw"], tmp_path)

    # Everything after the cutoff: a new judgment, a new action, an undo of an older action.
    time.sleep(0.01)
    ann4 = Labeler.objects.create(kind="human", name="ann4", user=get_user_model().objects.create(username="ann4"))
    judge(item(pairs_project, "r3"), ann4, {"pairwise": {"choice": "B", "strength": 1}})
    curation_action_undo(action=flip, actor=curator)
    curation_action_apply(item=item(pairs_project, "r2"), actor=curator, action="drop")

    again = export_run(snapshot_id=export_reproduce(snapshot=first, user=curator, enqueue=False).id)
    assert again is not None and again.status == "done"
    assert (again.source_snapshot_id, again.cutoff, again.filters) == (first.id, first.cutoff, first.filters)
    jsonl_sums = lambda s: {f["name"]: f["sha256"] for f in s.files if f["kind"] == "jsonl"}  # noqa: E731
    assert jsonl_sums(again) == jsonl_sums(first) and len(jsonl_sums(first)) == 6  # pairs, pairs_plain, raw
    assert again.counts == first.counts
    out2 = tmp_path / "again"
    export_copy_to(snapshot=again, out=out2)
    for f in first.files:
        if f["kind"] == "parquet":
            assert pq.read_table(out1 / f["name"]).equals(pq.read_table(out2 / f["name"]))
    assert f"reproduces | `{first.code}`" in (out2 / "README.md").read_text()

    fresh, out3 = build(pairs_project, ["pairs", "raw"], tmp_path)  # a new cutoff sees the changes
    assert set(pair_ids(out3)) == {"r0", "r3"} and pair_ids(out3)["r0"]["curation"] is None
    assert jsonl_sums(fresh) != jsonl_sums(first)


# ---------------------------------------------------------------------------------------------
# Curation actions


def test_drop_and_undo_restore_the_item(pairs_project: Project, curator: Any) -> None:
    r0 = item(pairs_project, "r0")
    before = (r0.status, r0.route, r0.priority)
    drop = curation_action_apply(item=r0, actor=curator, action="drop", reason="spam", evidence={"score": 0.1})
    r0.refresh_from_db()
    assert r0.status == "dropped"
    assert (drop.actor, drop.reason, drop.evidence, drop.previous["status"]) == (
        curator,
        "spam",
        {"score": 0.1},
        "done",
    )
    assert curation_states(project=pairs_project)[r0.id] == drop
    accept = curation_action_apply(item=r0, actor=curator, action="accept")
    r0.refresh_from_db()
    assert r0.status == "done"  # accepting brings it back

    with pytest.raises(CurationError, match="undo the newer accept"):
        curation_action_undo(action=drop, actor=curator)
    curation_action_undo(action=accept, actor=curator)
    r0.refresh_from_db()
    assert r0.status == "dropped" and curation_states(item_ids=[r0.id])[r0.id] == drop
    undone = curation_action_undo(action=drop, actor=curator)
    assert undone.undone_by == curator and undone.undone_at is not None
    assert curation_action_undo(action=drop, actor=curator).undone_at == undone.undone_at  # idempotent
    r0.refresh_from_db()
    assert (r0.status, r0.route, r0.priority) == before
    assert curation_states(project=pairs_project) == {}
    assert curation_states(project=pairs_project, at=accept.created_at)[r0.id] == accept  # as it was then
    annotated = with_curation_state(Item.objects.filter(project=pairs_project)).get(id=r0.id)
    assert annotated.curation_state is None
    assert CurationAction.objects.filter(item=r0).count() == 2
    with pytest.raises(CurationError, match="unknown curation action"):
        curation_action_apply(item=r0, actor=curator, action="delete")


def test_requeue_sends_an_ai_routed_item_back_to_human_annotators(
    make_project: Any, curator: Any, annotator: Any
) -> None:
    project = make_project("rq", schema=PAIRWISE, curator=curator, overlap=2)
    membership_set(project=project, user=annotator, role=Membership.Role.ANNOTATOR)
    rows = [{"id": f"q{i}", "prompt": f"Q{i}", "response_a": "a", "response_b": "b"} for i in range(3)]
    rows[1]["label"] = "A"
    import_as_annotators(project=project, fileobj=jsonl(rows))
    Item.objects.filter(project=project).update(route=Item.Route.AI)
    Item.objects.filter(project=project, external_id="q0").update(priority=5.0)
    assert next_assignment(project=project, user=annotator) is None  # everything went to the AI

    q1 = item(project, "q1")
    action = curation_action_apply(item=q1, actor=curator, action="requeue", reason="AI and human disagree")
    q1.refresh_from_db()
    assert (q1.status, q1.route, q1.priority) == ("open", "human", 6.0)
    assignment = next_assignment(project=project, user=annotator)
    assert assignment is not None and assignment.item_id == q1.id

    curation_action_undo(action=action, actor=curator)
    q1.refresh_from_db()
    assert (q1.route, q1.priority) == ("ai", 0.0)


def test_a_sent_back_item_stays_with_humans_when_the_project_is_routed_again(
    make_project: Any, curator: Any, annotator: Any
) -> None:
    from models_srv.routing import route_project

    project = make_project("rq3", schema=PAIRWISE, curator=curator, human_budget=0.0, routing_policy="learned")
    membership_set(project=project, user=annotator, role=Membership.Role.ANNOTATOR)
    rows = [{"id": f"q{i}", "prompt": f"Q{i}", "response_a": "a" * (i + 1), "response_b": "b"} for i in range(6)]
    import_as_annotators(project=project, fileobj=jsonl(rows))
    route_project(project=project)
    assert set(Item.objects.filter(project=project).values_list("route", flat=True)) == {"ai"}  # budget 0
    q2 = item(project, "q2")
    action = curation_action_apply(item=q2, actor=curator, action="requeue", reason="check by hand")
    q2.refresh_from_db()
    front = q2.priority
    route_project(project=project)
    q2.refresh_from_db()
    assert (q2.route, q2.priority) == ("human", front)
    assert next_assignment(project=project, user=annotator).item_id == q2.id

    curation_action_undo(action=action, actor=curator)
    route_project(project=project)
    q2.refresh_from_db()
    assert q2.route == "ai"


def test_a_fully_judged_item_sent_back_gets_one_more_judgment_from_someone_new(
    make_project: Any, curator: Any, make_user: Any
) -> None:
    from annotation.queue import submit

    project = make_project("rq2", schema=PAIRWISE, curator=curator, overlap=2)
    people = [make_user(f"ann{i}") for i in range(3)]
    for person in people:
        membership_set(project=project, user=person, role=Membership.Role.ANNOTATOR)
    import_items(project=project, fileobj=jsonl([{"id": "q0", "prompt": "Q", "response_a": "a", "response_b": "b"}]))
    answer = {"pairwise": {"choice": "A", "strength": 1}}
    for person in people[:2]:
        submit(assignment_id=next_assignment(project=project, user=person).id, user=person, payload=answer)
    q0 = item(project, "q0")
    assert (q0.status, q0.human_count) == ("done", 2)
    assert next_assignment(project=project, user=people[2]) is None

    action = curation_action_apply(item=q0, actor=curator, action="requeue", reason="second look")
    q0.refresh_from_db()
    assert (q0.status, q0.extra_overlap) == ("open", 1)
    assert next_assignment(project=project, user=people[0]) is None  # never the same item twice
    third = next_assignment(project=project, user=people[2])
    assert third is not None and third.item_id == q0.id
    submit(assignment_id=third.id, user=people[2], payload=answer)
    q0.refresh_from_db()
    assert (q0.status, q0.human_count) == ("done", 3)
    assert Judgment.objects.filter(item=q0).count() == 3

    curation_action_undo(action=action, actor=curator)
    q0.refresh_from_db()
    assert (q0.status, q0.extra_overlap) == ("done", 0)


# ---------------------------------------------------------------------------------------------
# Runs: claiming, stale workers, access


def test_a_finished_or_claimed_snapshot_is_not_run_twice(pairs_project: Project) -> None:
    snapshot = export_create(project=pairs_project, user=None, filters={}, formats="pairs", enqueue=False)
    done = export_run(snapshot_id=snapshot.id)
    assert done is not None and done.attempts == 1
    assert export_run(snapshot_id=snapshot.id) is None
    assert export_run(snapshot_id=snapshot.id, redelivered=True) is None


def test_a_stale_running_export_is_taken_over_on_redelivery_or_requeued(
    pairs_project: Project, django_capture_on_commit_callbacks: Any
) -> None:
    snapshot = export_create(project=pairs_project, user=None, filters={}, formats="pairs", enqueue=False)
    long_ago = timezone.now() - timedelta(hours=2)
    ExportSnapshot.objects.filter(id=snapshot.id).update(status="running", attempts=1, heartbeat_at=long_ago)
    partial = snapshot.folder.with_name(f"{snapshot.code}.partial")
    partial.mkdir(parents=True)
    (partial / "junk").write_text("left by a killed worker")
    assert export_run(snapshot_id=snapshot.id) is None  # a first delivery never steals a running export
    taken = export_run(snapshot_id=snapshot.id, redelivered=True)
    assert taken is not None and taken.status == "done" and taken.attempts == 2
    assert not partial.exists() and taken.bundle_file.exists()

    fresh = export_create(project=pairs_project, user=None, filters={}, formats="pairs", enqueue=False)
    ExportSnapshot.objects.filter(id=fresh.id).update(status="running", attempts=1, heartbeat_at=timezone.now())
    assert export_run(snapshot_id=fresh.id, redelivered=True) is None  # alive: left alone
    assert recover_stale_exports() == {"requeued": 0, "failed": 0}
    with django_capture_on_commit_callbacks() as sent:  # the sweep, once it has gone silent
        assert recover_stale_exports(now=timezone.now() + timedelta(hours=1)) == {"requeued": 1, "failed": 0}
    fresh.refresh_from_db()
    assert fresh.status == "pending" and len(sent) == 1  # back in the queue, its task sent again
    again = export_run(snapshot_id=fresh.id)  # what that task does
    assert again is not None and again.status == "done" and again.attempts == 2

    worn = export_create(project=pairs_project, user=None, filters={}, formats="pairs", enqueue=False)
    ExportSnapshot.objects.filter(id=worn.id).update(status="running", attempts=3, heartbeat_at=long_ago)
    assert export_run(snapshot_id=worn.id, redelivered=True) is None
    worn.refresh_from_db()
    assert worn.status == "failed" and "gave up after 3 attempts" in worn.error


def test_a_crashing_export_is_marked_failed_and_leaves_nothing(pairs_project: Project, monkeypatch: Any) -> None:
    import curation.services as services

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(services, "bundle_export", boom)
    snapshot = export_create(project=pairs_project, user=None, filters={}, formats="pairs", enqueue=False)
    with pytest.raises(RuntimeError):
        export_run(snapshot_id=snapshot.id)
    snapshot.refresh_from_db()
    assert snapshot.status == "failed" and "disk full" in snapshot.error
    assert not snapshot.folder.exists() and not snapshot.folder.with_name(f"{snapshot.code}.partial").exists()


def test_only_curators_of_the_project_see_an_export(
    pairs_project: Project, curator: Any, annotator: Any, outsider: Any, make_user: Any
) -> None:
    snapshot = export_create(project=pairs_project, user=curator, filters={}, formats="pairs", enqueue=False)
    assert export_get_for_user(curator, snapshot.code) == snapshot
    assert export_get_for_user(make_user("root", superuser=True), str(snapshot.code)) == snapshot
    membership_set(project=pairs_project, user=annotator, role=Membership.Role.ANNOTATOR)
    for user, code in [(annotator, snapshot.code), (outsider, snapshot.code), (curator, "not-a-uuid")]:
        with pytest.raises(Http404):
            export_get_for_user(user, code)


# ---------------------------------------------------------------------------------------------
# The command


def test_export_dataset_command(pairs_project: Project, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "data"
    call_command(
        "export_dataset", "--project", "exp", "--format", "pairs", "--format", "raw", "--out", str(out),
        "--split", "train", "--min-agreement", "0.6", "--license", "cc-by-4.0",
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "pairs: train 1" in printed and "pairs_plain: train 1" in printed and "raw: train 5" in printed
    assert "low_agreement 1" in printed
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "README.md", "SHA256SUMS", "pairs/train.jsonl", "pairs/train.parquet",
        "pairs_plain/train.jsonl", "pairs_plain/train.parquet", "raw/train.jsonl", "raw/train.parquet",
    ]  # fmt: skip
    assert "license: cc-by-4.0" in (out / "README.md").read_text()
    snapshot = ExportSnapshot.objects.get()
    assert snapshot.filters["splits"] == ["train"] and snapshot.filters["min_agreement"] == 0.6

    bundle = tmp_path / "again.zip"
    call_command("export_dataset", "--reproduce", str(snapshot.code), "--out", str(bundle))
    again = ExportSnapshot.objects.exclude(id=snapshot.id).get()
    assert again.source_snapshot == snapshot and bundle.read_bytes() == again.bundle_file.read_bytes()

    with pytest.raises(CommandError, match="unknown format"):
        call_command("export_dataset", "--project", "exp", "--format", "csv", "--out", str(tmp_path / "x"))
    with pytest.raises(CommandError, match="no project"):
        call_command("export_dataset", "--project", "nope", "--format", "pairs", "--out", str(tmp_path / "x"))
    with pytest.raises(CommandError, match="not empty"):
        call_command("export_dataset", "--project", "exp", "--format", "pairs", "--out", str(out))


# ---------------------------------------------------------------------------------------------
# Through a real worker


@pytest.mark.worker
def test_an_export_is_built_by_the_worker(celery_worker_process: Any, make_project: Any, curator: Any) -> None:
    project = make_project("exp-worker", schema=PAIRWISE, curator=curator)
    import_as_annotators(project=project, fileobj=jsonl(pair_rows()))
    snapshot = export_create(project=project, user=curator, filters={}, formats=["pairs", "raw"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        snapshot.refresh_from_db()
        if snapshot.is_finished:
            break
        time.sleep(0.2)
    assert snapshot.status == "done", snapshot.error or snapshot.status
    assert snapshot.attempts == 1 and snapshot.counts["rows"]["pairs"] == {"test": 1, "train": 1}
    assert snapshot.bundle_file.exists()
    assert hashlib.sha256(snapshot.bundle_file.read_bytes()).hexdigest() == snapshot.bundle_sha256
