"""The dataset card (README.md, a Hugging Face dataset card) and SHA256SUMS."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC
from pathlib import Path
from typing import Any

import yaml

from curation.export.context import Context
from curation.export.files import sha256_file
from curation.export.formats import Format


def write_card(
    out_dir: Path,
    ctx: Context,
    writers: Mapping[str, Format],
    files: list[dict[str, Any]],
    counts: dict[str, Any],
    card: dict[str, Any],
) -> None:
    """README.md, a Hugging Face dataset card: one `configs` entry per configuration (a format, or
    `pairs_plain`) with its files per split, so `load_dataset(folder, name)` reads it as written."""
    project = ctx.project
    configs: list[dict[str, Any]] = []  # YAML front matter
    for fmt in writers:
        parquet = [f for f in files if f["format"] == fmt and f["kind"] == "parquet"]
        if parquet:
            configs.append(
                {
                    "config_name": fmt,
                    "data_files": [{"split": f["split"], "path": f["name"]} for f in parquet],
                    **({"default": True} if not configs else {}),
                }
            )
    front = {
        "license": card.get("license") or "unknown",
        "pretty_name": f"{project.name} (Prefloop export)",
        "tags": ["prefloop", "preference", "rlhf"],
        "configs": configs,
    }
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [f"# {project.name}", ""]
    if project.description:
        lines += [project.description.strip(), ""]
    lines += [
        f"Exported from the Prefloop project `{project.slug}`.",
        "",
        "| | |",
        "|---|---|",
        f"| snapshot | `{card.get('code', '')}` |",
        f"| reproduces | `{card['source']}` |" if card.get("source") else "| reproduces | - |",
        f"| cutoff | {ctx.cutoff.astimezone(UTC).isoformat()} (judgments and curation actions up to here) |",
        f"| license | {front['license']} |",
        f"| judgment schema version | {ctx.schema_version} |",
        f"| guidelines version | {ctx.guidelines_version} |",
        f"| label source | {ctx.filters.label_source} |",
        f"| prompts | {'chat messages' if ctx.chat else 'plain text'} |",
        "",
        "## Filters",
        "",
        "```json",
        json.dumps(ctx.filters.to_json(), indent=2, sort_keys=True),
        "```",
        "",
        "## Counts",
        "",
        f"{counts['items_exported']} of {counts['items_considered']} judged items exported, "
        f"{counts['judgments']} judgments.",
        "",
        "| format | " + " | ".join(sorted({s for r in counts["rows"].values() for s in r}) or ["-"]) + " |",
    ]
    splits = sorted({s for r in counts["rows"].values() for s in r})
    lines.append("|---|" + "---|" * max(1, len(splits)))
    for fmt in writers:
        lines.append(f"| {fmt} | " + " | ".join(str(counts["rows"][fmt].get(s, 0)) for s in splits or ["-"]) + " |")
    lines.append("")
    if counts["excluded"]:
        lines += ["Items left out: " + ", ".join(f"{k} {v}" for k, v in counts["excluded"].items()) + ".", ""]
    if counts["skipped_rows"]:
        lines += ["Rows not written: " + ", ".join(f"{k} {v}" for k, v in counts["skipped_rows"].items()) + ".", ""]
    if counts.get("groups"):
        lines += _groups_section(counts["groups"])
    lines += ["## Label sources", ""]
    lines += [f"- {k}: {v} judgments" for k, v in counts["judgments_by_labeler_type"].items()] or ["- none"]
    lines += [f"- items labeled by {k}: {v}" for k, v in counts["items_by_label_source"].items()]
    lines.append(f"- distinct human annotators: {counts['human_annotators']} (pseudonymous in the files)")
    if counts.get("imported_annotators"):
        lines.append(f"- distinct annotators named in imported labels: {counts['imported_annotators']} (pseudonymous)")
    lines += [
        f"- AI labeler `{a['name']}` ({a['type']}{', ' + a['model'] if a['model'] else ''}, "
        f"version {a['version']}): {a['judgments']} judgments"
        for a in counts["ai_labelers"]
    ]
    lines += ["", "## Agreement", ""]
    agreement = counts["agreement"]
    if "pairwise" in agreement:
        a = agreement["pairwise"]
        lines.append(
            f"- pairwise choice (A / B / tie), over {a['units']} items with two or more judgments: "
            f"percent agreement {_fmt(a['percent_agreement'])}, Krippendorff's alpha (nominal) "
            f"{_fmt(a['krippendorff_alpha'])}"
        )
    if "ranking" in agreement:
        a = agreement["ranking"]
        lines.append(f"- rankings: mean Kendall's W {_fmt(a['mean_kendall_w'])} over {a['items']} items")
    for aspect, a in agreement.get("rubric", {}).items():
        lines.append(
            f"- rubric `{aspect}`, over {a['units']} rated responses: exact agreement "
            f"{_fmt(a['percent_agreement'])}, Krippendorff's alpha (interval) {_fmt(a['krippendorff_alpha'])}"
        )
    if not agreement:
        lines.append("- n/a")
    lines += ["", "## Schema", ""]
    if ctx.aspects:
        lines += ["Rubric aspects: " + ", ".join(f"`{a}`" for a in ctx.aspects) + ".", ""]
    if ctx.categories:
        lines += [
            "Span categories: "
            + ", ".join(f"`{c}` ({counts['span_categories'].get(c, 0)})" for c in ctx.categories)
            + ".",
            "",
        ]
    for fmt, writer in writers.items():
        lines += [f"### {fmt}", "", writer.describe(), "", "| column | type |", "|---|---|"]
        lines += [f"| `{f.name}` | `{f.type}` |" for f in writer.schema]
        lines.append("")
    lines += ["## Files", "", "| file | rows | bytes | sha256 |", "|---|---|---|---|"]
    lines += [f"| `{f['name']}` | {f['rows']} | {f['bytes']} | `{f['sha256']}` |" for f in files]
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
    ]
    for c in configs:
        lines.append(f'{c["config_name"]} = load_dataset("path/to/this/folder", "{c["config_name"]}")')
    if configs:
        lines += ["", "# or file by file"]
    for c in configs:
        data_files = {d["split"]: d["path"] for d in c["data_files"]}
        lines.append(f'{c["config_name"]} = load_dataset("parquet", data_files={data_files!r})')
    lines += ["```", ""]
    pairs = next((c for c in configs if c["config_name"] == "pairs_plain"), None)
    if pairs:
        test = any(d["split"] == "test" for d in pairs["data_files"])
        lines += [
            "## Training a reward model with TRL",
            "",
            "`pairs_plain` suits any model; `pairs`, when the prompts are chat messages, one whose tokenizer "
            "has a chat template. TRL appends the tokenizer's end-of-sequence token to plain text: a "
            'BERT-like tokenizer has none, so give it one (`eos_token="[SEP]"`).',
            "",
            "```python",
            "from datasets import load_dataset",
            "from trl import RewardConfig, RewardTrainer",
            "",
            'data = load_dataset("path/to/this/folder", "pairs_plain")',
            "trainer = RewardTrainer(",
            '    model="sentence-transformers/all-MiniLM-L6-v2",',
            '    args=RewardConfig(output_dir="reward-model", eos_token="[SEP]"),',
            '    train_dataset=data["train"],',
            *(['    eval_dataset=data["test"],  # the items Prefloop holds out'] if test else []),
            ")",
            "trainer.train()",
            "```",
            "",
        ]
    lines += ["`SHA256SUMS` lists the checksum of every file (`sha256sum -c SHA256SUMS`).", ""]
    (out_dir / "README.md").write_text("\n".join(lines), encoding="utf-8")
    sums = [(f["sha256"], f["name"]) for f in files] + [(sha256_file(out_dir / "README.md"), "README.md")]
    (out_dir / "SHA256SUMS").write_text("".join(f"{s}  {n}\n" for s, n in sorted(sums, key=lambda x: x[1])))


GROUP_MODES = {
    "pooled": "all groups pooled (one consensus per item, as without a group source)",
    "one": "one group only: the judgments of group {group}'s members",
    "split": "one consensus per group: a `pairs` row per item and group, with its `group`",
    "weighted": "every judgment weighted by its annotator's group confidence in the consensus "
    "(judgments of labelers outside the groups weigh as before)",
}


def _groups_section(groups: dict[str, Any]) -> list[str]:
    """The group source and the counts per group (`curation.export.build`)."""
    mode = GROUP_MODES[groups["mode"]].format(group=groups["group"])
    lines = [
        "## Preference groups",
        "",
        f"Group source: the pluralistic reward model version {groups['version']} (`{groups['source']}`) "
        f"of this project, {len(groups['groups'])} groups. Mode: {mode}. The `raw` format carries each "
        "judgment's `group` and `group_confidence`.",
        "",
        "| group | judgments | pairs rows |",
        "|---|---|---|",
    ]
    names = [str(g) for g in groups["groups"]] + (["none"] if "none" in groups["judgments"] else [])
    for name in names:
        rows = groups["pairs_rows"].get(name, "-") if groups["mode"] == "split" else "-"
        lines.append(f"| {name} | {groups['judgments'].get(name, 0)} | {rows} |")
    return [*lines, ""]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
