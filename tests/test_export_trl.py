"""The pairs export is what TRL's RewardTrainer takes unchanged: each configuration loads with
`datasets` from the card as written and trains a few steps (tiny models built from configs, the
packaged MiniLM's tokenizer, nothing downloaded); its `test` split is exactly the items the app
holds out of training, and its `margin` is the one the app's objective uses."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from annotation.importing import import_items
from annotation.models import Item, Project
from curation.services import export_copy_to, export_create, export_run
from models_srv.data import snapshot_create
from models_srv.engine import TrainConfig
from tests.conftest import jsonl

SCHEMA = {"pairwise": {"strengths": ["better", "much better"], "allow_tie": True}}
# A chat template for the tiny decoder: what a chat model's tokenizer carries and MiniLM's lacks.
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
TINY_BERT = {"model_type": "bert", "num_attention_heads": 2, "intermediate_size": 64}
TINY_DECODER = {"model_type": "llama", "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 64}


@pytest.fixture(autouse=True)
def _offline(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.VAR_DIR = tmp_path / "var"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def hh_rows() -> list[dict[str, Any]]:
    """Twelve chat items labeled by one imported annotator. With the app's default seed and eval
    fraction, h0, h3 and h6 are drawn out of training; h4 is in the project's eval split."""
    rows = []
    for i in range(12):
        messages = [{"role": "user", "content": f"Question {i}?"}]
        if i % 4 == 1:
            messages += [{"role": "assistant", "content": "Which one?"}, {"role": "user", "content": "The first."}]
        choice, strength = ("A" if i % 2 == 0 else "B"), (2 if i % 3 == 0 else 1)
        rows.append(
            {
                "id": f"h{i}",
                "messages": messages,
                "response_a": f"Answer A{i}, a fine one.",
                "response_b": f"Answer B{i}, another.",
                "judgments": [{"annotator": "hh", "pairwise": {"choice": choice, "strength": strength}}],
                **({"split": "eval"} if i == 4 else {}),
            }
        )
    return rows


@pytest.fixture
def exported(make_project: Any, tmp_path: Path) -> tuple[Project, Path]:
    project = make_project("trl", schema=SCHEMA)
    import_items(project=project, fileobj=jsonl(hh_rows()))
    snapshot = export_create(
        project=project, user=None, filters={"label_source": "imported"}, formats=["pairs"], enqueue=False
    )
    snapshot = export_run(snapshot_id=snapshot.id)
    assert snapshot is not None and snapshot.status == "done", snapshot and snapshot.error
    folder = tmp_path / "dataset"
    export_copy_to(snapshot=snapshot, out=folder)
    return project, folder


def app_held_out(project: Project) -> set[str]:
    """The items a training run with the default config evaluates on and never trains on."""
    cfg = TrainConfig()
    snapshot = snapshot_create(
        project=project, label_source=cfg.label_source, seed=cfg.seed, eval_fraction=cfg.eval_fraction
    )
    return set(Item.objects.filter(id__in=snapshot.eval_item_ids).values_list("external_id", flat=True))


def app_loss(diff: float, strength: float) -> float:
    """The app's Bradley-Terry loss of one preference at this reward difference (log 2 exactly
    where the difference equals the margin the objective asks of that strength)."""
    import torch

    from models_srv.engine import bt_loss

    one = torch.ones(1, 1)
    return float(bt_loss(diff * one, 0 * one, torch.tensor([float(strength)]), torch.zeros(1), one, TrainConfig()))


def tiny_reward_model(spec: dict[str, Any], chat_template: str | None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from models_srv.model_sources import resolve_model_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("default"))
    if chat_template:
        tokenizer.chat_template = chat_template
    size = {"hidden_size": 32, "num_hidden_layers": 2, "max_position_embeddings": 256}
    config = AutoConfig.for_model(**{"vocab_size": tokenizer.vocab_size, **size, **spec, "num_labels": 1})
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config), tokenizer


@pytest.mark.parametrize(
    ("config", "model", "chat_template", "eos_token"),
    [
        # The card's advice for a BERT-like tokenizer (the app's default MiniLM): TRL appends an end
        # of sequence token to plain text, and BERT's tokenizer has none.
        ("pairs_plain", TINY_BERT, None, "[SEP]"),
        ("pairs", TINY_DECODER, CHAT_TEMPLATE, None),
    ],
    ids=["pairs_plain", "pairs"],
)
def test_reward_trainer_takes_each_configuration_as_written(
    exported: tuple[Project, Path],
    tmp_path: Path,
    config: str,
    model: dict[str, Any],
    chat_template: str | None,
    eos_token: str | None,
) -> None:
    from datasets import load_dataset
    from trl import RewardConfig, RewardTrainer
    from trl.data_utils import is_conversational

    project, folder = exported
    data = load_dataset(str(folder), config, cache_dir=str(tmp_path / "hf-cache"))
    assert set(data) == {"train", "test"}

    held_out = app_held_out(project)
    assert held_out == {"h0", "h3", "h4", "h6"}  # drawn by the hash, and the project's eval split
    assert set(data["test"]["item_id"]) == held_out and set(data["test"]["split"]) == {"test"}
    assert not held_out & set(data["train"]["item_id"]) and len(data["train"]) == 8

    rows = {r["item_id"]: r for split in data.values() for r in split}
    assert {k: r["margin"] for k, r in rows.items() if r["margin"]} == {f"h{i}": 0.5 for i in (0, 3, 6, 9)}
    for r in rows.values():  # TRL's loss, -log sigmoid(difference - margin), is the app's
        assert app_loss(r["margin"], r["strength"]) == pytest.approx(math.log(2), abs=1e-6), r["item_id"]

    if config == "pairs":
        assert is_conversational(rows["h1"]) and rows["h1"]["chosen"] == [
            {"role": "assistant", "content": "Answer B1, another."}
        ]
    else:
        assert not is_conversational(rows["h1"])
        prompt = "User: Question 1?\n\nAssistant: Which one?\n\nUser: The first.\n\nAssistant: "
        assert (rows["h1"]["prompt"], rows["h1"]["chosen"]) == (prompt, "Answer B1, another.")

    net, tokenizer = tiny_reward_model(model, chat_template)
    args = RewardConfig(
        output_dir=str(tmp_path / "rm"),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        eos_token=eos_token,
        activation_checkpointing=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = RewardTrainer(
        model=net, args=args, train_dataset=data["train"], eval_dataset=data["test"], processing_class=tokenizer
    )
    assert len(trainer.train_dataset) == 8 and "margin" in trainer.train_dataset.column_names  # none dropped
    result = trainer.train()
    assert trainer.state.global_step == 2 == result.global_step
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert math.isfinite(trainer.evaluate()["eval_loss"])
