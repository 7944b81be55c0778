"""Importing items: every accepted shape and format, labels carried in files, idempotent re-import,
and refusal of bad files with line numbers and nothing stored."""

from __future__ import annotations

import csv
import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotation.importing import ImportRefused, import_items, split_hh_dialogue
from annotation.models import Item, Judgment, Labeler, Project
from annotation.schema import PayloadError
from tests.conftest import RUBRIC_SCHEMA, jsonl, pair_row


def _snapshot(project: Project) -> tuple[int, int, int]:
    return (
        Item.objects.filter(project=project).count(),
        Judgment.objects.filter(item__project=project).count(),
        Labeler.objects.filter(project=project).count(),
    )


def test_pairwise_rows_with_models_metadata_and_split(project: Project) -> None:
    rows = [pair_row(1, model_a="m-a", model_b="m-b", metadata={"category": "math"}, split="test"), pair_row(2)]
    result = import_items(project=project, fileobj=jsonl(rows))
    assert (result.format, result.rows_read, result.items_created) == ("jsonl", 2, 2)
    item = Item.objects.get(project=project, external_id="r1")
    assert item.prompt == "Question 1?"
    assert item.prompt_messages is None
    assert item.responses == [{"text": "Answer A1", "model": "m-a"}, {"text": "Answer B1", "model": "m-b"}]
    assert item.num_responses == 2
    assert item.metadata == {"category": "math"}
    assert item.split == "eval"


def test_chat_prompt_and_unknown_columns_kept_as_metadata(project: Project) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Capital of France?"},
    ]
    row = {"id": "c1", "prompt": messages, "response_a": "Paris", "response_b": "Lyon", "source": "forum"}
    import_items(project=project, fileobj=jsonl([row]))
    item = Item.objects.get(external_id="c1")
    assert item.prompt_messages == messages
    assert item.prompt.endswith("User: Capital of France?")
    assert item.metadata == {"source": "forum"}


def test_responses_list_into_a_ranking_project(make_project, curator) -> None:
    project = make_project("rank", schema={"ranking": {"k": 3}}, curator=curator)
    row = {
        "id": "k1",
        "prompt": "Sort these",
        "responses": [{"text": "one", "model": "x"}, "two", {"text": "three"}],
        "ranking": [2, 1, 3],
        "annotator": "expert-7",
    }
    result = import_items(project=project, fileobj=jsonl([row]))
    assert (result.items_created, result.judgments_created) == (1, 1)
    item = Item.objects.get(external_id="k1")
    assert [r["text"] for r in item.responses] == ["one", "two", "three"]
    judgment = item.judgments.get()
    assert judgment.labeler.name == "expert-7" and judgment.labeler.kind == "imported"
    assert judgment.payload["ranking"] == [2, 1, 3]


def test_labels_carried_in_the_file_become_judgments(make_project, curator) -> None:
    project = make_project("fg", schema=RUBRIC_SCHEMA, curator=curator)
    rows = [
        pair_row(
            1,
            judgments=[
                {
                    "annotator": "ann-1",
                    "pairwise": {"choice": "A", "strength": 2},
                    "rubric": [{"helpfulness": 5}, {"helpfulness": 2}],
                    "spans": [{"response": 1, "start": 0, "end": 6, "category": "factual"}],
                },
                {
                    "annotator": "ann-2",
                    "pairwise": {"choice": "tie", "strength": 0},
                    "rubric": [{"helpfulness": 3}, {"helpfulness": 3}],
                },
            ],
        )
    ]
    result = import_items(project=project, fileobj=jsonl(rows))
    assert result.judgments_created == 2
    by_name = {j.labeler.name: j.payload for j in Judgment.objects.select_related("labeler")}
    assert by_name["ann-1"]["pairwise"] == {"choice": "A", "strength": 2}
    assert by_name["ann-1"]["spans"] == [{"response": 1, "start": 0, "end": 6, "category": "factual", "note": ""}]
    assert by_name["ann-2"]["pairwise"] == {"choice": "tie", "strength": 0}


def test_csv_with_multiline_cells_and_metadata_columns(project: Project) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "prompt", "response_a", "response_b", "meta.category", "label"])
    writer.writerow(["c1", "Line one\nline two", "A, with comma", 'B "quoted"', "coding", "B"])
    writer.writerow(["c2", "P2", "a2", "b2", "", ""])
    result = import_items(project=project, fileobj=io.BytesIO(buf.getvalue().encode()))
    assert (result.format, result.items_created, result.judgments_created) == ("csv", 2, 1)
    c1 = Item.objects.get(external_id="c1")
    assert c1.prompt == "Line one\nline two"
    assert c1.responses[1]["text"] == 'B "quoted"'
    assert c1.metadata == {"category": "coding"}
    assert c1.judgments.get().payload["pairwise"] == {"choice": "B", "strength": 1}


def test_parquet_and_gzip_and_json_array_are_detected_from_content(project: Project) -> None:
    table = pa.Table.from_pylist([pair_row(1), pair_row(2)])
    buf = io.BytesIO()
    pq.write_table(table, buf)
    buf.seek(0)
    assert import_items(project=project, fileobj=buf).format == "parquet"
    gz = io.BytesIO(gzip.compress(jsonl([pair_row(3)]).getvalue()))
    assert import_items(project=project, fileobj=gz).format == "jsonl"
    arr = io.BytesIO(json.dumps([pair_row(4)]).encode())
    assert import_items(project=project, fileobj=arr).format == "json"
    assert Item.objects.filter(project=project).count() == 4


def test_forced_format_overrides_detection(project: Project) -> None:
    with pytest.raises(ImportRefused, match="not a readable Parquet file"):
        import_items(project=project, fileobj=jsonl([pair_row(1)]), fmt="parquet")
    with pytest.raises(ImportRefused, match="the file holds no rows"):
        import_items(project=project, fileobj=jsonl([pair_row(1)]), fmt="csv")  # one line = a CSV header


def test_trl_prompt_chosen_rejected_rows_randomize_position(project: Project) -> None:
    rows = [{"prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40)]
    import_items(project=project, fileobj=jsonl(rows))
    sides = set()
    for j in Judgment.objects.select_related("item"):
        choice = j.payload["pairwise"]["choice"]
        chosen = j.item.responses[0 if choice == "A" else 1]["text"]
        assert chosen.startswith("good")
        sides.add(choice)
    assert sides == {"A", "B"}, "the preferred response must not always sit on one side"


def test_reimporting_the_same_ids_changes_nothing(project: Project) -> None:
    rows = [pair_row(i, label="A") for i in range(30)]
    first = import_items(project=project, fileobj=jsonl(rows), batch_size=7)
    before = _snapshot(project)
    item = Item.objects.get(external_id="r3")
    changed = [pair_row(3, prompt="Changed?", label="B"), *(r for r in rows if r["id"] != "r3")]
    second = import_items(project=project, fileobj=jsonl(changed), batch_size=7)
    assert (first.items_created, first.judgments_created) == (30, 30)
    assert (second.items_created, second.items_existing, second.judgments_created) == (0, 30, 0)
    assert _snapshot(project) == before
    item.refresh_from_db()
    assert item.prompt == "Question 3?"


def test_rows_without_ids_get_a_content_id_so_reimport_is_idempotent(project: Project) -> None:
    rows = [{"prompt": "same", "response_a": "x", "response_b": "y"}]
    import_items(project=project, fileobj=jsonl(rows))
    import_items(project=project, fileobj=jsonl(rows))
    assert Item.objects.filter(project=project).count() == 1
    assert Item.objects.get().external_id.startswith("sha256:")


def test_a_bad_row_in_the_middle_refuses_the_whole_file(project: Project) -> None:
    import_items(project=project, fileobj=jsonl([pair_row(1000)]))
    before = _snapshot(project)
    lines = [json.dumps(pair_row(i, label="A")) for i in range(60)]
    lines[36] = '{"id": "broken", "prompt": "x", "response_a": "y"'  # line 37: truncated JSON
    buf = io.BytesIO(("\n".join(lines) + "\n").encode())
    with pytest.raises(ImportRefused) as refused:
        import_items(project=project, fileobj=buf, batch_size=10)  # batches before line 37 were written
    assert [str(e) for e in refused.value.errors] == ["line 37: invalid JSON (Expecting ',' delimiter at column 50)"]
    assert _snapshot(project) == before


def test_every_bad_row_is_reported_with_its_line_and_reason(project: Project) -> None:
    rows = [
        pair_row(1),
        {"id": "no-b", "prompt": "p", "response_a": "a"},
        pair_row(3, label="C"),
        {"id": "three", "prompt": "p", "responses": ["a", "b", "c"]},
        pair_row(5, metadata="oops"),
        ["not", "an", "object"],
        pair_row(7, label="A", strength=9),
        {"id": "", "prompt": " ", "response_a": "a", "response_b": "b"},
    ]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    with pytest.raises(ImportRefused) as refused:
        import_items(project=project, fileobj=io.BytesIO(body))
    assert [str(e) for e in refused.value.errors] == [
        "line 2: response_a and response_b must both be given",
        "line 3: label must be A, B or tie, got 'C'",
        "line 4: a pairwise project takes exactly 2 responses per item, got 3",
        "line 5: metadata must be a JSON object",
        "line 6: each line must be a JSON object",
        "line 7: label by 'imported': strength must be between 1 and 2",
        "line 8: prompt is empty",
    ]
    assert Item.objects.filter(project=project).count() == 0


def test_csv_errors_name_the_physical_line_where_the_row_starts(project: Project) -> None:
    body = 'id,prompt,response_a,response_b\nr1,"two\nlines",a,b\nr2,p,a\n'
    with pytest.raises(ImportRefused) as refused:
        import_items(project=project, fileobj=io.BytesIO(body.encode()))
    assert [str(e) for e in refused.value.errors] == ["line 4: expected 4 columns, found 3"]


def test_files_that_are_not_text_or_are_empty_are_refused(project: Project) -> None:
    with pytest.raises(ImportRefused, match="not valid UTF-8"):
        import_items(project=project, fileobj=io.BytesIO(b'{"id": "1", "prompt": "\xff\xfe"}\n'))
    with pytest.raises(ImportRefused, match="empty"):
        import_items(project=project, fileobj=io.BytesIO(b"  \n"))
    with pytest.raises(ImportRefused, match="truncated or corrupt"):
        import_items(project=project, fileobj=io.BytesIO(gzip.compress(jsonl([pair_row(1)]).getvalue())[:-12]))
    assert Item.objects.filter(project=project).count() == 0


def test_labels_need_a_matching_question_in_the_schema(make_project, curator) -> None:
    project = make_project("rub", schema={"rubric": {"aspects": [{"name": "helpfulness"}]}}, curator=curator)
    with pytest.raises(ImportRefused, match="line 1: label by 'imported': this project has no pairwise question"):
        import_items(project=project, fileobj=jsonl([pair_row(1, label="A")]))


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [
        (
            "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: Knock knock.",
            "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: No.",
            ("\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?", "Knock knock.", "No."),
        ),
        (  # responses share a start that itself holds a turn marker
            "\n\nHuman: Q\n\nAssistant: Human: so\n\nAssistant: yes",
            "\n\nHuman: Q\n\nAssistant: Human: so\n\nAssistant: no",
            ("\n\nHuman: Q", "Human: so\n\nAssistant: yes", "Human: so\n\nAssistant: no"),
        ),
        (  # one response continues the dialogue with a Human turn of its own
            "\n\nHuman: Q\n\nAssistant: A1\n\nHuman: more\n\nAssistant: A2",
            "\n\nHuman: Q\n\nAssistant: B",
            ("\n\nHuman: Q", "A1\n\nHuman: more\n\nAssistant: A2", "B"),
        ),
        (  # identical start of the final turn
            "\n\nHuman: Q\n\nAssistant: Sure, here",
            "\n\nHuman: Q\n\nAssistant: Sure, no",
            ("\n\nHuman: Q", "Sure, here", "Sure, no"),
        ),
    ],
)
def test_hh_dialogues_split_into_prompt_and_final_assistant_turns(chosen, rejected, expected) -> None:
    assert split_hh_dialogue(chosen, rejected) == expected


DEMANDING_SCHEMA = {
    "pairwise": {"strengths": ["better", "much better"], "justification": "required"},
    "rubric": {"aspects": [{"name": "helpfulness"}, {"name": "honesty"}], "required": True},
    "spans": {"categories": [{"name": "factual"}], "required": True},
}


def test_what_a_project_asks_of_annotators_does_not_refuse_imported_labels(make_project, curator) -> None:
    """A required justification, a required rubric and required spans are asked of annotators;
    a labeled dataset made without them is imported, its labels as given."""
    project = make_project("demanding", schema=DEMANDING_SCHEMA, curator=curator)
    rows = [
        pair_row(1, label="A"),
        pair_row(2, label="tie", rubric=[{"helpfulness": 4}, {}]),
        pair_row(3, judgments=[{"annotator": "ann-1", "pairwise": {"choice": "B", "strength": 2}}]),
        {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."},
        pair_row(5, gold_answer={"pairwise": {"choice": "A", "strength": 1}}),
    ]
    result = import_items(project=project, fileobj=jsonl(rows))
    assert (result.items_created, result.judgments_created) == (5, 4)
    payloads = {j.item.external_id: j.payload for j in Judgment.objects.select_related("item")}
    assert payloads["r1"] == {"pairwise": {"choice": "A", "strength": 1}, "spans": [], "justification": ""}
    assert payloads["r2"]["rubric"] == [{"helpfulness": 4}, {}]
    assert Item.objects.get(external_id="r5").gold_answer["pairwise"] == {"choice": "A", "strength": 1}
    # Annotators are still asked for all of it.
    texts = ["Answer A1", "Answer B1"]
    with pytest.raises(PayloadError, match="a justification is required"):
        project.judgment_schema.validate_payload(payloads["r1"], texts)


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ({"label": "A", "strength": 3}, "strength must be between 1 and 2"),
        ({"label": "A", "rubric": [{"helpfulness": 9}, {}]}, "helpfulness for response 0 must be between 1 and 5"),
        ({"label": "A", "rubric": [{"tone": 3}, {}]}, "unknown rubric aspect(s) for response 0: ['tone']"),
        ({"label": "A", "rubric": [{"helpfulness": 3}]}, "rubric ratings are given per response: expected 2, got 1"),
        (
            {"label": "A", "spans": [{"response": 0, "start": 0, "end": 99, "category": "factual"}]},
            "span 0..99 is not inside response 0 (length 9)",
        ),
        (
            {"label": "A", "spans": [{"response": 0, "start": 0, "end": 3, "category": "style"}]},
            "unknown span category 'style'",
        ),
        ({"rubric": [{"helpfulness": 3}, {"honesty": 2}]}, "a pairwise choice is required"),
    ],
)
def test_imported_labels_are_still_checked_for_consistency(make_project, curator, label, message) -> None:
    project = make_project("demanding", schema=DEMANDING_SCHEMA, curator=curator)
    with pytest.raises(ImportRefused) as refused:
        import_items(project=project, fileobj=jsonl([pair_row(1, **label)]))
    assert [str(e) for e in refused.value.errors] == [f"line 1: label by 'imported': {message}"]
    assert not Item.objects.filter(project=project).exists()


def test_a_rubric_only_project_still_needs_the_rubric_of_an_imported_label(make_project, curator) -> None:
    project = make_project("rubric", schema={"rubric": DEMANDING_SCHEMA["rubric"]}, curator=curator)
    row = {"id": "k1", "prompt": "p", "responses": ["one"], "rubric": [{"honesty": 2}]}
    assert import_items(project=project, fileobj=jsonl([row])).judgments_created == 1
    bare = {"id": "k2", "prompt": "p", "responses": ["one"], "judgments": [{"annotator": "x"}]}
    with pytest.raises(ImportRefused, match="line 1: label by 'x': rubric ratings are required"):
        import_items(project=project, fileobj=jsonl([bare]))
