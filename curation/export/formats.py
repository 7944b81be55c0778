"""The formats: each knows its Arrow schema, its card text, and turns a kept item into rows."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from curation.consensus import Consensus, rubric_consensus
from curation.export.context import Context, ExportItem
from curation.export.files import RowEncoder, _utf8, json_texts, quoted
from curation.export.query import SOURCE_ORDER

if TYPE_CHECKING:
    from curation.export.query import Page
from models_srv.engine import dialogue_prompt, strength_margin


def _message_type() -> pa.DataType:
    return pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


class Format:
    name = ""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.schema = pa.schema(self.fields())

    def fields(self) -> list[tuple[str, pa.DataType]]:
        raise NotImplementedError

    def rows(self, item: ExportItem) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def describe(self) -> str:
        return ""

    def split_of(self, item: ExportItem) -> str:
        """The split (file) the item's rows go to: the project's own split."""
        return item.split

    def common(self, item: ExportItem) -> dict[str, Any]:
        return {
            "item_id": item.external_id,
            "split": self.split_of(item),
            "label_source": item.label_source,
            "curation": item.curation,
        }

    def prompt_type(self) -> pa.DataType:
        return _message_type() if self.ctx.chat else pa.string()

    def response_value(self, text: str) -> Any:
        return [{"role": "assistant", "content": text}] if self.ctx.chat else text


def parse_int_lists(texts: pa.Array, type_: pa.DataType) -> pa.Array:
    """JSON texts of integer lists (or `null`) as an Arrow list array, parsed by Arrow."""
    if not len(texts):
        return pa.array([], type=type_)
    lines = pc.binary_join_element_wise('{"v":', texts, "}\n", "")
    table = pajson.read_json(
        io.BytesIO(bytes(_utf8(lines))),
        parse_options=pajson.ParseOptions(explicit_schema=pa.schema([("v", type_)])),
    )
    return table.column("v").combine_chunks()


_COMMON = [("item_id", pa.string()), ("split", pa.string()), ("label_source", pa.string()), ("curation", pa.string())]


class Pairs(Format):
    """TRL's preference format, for its RewardTrainer (and DPO-style trainers) as written.

    - Split: `test` holds the items the app keeps out of training (`models_srv.data.held_out` with
      a training run's default seed and eval fraction), `train` the rest, so a model trained on
      `train` is measured on the same items as the app's reward models.
    - `margin`: what the app's Bradley-Terry objective asks of a pair of this strength
      (`models_srv.engine.strength_margin` with the default `margin_scale`): none at the first
      level. TRL subtracts a `margin` column from the reward difference whenever there is one.
    """

    name = "pairs"

    def split_of(self, item: ExportItem) -> str:
        return "test" if self.ctx.held_out(item) else "train"

    def prompt_value(self, item: ExportItem) -> Any:
        return item.prompt

    def fields(self) -> list[tuple[str, pa.DataType]]:
        t = self.prompt_type()
        return [
            ("prompt", t),
            ("chosen", t),
            ("rejected", t),
            ("margin", pa.float64()),
            ("strength", pa.float64()),
            ("agreement", pa.float64()),
            ("n_judgments", pa.int32()),
            ("chosen_model", pa.string()),
            ("rejected_model", pa.string()),
            *([("group", pa.int32())] if self.split_by_group else []),
            *_COMMON,
        ]

    @property
    def split_by_group(self) -> bool:
        return self.ctx.groups is not None and self.ctx.filters.group_mode == "split"

    def rows(self, item: ExportItem) -> Iterator[dict[str, Any]]:
        if not self.split_by_group:
            yield from self._rows(item, item.consensus, {})
            return
        for group, c in sorted((item.group_consensus or {}).items()):
            for row in self._rows(item, c, {"group": group}):
                if self.name == "pairs":
                    self.ctx.group_rows[str(group)] += 1
                yield row

    def _rows(self, item: ExportItem, c: Consensus | None, extra: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if c is None or c.label not in ("A", "B") or len(item.texts) != 2:
            if self.name == "pairs":  # pairs_plain leaves out the same items: counted once
                self.ctx.skipped["pairs:" + ("tie" if c is not None and c.label == "tie" else "undecided")] += 1
            return
        win = 0 if c.label == "A" else 1
        if item.curation == "flip":
            win = 1 - win
        lose = 1 - win
        yield {
            "prompt": self.prompt_value(item),
            "chosen": self.response_value(item.texts[win]),
            "rejected": self.response_value(item.texts[lose]),
            "margin": strength_margin(c.strength, self.ctx.margin_scale),
            "strength": c.strength,
            "agreement": c.agreement,
            "n_judgments": c.n,
            "chosen_model": item.models[win],
            "rejected_model": item.models[lose],
            **extra,
            **self.common(item),
        }

    def describe(self) -> str:
        return (
            "One row per pairwise item whose consensus prefers one response (ties and undecided items "
            "are left out). `prompt`/`chosen`/`rejected` follow TRL's preference format "
            "(conversational message lists when the project has chat prompts: a model with a chat "
            "template; `pairs_plain` has the same rows as plain text). " + _pairs_common(self.ctx) + _pairs_groups(self)
        )


def _pairs_common(ctx: Context) -> str:
    return (
        "`split` is `test` for the items Prefloop holds out of reward-model training (the project's "
        "eval split, and each item whose sha256 of `seed:item_id` falls under the eval fraction; "
        f"seed {ctx.eval_seed}, fraction {ctx.eval_fraction}, a training run's defaults), `train` for "
        "the rest. `strength` is the consensus's mean strength level of the winning votes (1 = the "
        "schema's first level); `margin` is the margin Prefloop's Bradley-Terry objective asks of a "
        f"pair of that strength, {ctx.margin_scale} per level above the first (so 0 at the first "
        "level); TRL's RewardTrainer subtracts it from the reward difference (remove the column for "
        "its plain loss). `agreement` is the weighted share of the winning label. Items with curation "
        "state `flip` have chosen and rejected swapped."
    )


def _pairs_groups(writer: Pairs) -> str:
    if not writer.split_by_group:
        return ""
    return (
        " Split by preference group: one row per item and group whose own consensus (its members' "
        "judgments only) prefers one response, `group` naming the group; `n_judgments` and "
        "`agreement` are the group's."
    )


class PairsPlain(Pairs):
    """The pairs as plain text, for a model without a chat template (TRL refuses message lists
    then): TRL joins `prompt + chosen` with nothing between, so `prompt` is
    `models_srv.engine.dialogue_prompt` and the joined text is what the app's default (top) mode
    reads."""

    name = "pairs_plain"

    def prompt_type(self) -> pa.DataType:
        return pa.string()

    def prompt_value(self, item: ExportItem) -> Any:
        return dialogue_prompt(item.prompt_text)

    def response_value(self, text: str) -> Any:
        return text

    def describe(self) -> str:
        return (
            "The rows of `pairs` as plain text, for a model without a chat template: `prompt` is the "
            "prompt (a chat prompt as its transcript, `User: ...` and `Assistant: ...` turns) followed "
            "by a blank line and `Assistant: `, so `prompt + chosen` (how TRL joins them) is the text "
            "Prefloop's default reward model reads. The other columns, the splits and `margin` are as "
            "in `pairs`." + _pairs_groups(self)
        )


class Listwise(Format):
    name = "listwise"

    def fields(self) -> list[tuple[str, pa.DataType]]:
        return [
            ("prompt", self.prompt_type()),
            ("responses", pa.list_(pa.string())),
            ("models", pa.list_(pa.string())),
            ("response_indexes", pa.list_(pa.int32())),
            ("mean_ranks", pa.list_(pa.float64())),
            ("kendall_w", pa.float64()),
            ("n_judgments", pa.int32()),
            *_COMMON,
        ]

    def rows(self, item: ExportItem) -> Iterator[dict[str, Any]]:
        if item.ranking is None or not item.ranking[0]:
            self.ctx.skipped["listwise:no_rankings"] += 1
            return
        means, w = item.ranking
        order = sorted(range(len(means)), key=lambda i: (means[i], i))
        if item.curation == "flip":
            order = sorted(range(len(means)), key=lambda i: (-means[i], i))
        n = sum(1 for j in item.judgments if j.payload.get("ranking"))
        yield {
            "prompt": item.prompt,
            "responses": [item.texts[i] for i in order],
            "models": [item.models[i] for i in order],
            "response_indexes": order,
            "mean_ranks": [means[i] for i in order],
            "kendall_w": w,
            "n_judgments": n,
            **self.common(item),
        }

    def describe(self) -> str:
        return (
            "One row per ranking item: `responses` best first by mean rank (1 = best; ties keep the "
            "stored order), `response_indexes` their stored positions, `kendall_w` the agreement of "
            "the rankings (Kendall's W, 1.0 for a single ranking). `flip` reverses the order."
        )


class Rubric(Format):
    name = "rubric"

    def __init__(self, ctx: Context) -> None:
        fixed = {"prompt", "response", "model", "response_index", "n_judgments", *[n for n, _ in _COMMON]}
        self.columns = {a: (f"aspect_{a}" if a in fixed else a) for a in ctx.aspects}
        super().__init__(ctx)

    def fields(self) -> list[tuple[str, pa.DataType]]:
        return [
            ("prompt", self.prompt_type()),
            ("response_index", pa.int32()),
            ("response", pa.string()),
            ("model", pa.string()),
            *[(col, pa.float64()) for col in self.columns.values()],
            ("n_judgments", pa.int32()),
            *_COMMON,
        ]

    def rows(self, item: ExportItem) -> Iterator[dict[str, Any]]:
        rated = [j.payload["rubric"] for j in item.judgments if isinstance(j.payload.get("rubric"), list)]
        if not rated:
            return
        for i, text in enumerate(item.texts):
            ratings = [r[i] for r in rated if i < len(r) and isinstance(r[i], dict)]
            means = rubric_consensus(ratings)
            yield {
                "prompt": item.prompt,
                "response_index": i,
                "response": text,
                "model": item.models[i],
                **{col: means.get(a) for a, col in self.columns.items()},
                "n_judgments": len(ratings),
                **self.common(item),
            }

    def describe(self) -> str:
        names = ", ".join(f"`{c}`" for c in self.columns.values())
        return (
            f"One row per response of an item with rubric ratings; one column per aspect ({names}) "
            "holding the mean score of the raters (null when nobody rated it)."
        )


class Spans(Format):
    name = "spans"

    def fields(self) -> list[tuple[str, pa.DataType]]:
        span = pa.struct(
            [("start", pa.int32()), ("end", pa.int32()), ("category", pa.string()), ("labeler", pa.string())]
        )
        return [
            ("prompt", self.prompt_type()),
            ("response_index", pa.int32()),
            ("response", pa.string()),
            ("model", pa.string()),
            ("spans", pa.list_(span)),
            ("n_judgments", pa.int32()),
            *_COMMON,
        ]

    def rows(self, item: ExportItem) -> Iterator[dict[str, Any]]:
        for i, text in enumerate(item.texts):
            marks = [
                {
                    "start": s["start"],
                    "end": s["end"],
                    "category": s["category"],
                    "labeler": self.ctx.pseudonym(j.labeler_id),
                }
                for j in item.judgments
                for s in j.payload.get("spans") or []
                if s.get("response") == i
            ]
            yield {
                "prompt": item.prompt,
                "response_index": i,
                "response": text,
                "model": item.models[i],
                "spans": marks,
                "n_judgments": len(item.judgments),
                **self.common(item),
            }

    def describe(self) -> str:
        cats = ", ".join(f"`{c}`" for c in self.ctx.categories)
        return (
            "One row per response of every exported item: its text and the span marks of all its "
            "judgments, `start`/`end` as character offsets (Unicode code points, end exclusive) into "
            f"`response`, `category` one of {cats}, `labeler` the pseudonymous annotator id. An empty "
            "list means the judges marked nothing in that response."
        )


class ColumnarFormat(Format):
    """A format that writes a page's judgments as Arrow columns (`columns`), not item by item."""

    def columns(self, page: Page, rows: np.ndarray, encoder: RowEncoder) -> tuple[list[pa.Array], list[pa.Array]]:
        raise NotImplementedError


class Raw(ColumnarFormat):
    name = "raw"

    def fields(self) -> list[tuple[str, pa.DataType]]:
        schema = self.ctx.schema
        out: list[tuple[str, pa.DataType]] = [
            ("judgment_id", pa.string()),
            ("prompt", self.prompt_type()),
            ("responses", pa.list_(pa.string())),
            ("models", pa.list_(pa.string())),
            ("labeler", pa.string()),
            ("labeler_kind", pa.string()),
            ("labeler_type", pa.string()),
        ]
        if schema.pairwise:
            out += [("choice", pa.string()), ("strength", pa.int32())]
        if schema.ranking:
            out += [("ranking", pa.list_(pa.int32()))]
        if schema.rubric:
            out += [("rubric", pa.list_(pa.struct([(a, pa.int32()) for a in self.ctx.aspects])))]
        if schema.spans:
            span = pa.struct(
                [("response", pa.int32()), ("start", pa.int32()), ("end", pa.int32()), ("category", pa.string())]
            )
            out += [("spans", pa.list_(span))]
        if self.ctx.groups is not None:
            out += [("group", pa.int32()), ("group_confidence", pa.float64())]
        out += [
            ("justification", pa.string()),
            ("response_order", pa.list_(pa.int32())),
            ("time_spent_ms", pa.int64()),
            ("confidence", pa.float64()),
            ("schema_version", pa.int32()),
            ("guidelines_version", pa.int32()),
            ("created_at", pa.timestamp("us", tz="UTC")),
            *_COMMON,
        ]
        return out

    def columns(self, page: Page, rows: np.ndarray, encoder: RowEncoder) -> tuple[list[pa.Array], list[pa.Array]]:
        """The rows of the judgments at `rows` (positions in the page's judgment columns, all of
        kept items), as the schema's Arrow arrays and their JSON texts: the judgment's own fields
        taken from the columns, the item's encoded once per item and repeated with `take`."""
        ctx, schema, jc = self.ctx, self.ctx.schema, page.judgments
        fields = {f.name: f.type for f in self.schema}
        out: dict[str, tuple[pa.Array, pa.Array]] = {}
        positions = pa.array(rows, type=pa.int64())

        def column(name: str, values: Sequence[Any], texts: pa.Array | None = None) -> None:
            array = pa.array(values, type=fields[name]).take(positions)
            out[name] = (array, texts.take(positions) if texts is not None else json_texts(array, encoder))

        # the item's fields, once per item
        item_of = jc.item[rows]
        owners, local = np.unique(item_of, return_inverse=True)
        at = pa.array(local, type=pa.int64())
        items = [page.items[i] for i in owners]
        per_item: dict[str, list[Any]] = {
            "prompt": [it.prompt for it in items],
            "responses": [it.texts for it in items],
            "models": [it.models for it in items],
            "item_id": [it.external_id for it in items],
            "split": [it.split for it in items],
            "label_source": [it.label_source for it in items],
            "curation": [it.curation for it in items],
        }
        for name, values in per_item.items():
            array = pa.array(values, type=fields[name])
            texts = pa.array([encoder.value(v) for v in values], type=pa.string())
            out[name] = (array.take(at), texts.take(at))

        column("judgment_id", jc.uuid, quoted(pa.array(jc.uuid, type=pa.string())))
        labelers, which = np.unique(jc.labeler_id[rows], return_inverse=True)
        names = pa.array([ctx.pseudonym(int(i)) for i in labelers], type=pa.string()).take(pa.array(which))
        out["labeler"] = (names, quoted(names))
        sources = pa.array(SOURCE_ORDER, type=pa.string()).take(pa.array(jc.source[rows].astype(np.int64)))
        out["labeler_kind"] = (sources, quoted(sources))
        column("labeler_type", jc.kind, quoted(pa.array(jc.kind, type=pa.string())))
        if schema.pairwise:
            column("choice", jc.choice)
            column("strength", jc.strength)
        if jc.payloads is not None:
            payloads = [jc.payloads[k] for k in rows]
            nested: dict[str, list[Any]] = {}
            if schema.ranking:
                nested["ranking"] = [p.get("ranking") for p in payloads]
            if schema.rubric:
                aspects = ctx.aspects
                nested["rubric"] = [
                    [{a: (r or {}).get(a) for a in aspects} for r in rub] if isinstance(rub, list) else None
                    for rub in (p.get("rubric") for p in payloads)
                ]
            if schema.spans:
                nested["spans"] = [
                    [
                        {"response": s["response"], "start": s["start"], "end": s["end"], "category": s["category"]}
                        for s in p.get("spans") or []
                    ]
                    for p in payloads
                ]
            for name, vals in nested.items():
                array = pa.array(vals, type=fields[name])
                out[name] = (array, pa.array([encoder.value(v) for v in vals], type=pa.string()))
        if ctx.groups is not None:
            g, c = ctx.group_columns(np.asarray(jc.labeler_id)[rows])
            group = pa.array(g, type=pa.int32(), mask=g == 0)
            confidence = pa.array(c, type=pa.float64(), mask=np.isnan(c))
            out["group"] = (group, json_texts(group, encoder))
            out["group_confidence"] = (confidence, json_texts(confidence, encoder))
        column("justification", jc.justification)
        order_texts = pc.fill_null(pa.array(jc.response_order, type=pa.string()).take(positions), "null")
        out["response_order"] = (parse_int_lists(order_texts, fields["response_order"]), order_texts)
        column("time_spent_ms", jc.time_spent_ms)
        column("confidence", jc.confidence)
        column("schema_version", jc.schema_version)
        column("guidelines_version", jc.guidelines_version)
        created = pa.array(jc.created_us, type=pa.int64()).take(positions).cast(fields["created_at"])
        out["created_at"] = (created, pa.array(jc.created_json, type=pa.string()).take(positions))
        names_in_order = self.schema.names
        return [out[n][0] for n in names_in_order], [out[n][1] for n in names_in_order]

    def describe(self) -> str:
        return (
            "One row per judgment of the exported items (the label source decides which), for "
            "pluralistic reward models: `labeler` is a pseudonymous id (HMAC of the labeler with the "
            "server's secret and the project slug: stable across exports of this project, not "
            "reversible without the secret), `labeler_kind` human (an annotator here), imported or "
            "ai, `labeler_type` the kind of labeler (human, imported, llm, reward_model, "
            "density_ratio). Payload fields use the stored response order; `response_order` is "
            "the order the responses were shown in."
            + (
                " `group` is the labeler's preference group in the group source (null: a labeler "
                "the model neither trained on nor placed), `group_confidence` the model's posterior of that group."
                if self.ctx.groups is not None
                else ""
            )
        )


WRITERS: dict[str, tuple[type[Format], ...]] = {  # format -> its configurations
    "pairs": (Pairs, PairsPlain),
    "listwise": (Listwise,),
    "rubric": (Rubric,),
    "spans": (Spans,),
    "raw": (Raw,),
}
