"""The export's output, pinned: a generated project exported with every format must give the same
bytes as when these digests were taken (JSONL, Parquet, the card, SHA256SUMS and the zip).

The project is fully determined: fixed labeler ids (pseudonyms derive from them), fixed judgment
uuids and times, a fixed cutoff and secret key. Its texts go through every JSON escape (quotes,
backslashes, newlines, tabs, other control characters, non-ASCII), it has chat and plain
prompts, human, imported and AI labelers (AI votes weighted by confidence), dropped, flipped and
flagged items, ties, rubric ratings with gaps and spans; the raw files are large enough for
several Parquet row groups. Rebuilding the export for speed must keep every byte; the Parquet
digests depend on the pinned pyarrow version (requirements.txt).

`PREFLOOP_GOLDEN_PRINT=1` prints the digests of the current code instead of comparing."""

from __future__ import annotations

import hashlib
import os
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.contrib.auth import get_user_model

from annotation.models import Assignment, Item, Judgment, Labeler, Project
from curation.consensus import pairwise_consensus
from curation.export import ExportFilters, build_export, bundle_export
from curation.export.build import bulk_pairwise_consensus
from curation.export.deflate import deflated_files
from curation.export.query import JudgmentColumns
from curation.models import CurationAction

FULL = {
    "pairwise": {"strengths": ["better", "much better", "far better"], "allow_tie": True},
    "rubric": {"aspects": [{"name": "helpfulness"}, {"name": "prompt"}], "required": False},
    "spans": {"categories": [{"name": "factual"}, {"name": "style"}]},
}
RANKING = {"ranking": {"k": 3}, "rubric": {"aspects": [{"name": "clarity"}], "required": False}}
CUTOFF = datetime(2099, 1, 1, tzinfo=UTC)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
WORDS = ["alpha", "beta", "gamma", "ünï", "—", 'say "hi"', "back\\slash", "tab\there", "line\nbreak", "\x01ctl"]
WORDS += ["naïve", "日本語", "emoji 🙂", "plain", "text", "more", "words", "to", "make", "it", "long", "enough"]


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _labelers(project: Project, base: int) -> list[Labeler]:
    out = []
    for i in range(3):
        user = get_user_model().objects.create(username=f"{project.slug}-human-{i}")
        out.append(Labeler.objects.create(id=base + i, kind=Labeler.Kind.HUMAN, user=user, name=f"h{i}"))
    for i in range(4):
        out.append(Labeler.objects.create(id=base + 3 + i, kind=Labeler.Kind.IMPORTED, project=project, name=f"imp{i}"))
    out.append(
        Labeler.objects.create(
            id=base + 7, kind=Labeler.Kind.LLM, project=project, name="judge", config={"model": "m-judge"}
        )
    )
    return out


def _payload(rng: random.Random, schema: dict[str, Any], n: int, texts: list[str]) -> dict[str, Any]:
    p: dict[str, Any] = {}
    if "pairwise" in schema:
        choice = rng.choice(["A", "A", "B", "tie"]) if rng.random() > 0.03 else "bogus"
        p["pairwise"] = {"choice": choice, "strength": 0 if choice == "tie" else rng.randint(1, 3)}
    if "ranking" in schema:
        ranks = list(range(1, n + 1))
        rng.shuffle(ranks)
        if rng.random() < 0.1:
            ranks[0] = ranks[1]  # a tie
        p["ranking"] = ranks if rng.random() > 0.05 else ranks[:-1]  # a few of the wrong length
    if "rubric" in schema and rng.random() < 0.8:
        aspects = [a["name"] for a in schema["rubric"]["aspects"]]
        p["rubric"] = [
            {a: rng.randint(1, 5) for a in aspects if rng.random() < 0.85} if rng.random() < 0.9 else None
            for _ in range(n)
        ]
    if "spans" in schema and rng.random() < 0.5:
        spans = []
        for _ in range(rng.randint(1, 3)):
            r = rng.randrange(n)
            start = rng.randrange(max(1, len(texts[r])))
            cat = rng.choice(["factual", "style"])
            spans.append({"response": r, "start": start, "end": min(len(texts[r]), start + 5), "category": cat})
        p["spans"] = spans
    if rng.random() < 0.7:
        p["justification"] = _text(rng, 0, 12)
    return p


def _generate(project: Project, schema: dict[str, Any], n_items: int, responses: int, seed: int, base: int) -> None:
    rng = random.Random(seed)
    labelers = _labelers(project, base)
    annotator = get_user_model().objects.create(username=f"{project.slug}-flagger")
    items = []
    for i in range(n_items):
        texts = [_text(rng, 1, 40) for _ in range(responses)]
        chat = rng.random() < 0.3 if "ranking" in schema else False
        prompt = _text(rng, 1, 30)
        items.append(
            Item(
                project=project,
                external_id=f"it-{i:05d}" if i % 7 else f'ït {i} "q"',
                prompt=prompt,
                prompt_messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": "ok"}]
                if chat
                else None,
                responses=[
                    {"text": t, "model": rng.choice(["m-large", "m-small", ""])} if rng.random() > 0.1 else {"text": t}
                    for t in texts
                ],
                num_responses=responses,
                split="eval" if rng.random() < 0.1 else "train",
            )
        )
    Item.objects.bulk_create(items)
    judgments: list[Judgment] = []
    times: list[datetime] = []
    for k, item in enumerate(items):
        if rng.random() < 0.05:
            continue  # unjudged
        texts = [r["text"] for r in item.responses]
        for labeler in rng.sample(labelers, rng.randint(1, 5)):
            judgments.append(
                Judgment(
                    item=item,
                    labeler=labeler,
                    payload=_payload(rng, schema, responses, texts),
                    schema_version=1,
                    guidelines_version=rng.choice([1, None]),
                    response_order=rng.sample(range(responses), responses) if rng.random() < 0.8 else None,
                    time_spent_ms=rng.randint(500, 90_000) if rng.random() < 0.9 else None,
                    confidence=round(rng.random(), 3) if labeler.kind == "llm" and rng.random() < 0.8 else None,
                    uuid=uuid.UUID(int=rng.getrandbits(128)),
                )
            )
            times.append(T0 + timedelta(seconds=k * 7 + len(judgments) % 5, microseconds=rng.randint(0, 999)))
        roll = rng.random()
        if roll < 0.04:
            CurationAction.objects.create(project=project, item=item, action="drop")
        elif roll < 0.1:
            CurationAction.objects.create(project=project, item=item, action="flip")
        elif roll < 0.12:
            Assignment.objects.create(
                item=item,
                annotator=annotator,
                state="skipped",
                response_order=list(range(responses)),
                leased_at=T0,
                expires_at=T0 + timedelta(minutes=15),
                finished_at=T0,
                flagged=True,
            )
    Judgment.objects.bulk_create(judgments)
    for j, when in zip(judgments, times, strict=True):  # auto_now_add wrote the time of the test
        j.created_at = when
    Judgment.objects.bulk_update(judgments, ["created_at"], batch_size=2_000)


def _export(project: Project, formats: list[str], out: Path, **filters: Any) -> dict[str, str]:
    result = build_export(
        project=project,
        filters=ExportFilters.parse(filters),
        formats=formats,
        cutoff=CUTOFF,
        out_dir=out,
        card={"code": "golden", "license": "cc-by-4.0", "source": ""},
        chunk_items=97,
    )
    jsonl = sorted(f["name"] for f in result.files if f["kind"] == "jsonl")
    assert sorted(deflated_files(out)) == jsonl  # deflated during the pass: the bundle copies them
    bundle_export(out, "golden", CUTOFF)
    assert not (out / ".deflated").exists()
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def _check(name: str, digests: dict[str, str], expected: dict[str, str]) -> None:
    if os.environ.get("PREFLOOP_GOLDEN_PRINT"):
        print(f"\n{name} = {{")
        for k, v in digests.items():
            print(f"    {k!r}: {v!r},")
        print("}")
        return
    assert digests == expected


@pytest.fixture(autouse=True)
def _fixed_secret(settings: Any) -> None:
    settings.SECRET_KEY = "golden-export-secret-key-not-for-production-use-0123456789"


PAIRWISE_ALL = {
    "README.md": "882cd51da9e3cd72",
    "SHA256SUMS": "6462ba0d569430e4",
    "golden.zip": "07819900f6ca3454",
    "pairs/test.jsonl": "0241f3bf2bd8e8c5",
    "pairs/test.parquet": "128968eb6f1eb02c",
    "pairs/train.jsonl": "6a8aaf9cead47238",
    "pairs/train.parquet": "8f158355a8d1d1ba",
    "pairs_plain/test.jsonl": "a20d35b49fa5d048",
    "pairs_plain/test.parquet": "b24ae6430e67fe84",
    "pairs_plain/train.jsonl": "00242a4450085233",
    "pairs_plain/train.parquet": "74f3bf340e4c0cd5",
    "raw/eval.jsonl": "7183014e4c64a546",
    "raw/eval.parquet": "a4afcfd1df123182",
    "raw/train.jsonl": "cf08a8ab4b46193f",
    "raw/train.parquet": "432959896f4a0086",
    "rubric/eval.jsonl": "895c475ce0679b2e",
    "rubric/eval.parquet": "9d7e82ac62a95391",
    "rubric/train.jsonl": "354a2e39cb7b54f3",
    "rubric/train.parquet": "0c5a96e73d5ac9d3",
    "spans/eval.jsonl": "976333c5ba732ccc",
    "spans/eval.parquet": "ce63be0fa5b133a8",
    "spans/train.jsonl": "af9cc76102f6461a",
    "spans/train.parquet": "063989f81e8ebaef",
}
PAIRWISE_HUMAN = {
    "README.md": "bc8a70559576ac33",
    "SHA256SUMS": "40960987e3a26d22",
    "golden.zip": "2698482d619c6a37",
    "pairs/test.jsonl": "b36c6159297ba7c9",
    "pairs/test.parquet": "e303c2ddcb91127a",
    "pairs/train.jsonl": "3576b39a483f4de2",
    "pairs/train.parquet": "58dccb729caca32f",
    "pairs_plain/test.jsonl": "c1a142ef30048de6",
    "pairs_plain/test.parquet": "1d283565a94ad78c",
    "pairs_plain/train.jsonl": "b08f16372ed1c46d",
    "pairs_plain/train.parquet": "d2d989c76fa59024",
    "raw/eval.jsonl": "b9a3b36bbad5d79f",
    "raw/eval.parquet": "0eaacfa6d9fbfd65",
    "raw/train.jsonl": "bbb62dae94608cfd",
    "raw/train.parquet": "b21e737cfd5f6601",
    "rubric/eval.jsonl": "47228b3819086a3d",
    "rubric/eval.parquet": "413890f9b592cff8",
    "rubric/train.jsonl": "7d9be3c7adda0a5d",
    "rubric/train.parquet": "f4dbe254a5db75ce",
    "spans/eval.jsonl": "1e8137278b8c4ad9",
    "spans/eval.parquet": "853dbae56cc71da8",
    "spans/train.jsonl": "1fc257946ef5ce24",
    "spans/train.parquet": "11a7eefb8a0e9775",
}
RANKING_ALL = {
    "README.md": "12784c460e54ba26",
    "SHA256SUMS": "f9f4318c362b5d3e",
    "golden.zip": "00618d0104c60602",
    "listwise/eval.jsonl": "1b6c6e905337e801",
    "listwise/eval.parquet": "aaac9f82a277cd5c",
    "listwise/train.jsonl": "b66c5d112c0a4352",
    "listwise/train.parquet": "a6235e1f228fbee7",
    "raw/eval.jsonl": "f5594469d13ebce7",
    "raw/eval.parquet": "6a9a56ae5a222e48",
    "raw/train.jsonl": "26318bd995211625",
    "raw/train.parquet": "7e1cd411705f4372",
    "rubric/eval.jsonl": "d036ed07b13351cb",
    "rubric/eval.parquet": "aee88d1add2ac480",
    "rubric/train.jsonl": "a2fbd29fa4574256",
    "rubric/train.parquet": "e20bf28b3899ba6e",
}


def test_pairwise_rubric_spans_export_is_unchanged(make_project: Any, tmp_path: Path) -> None:
    project = make_project("golden-pw", schema=FULL)
    _generate(project, FULL, 2_600, 2, seed=1, base=9_100_000)
    formats = ["pairs", "rubric", "spans", "raw"]
    _check("PAIRWISE_ALL", _export(project, formats, tmp_path / "all", label_source="all"), PAIRWISE_ALL)
    human = _export(
        project, formats, tmp_path / "human", label_source="consensus", min_agreement=0.6, exclude_flagged=False
    )
    _check("PAIRWISE_HUMAN", human, PAIRWISE_HUMAN)


def test_ranking_export_with_chat_prompts_is_unchanged(make_project: Any, tmp_path: Path) -> None:
    project = make_project("golden-rank", schema=RANKING)
    _generate(project, RANKING, 400, 3, seed=2, base=9_200_000)
    formats = ["listwise", "rubric", "raw"]
    _check("RANKING_ALL", _export(project, formats, tmp_path / "all", label_source="all"), RANKING_ALL)


def test_the_orm_path_of_the_embedded_defaults_writes_the_same_files(
    make_project: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """SQLite cannot run the export's one raw statement; its ORM path must give the same bytes."""
    from curation.export import query

    monkeypatch.setattr(query, "statements_apply", lambda: False)
    project = make_project("golden-rank", schema=RANKING)
    _generate(project, RANKING, 400, 3, seed=2, base=9_200_000)
    _check(
        "RANKING_ALL", _export(project, ["listwise", "rubric", "raw"], tmp_path / "r", label_source="all"), RANKING_ALL
    )
    project = make_project("golden-pw", schema=FULL)
    _generate(project, FULL, 2_600, 2, seed=1, base=9_100_000)
    formats = ["pairs", "rubric", "spans", "raw"]
    _check("PAIRWISE_ALL", _export(project, formats, tmp_path / "all", label_source="all"), PAIRWISE_ALL)


def test_bulk_pairwise_consensus_equals_the_one_item_rule() -> None:
    rng = random.Random(7)
    n_items, rows = 300, []
    for i in range(n_items):
        for _ in range(rng.randint(0, 6)):
            ai = rng.random() < 0.4
            rows.append(
                (
                    i,
                    2 if ai else rng.choice([0, 1]),  # source: human, imported, ai
                    rng.choice(["A", "B", "tie", "A", None, "bogus"]),
                    rng.choice([None, 1, 2, 3]),
                    rng.choice([None, round(rng.random(), 3), 0.5, 0.0]) if ai else None,
                    rng.random() < 0.8,
                )
            )
    n = len(rows)
    cols = JudgmentColumns(
        item=np.array([r[0] for r in rows], dtype=np.int64),
        source=np.array([r[1] for r in rows], dtype=np.int8),
        labeler_id=np.zeros(n, dtype=np.int64),
        kind=("human",) * n,
        uuid=("",) * n,
        choice=tuple(r[2] for r in rows),
        strength=tuple(r[3] for r in rows),
        justification=("",) * n,
        response_order=(None,) * n,
        time_spent_ms=(None,) * n,
        confidence=tuple(r[4] for r in rows),
        schema_version=(1,) * n,
        guidelines_version=(None,) * n,
        created_us=(0,) * n,
        created_json=("",) * n,
        payloads=None,
    )
    selected = np.array([r[5] for r in rows], dtype=bool)
    bulk = bulk_pairwise_consensus(cols, selected, n_items)
    for i in range(n_items):
        votes = [r for r in rows if r[0] == i and r[5] and r[2] in ("A", "B", "tie")]
        weights = [r[4] if r[1] == 2 and r[4] is not None else 1.0 for r in votes]
        expected = pairwise_consensus([(r[2], r[3] or 0) for r in votes], weights)
        assert bulk[i] == expected, i
    assert sum(1 for c in bulk if c.label in ("A", "B")) > 50  # the data exercises the rule
