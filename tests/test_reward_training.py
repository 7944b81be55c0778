"""Reward-model training: objectives on tiny models built from a config (fast, no weights needed),
the registry's bookkeeping, cancellation and failure."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from annotation.importing import import_items
from annotation.models import Item
from models_srv import services
from models_srv.model_sources import ModelSourceError
from models_srv.models import ResponseScore, RewardModelVersion
from tests.conftest import jsonl

TINY = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}
GOOD = ["great", "helpful", "correct", "clear", "kind"]
BAD = ["terrible", "wrong", "useless", "rude", "confusing"]


def synthetic_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        filler = " ".join(rng.choices(["the", "answer", "is", "a", "very", "some", "text"], k=rng.randint(3, 12)))
        good = f"{filler} {rng.choice(GOOD)} {rng.choice(GOOD)}"
        bad = f"{filler} {rng.choice(BAD)} {rng.choice(BAD)}"
        a_good = rng.random() < 0.5
        rows.append(
            {
                "id": f"s{i}",
                "prompt": f"question {i}",
                "response_a": good if a_good else bad,
                "response_b": bad if a_good else good,
                "label": "A" if a_good else "B",
                "strength": rng.choice([1, 2]),
                "metadata": {"category": rng.choice(["x", "y"])},
            }
        )
    return rows


@pytest.fixture
def synthetic_project(make_project, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    project = make_project("syn", schema={"pairwise": {"strengths": ["better", "much better"]}})
    import_items(project=project, fileobj=jsonl(synthetic_pairs(240)))
    return project


def test_a_tiny_model_from_a_config_learns_a_separable_preference(synthetic_project) -> None:
    config = {
        "from_config": TINY,
        "mode": "full",
        "epochs": 4,
        "lr": 2e-3,
        "batch_size": 16,
        "max_length": 48,
        "ensemble": 3,
    }
    version = services.training_start(project=synthetic_project, config=config, enqueue=False)
    seen = []
    version = services.training_run(version_id=version.id, echo=seen.append)
    assert version.status == "succeeded", version.error
    pairwise = version.metrics["pairwise"]
    assert pairwise["n"] >= 30
    assert pairwise["accuracy"] >= 0.9, pairwise
    assert set(pairwise["by_category"]) == {"x", "y"} and set(pairwise["by_source"]) == {"imported"}
    assert 0 <= pairwise["ece"] <= 1 and pairwise["mean_uncertainty"] >= 0
    assert any(p.get("phase") == "training" and "eta_s" in p and "loss" in p for p in seen)
    assert version.is_current and version.version == 1
    assert (Path(version.artifact_path) / "heads.safetensors").exists()
    assert (Path(version.artifact_path) / "backbone" / "model.safetensors").exists()

    written = services.rescore(version_id=version.id)
    assert written == 2 * Item.objects.filter(project=synthetic_project).count()
    good_wins = 0
    for item in Item.objects.filter(project=synthetic_project)[:50]:
        scores = {s.response_index: s.score for s in ResponseScore.objects.filter(version=version, item=item)}
        good = 0 if any(w in item.responses[0]["text"] for w in GOOD) else 1
        good_wins += scores[good] > scores[1 - good]
    assert good_wins >= 45


def test_frozen_mode_trains_heads_on_cached_embeddings(synthetic_project) -> None:
    from models_srv.models import EmbeddingCache

    config = {"from_config": TINY, "mode": "frozen", "epochs": 150, "max_length": 48, "ensemble": 4, "lr": 1e-2}
    first = services.training_run(
        version_id=services.training_start(project=synthetic_project, config=config, enqueue=False).id
    )
    assert first.status == "succeeded", first.error
    cached = EmbeddingCache.objects.count()
    assert cached >= 2 * 240 * 0.7
    keys = set(EmbeddingCache.objects.values_list("backbone_key", flat=True))
    second = services.training_run(
        version_id=services.training_start(project=synthetic_project, config=config, enqueue=False).id
    )
    # the retrain embedded nothing new with its backbone (the promotion check scores with v1's own,
    # saved with v1, under that backbone's key)
    assert EmbeddingCache.objects.filter(backbone_key__in=keys).count() == cached
    assert second.metrics["pairwise"]["accuracy"] == first.metrics["pairwise"]["accuracy"]
    assert first.metrics["pairwise"]["accuracy"] > 0.75


def test_versions_roll_back_and_runs_can_be_cancelled(synthetic_project) -> None:
    config = {"from_config": TINY, "mode": "frozen", "epochs": 5, "max_length": 32, "ensemble": 1}
    v1 = services.training_run(
        version_id=services.training_start(project=synthetic_project, config=config, enqueue=False).id
    )
    v2 = services.training_run(
        version_id=services.training_start(project=synthetic_project, config=config, enqueue=False).id
    )
    assert v1.status == v2.status == "succeeded"
    services.version_make_current(version=v1)
    assert list(RewardModelVersion.objects.filter(is_current=True).values_list("version", flat=True)) == [1]
    queued = services.training_start(project=synthetic_project, config=config, enqueue=False)
    services.version_cancel(version=queued)
    queued.refresh_from_db()
    assert queued.status == "cancelled"
    assert services.training_run(version_id=queued.id) is None


def test_a_failing_run_is_marked_failed_and_leaves_no_artifacts(synthetic_project, tmp_path, settings) -> None:
    settings.MODEL_DIRS = [str(tmp_path / "models")]  # allowed, but there is no such model
    config = {"backbone": str(tmp_path / "models" / "no-such-model"), "mode": "frozen"}
    version = services.training_start(project=synthetic_project, config=config, enqueue=False)
    with pytest.raises(ModelSourceError):
        services.training_run(version_id=version.id)
    version.refresh_from_db()
    assert version.status == "failed" and "no-such-model" in version.error
    assert not version.is_current and version.artifact_path == ""
    assert not list((tmp_path / "reward_models").glob("**/*.partial"))


def test_training_needs_judgments(make_project) -> None:
    project = make_project("empty")
    with pytest.raises(ValueError, match="no judgments"):
        services.training_start(project=project, config={}, enqueue=False)


def test_train_and_evaluate_commands(synthetic_project, tmp_path, capsys) -> None:
    from django.core.management import call_command

    call_command(
        "train_reward_model",
        "--project",
        "syn",
        "--foreground",
        "--mode",
        "frozen",
        "--epochs",
        "60",
        "--max-length",
        "48",
        "--config",
        json.dumps({"from_config": TINY}),
    )
    out = capsys.readouterr().out
    assert "phase=training" in out and "version 1: succeeded" in out
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_pairs(60, seed=9)))
    call_command("evaluate_reward_model", "--project", "syn", "--file", str(path))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("pairwise accuracy")
    result = json.loads(lines[-1])
    assert result["version"] == 1 and result["metrics"]["pairwise"]["n"] == 60
    assert result["metrics"]["pairwise"]["accuracy"] > 0.7


def test_gpu_code_paths_run_on_the_cpu(synthetic_project) -> None:
    """bf16 autocast, gradient accumulation and length-bucketed batches, as a GPU run uses them.
    What the run did is read from its record (set inside the training loop), not from its config:
    the forward ran under bf16 autocast, and accumulating 2 micro-batches halved the optimizer steps."""
    from models_srv.engine import _batches, autocast_dtype, pick_device

    assert pick_device("auto") in ("cpu", "cuda", "mps")
    base = {"from_config": TINY, "mode": "full", "epochs": 2, "lr": 2e-3, "max_length": 32, "device": "cpu"}

    def run(**extra):
        version = services.training_run(
            version_id=services.training_start(project=synthetic_project, config={**base, **extra}, enqueue=False).id
        )
        assert version.status == "succeeded", version.error
        assert version.device == "cpu"
        return version.metrics["training"]

    plain = run(precision="fp32", grad_accum=1)
    bf16 = run(precision="bf16", grad_accum=2)
    print("fp32, grad_accum=1:", plain, "\nbf16, grad_accum=2:", bf16)
    # the same data and batches: 12 pair batches (192 training pairs by 16) in each of 2 epochs
    assert plain["micro_batches"] == bf16["micro_batches"] == 24
    assert plain["optimizer_steps"] == 24 and bf16["optimizer_steps"] == 12
    assert plain["autocast"] is None and plain["output_dtypes"] == {"heads": "float32", "backbone": "float32"}
    assert bf16["autocast"] == "bfloat16" and bf16["output_dtypes"] == {"heads": "bfloat16", "backbone": "bfloat16"}
    import torch

    assert autocast_dtype("bf16", "cpu") == torch.bfloat16 and autocast_dtype("auto", "cpu") is None
    from models_srv.data import Examples, PairExample

    ex = Examples(pairs=[PairExample(i, "p", "x" * (i % 7), "y", 1) for i in range(40)])
    batches = _batches(ex, 8, 0, lambda pr: len(pr[1]))
    lengths = [[len(ex.pairs[i].chosen) for i in members] for _, members in batches]
    assert all(max(b) - min(b) <= 2 for b in lengths)  # similar lengths batch together


def test_autotrain_starts_a_run_after_enough_new_judgments(make_project) -> None:
    project = make_project("auto", autotrain_after=30)
    import_items(project=project, fileobj=jsonl(synthetic_pairs(20)))
    assert services.autotrain_all() == []
    import_items(project=project, fileobj=jsonl(synthetic_pairs(40, seed=5)[20:]))  # 20 more ids
    started = services.autotrain_all()
    assert len(started) == 1
    assert services.autotrain_all() == []  # one run at a time, and nothing new since it started


TINY3 = {**TINY, "num_hidden_layers": 3}


def _top_run(settings, cache_mb: int, backbone: dict | None = TINY3, **extra):
    from models_srv.data import Examples, PairExample, SplitData
    from models_srv.engine import TrainConfig, train

    settings.RM_ACTIVATION_CACHE_MB = cache_mb
    rows = synthetic_pairs(48, seed=3)
    pairs = []
    for i, r in enumerate(rows):
        good, bad = (r["response_a"], r["response_b"]) if r["label"] == "A" else (r["response_b"], r["response_a"])
        pairs.append(PairExample(i, r["prompt"], good, bad, 1))
    config = TrainConfig(**{"mode": "top", "top_layers": 1, "epochs": 6, "lr": 2e-3, "max_length": 40, **extra})
    config = config.model_copy(update={"from_config": backbone})
    model = train(SplitData(train=Examples(pairs=pairs), eval=Examples(), aspects={}), config)
    return model, pairs


@pytest.mark.django_db
def test_top_mode_trains_only_the_top_block_and_caches_the_rest(settings) -> None:
    """Top mode changes the last block (and the heads) only; the cached path computes the same
    model as running the whole backbone every step (the cache forced off)."""
    import torch
    from transformers import AutoConfig, AutoModel

    from models_srv.engine import top_param_names

    cached, pairs = _top_run(settings, cache_mb=4096)
    whole, _ = _top_run(settings, cache_mb=0)
    texts = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    a, _, _ = cached.score(texts)
    b, _, _ = whole.score(texts)
    # the cache keeps fp16 activations, so the two runs drift apart by rounding only
    margins_a, margins_b = a[:48] - a[48:], b[:48] - b[48:]
    assert torch.allclose(margins_a, margins_b, atol=5e-3), float((margins_a - margins_b).abs().max())
    assert float((a[:48] > a[48:]).float().mean()) >= 0.9

    torch.manual_seed(0)  # the same initial weights the run built (seed 0)
    fresh = AutoModel.from_config(AutoConfig.for_model(**{"vocab_size": cached.encoder.tokenizer.vocab_size, **TINY3}))
    trained = dict(cached.encoder.model.named_parameters())
    top = set(top_param_names(cached.encoder.model, 1))
    assert top and all(".layer.2." in n or "pooler" in n for n in top)
    for name, param in fresh.named_parameters():
        changed = not torch.equal(param, trained[name].detach().cpu())
        if ".layer.2." in name and "weight" in name and "LayerNorm" not in name:
            assert changed, name
        if name not in top:
            assert not changed, name


@pytest.mark.django_db
def test_top_mode_saves_only_its_trained_layers(settings, tmp_path) -> None:
    """With a real backbone, a version stores the trained block, not a copy of the backbone, and
    loads back to the same scores."""
    from models_srv.engine import load_model

    model, pairs = _top_run(settings, cache_mb=4096, backbone=None, epochs=1)
    model.save(tmp_path / "v")
    assert (tmp_path / "v" / "top_layers.safetensors").exists() and not (tmp_path / "v" / "backbone").exists()
    assert (tmp_path / "v" / "top_layers.safetensors").stat().st_size < 10 * 2**20
    texts = [(p.prompt, p.chosen) for p in pairs[:8]]
    again = load_model(tmp_path / "v")
    assert (again.score(texts)[0] - model.score(texts)[0]).abs().max() < 1e-4


def graded_lists(n: int, seed: int = 0) -> list[dict]:
    """Items of 4 responses whose quality is how many of their 3 verdict words are good (0..3):
    ranked by it, and each rated 2 + quality on a 1..5 helpfulness scale."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        quality = rng.sample(range(4), 4)
        responses = []
        for q in quality:
            words = [rng.choice(GOOD) for _ in range(q)] + [rng.choice(BAD) for _ in range(3 - q)]
            rng.shuffle(words)
            filler = " ".join(rng.choices(["the", "answer", "is", "a", "very", "some", "text"], k=rng.randint(2, 8)))
            responses.append(f"{filler} {' '.join(words)}")
        rows.append(
            {
                "id": f"g{i}",
                "prompt": f"question {i}",
                "responses": responses,
                "ranking": [4 - q for q in quality],
                "rubric": [{"helpfulness": 2 + q} for q in quality],
            }
        )
    return rows


def test_listwise_and_rubric_heads_learn_a_known_signal(make_project, settings, tmp_path) -> None:
    """Rankings and ratings that follow a feature of the text: on held-out items the ranking beats
    chance by a significant margin and the rubric head beats the best constant rating."""
    from models_srv.data import load_snapshot
    from tests.chance import above_chance, best_constant_mae

    settings.MEDIA_ROOT = tmp_path
    schema = {"ranking": {"k": 4}, "rubric": {"aspects": [{"name": "helpfulness"}], "required": False}}
    project = make_project("graded", schema=schema)
    import_items(project=project, fileobj=jsonl(graded_lists(120)))
    config = {"from_config": TINY, "mode": "full", "epochs": 2, "lr": 2e-3, "max_length": 32, "ensemble": 1}
    version = services.training_run(
        version_id=services.training_start(project=project, config=config, enqueue=False).id
    )
    assert version.status == "succeeded", version.error
    data = load_snapshot(version.snapshot)
    ranking, rubric = version.metrics["ranking"], version.metrics["aspects"]["helpfulness"]
    constant = best_constant_mae(
        [r.ratings["helpfulness"] for r in data.train.ratings], [r.ratings["helpfulness"] for r in data.eval.ratings]
    )
    print("ranking:", ranking, "\nhelpfulness:", rubric, "best constant MAE:", round(constant, 4))
    # each held-out list counts once (its 6 pairs are not independent); no ties, so the pooled
    # pairwise accuracy is the mean of the lists' accuracies
    assert ranking["n"] == len(data.eval.lists) >= 20
    assert above_chance(ranking["pairwise_accuracy"], ranking["n"])
    assert above_chance(ranking["top1_accuracy"], ranking["n"], chance=0.25)
    assert rubric["n"] == len(data.eval.ratings) == 4 * ranking["n"]
    assert rubric["mae"] < 0.75 * constant
