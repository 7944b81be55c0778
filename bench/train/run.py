"""Reward-model training throughput side by side with TRL's RewardTrainer, at the accuracy each
reaches on the same held-out pairs.

    .venv/bin/pip install -r bench/requirements.txt   # TRL, for the comparison only
    .venv/bin/python bench/train/run.py [--max-length 128] [--batch 8] [--precisions fp32,bf16]

One process, the same backbone (the packaged MiniLM unless --backbone), the same 1,280 HH-RLHF
training pairs (fold 0 of bench/train/cv.py) as the same whole-dialogue token ids (the dialogue's
end kept, so TRL drops no pair for being longer than max_length), the same batch size, sequence
length, precision and one epoch each. Throughput is training pairs over the wall time of the
whole training call, model loading excluded (ours includes its pass of the frozen lower layers).
Each trained model is then scored on the 320 held-out pairs (accuracy) and timed scoring them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from common import load_hh_pairs  # noqa: E402


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("DATABASE_URL", "sqlite:///:memory:")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


def split(pairs):
    """Fold 0 of bench/train/cv.py: (training pairs, held-out pairs)."""
    from cv import folds_of

    folds = folds_of(len(pairs), 5)
    train_idx = [i for g in folds[1:] for i in g]
    return [pairs[i] for i in train_idx], [pairs[i] for i in folds[0]]


def figures(n_train: int, seconds: float, scores: list[float], score_s: float) -> dict[str, float]:
    """Training pairs/s, held-out accuracy (scores: every chosen, then every rejected; a tie counts
    half) and scoring pairs/s."""
    n = len(scores) // 2
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(scores[:n], scores[n:], strict=True))
    return {
        "pairs_per_s": n_train / seconds,
        "seconds": seconds,
        "accuracy": wins / n,
        "score_pairs_per_s": n / score_s,
    }


def ours(train_pairs, test_pairs, args, device: str, precision: str, mode: str) -> dict[str, float]:
    from models_srv.data import Examples, PairExample, SplitData
    from models_srv.engine import TrainConfig, train

    cfg = TrainConfig(
        mode=mode,
        backbone=args.backbone,
        max_length=args.max_length,
        batch_size=args.batch,
        epochs=1,
        precision=precision,
        device=device,
        **({"lr": 3e-5, "ensemble": 1} if mode == "full" else {}),
    )
    ex = Examples(pairs=[PairExample(i, p, c, r, 1) for i, (p, c, r) in enumerate(train_pairs)])
    marks: list[float] = []

    def progress(info: dict) -> None:
        if not marks:
            marks.append(time.perf_counter())  # model loaded and texts tokenized: work starts

    model = train(SplitData(train=ex, eval=Examples(), aspects={}), cfg, progress)
    seconds = time.perf_counter() - marks[0]
    texts = [(p, c) for p, c, _ in test_pairs] + [(p, r) for p, _, r in test_pairs]
    t = time.perf_counter()
    scores = model.score(texts, use_cache=False)[0].tolist()
    score_s = time.perf_counter() - t
    return figures(len(train_pairs), seconds, scores, score_s)


def trl(train_pairs, test_pairs, args, device: str, precision: str, checkpointing: bool) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from models_srv.engine import Encoder, TrainConfig, backbone_path

    enc = Encoder(TrainConfig(mode="top", backbone=args.backbone, max_length=args.max_length), "cpu")
    dataset = Dataset.from_dict(
        {
            "chosen_ids": [enc.ids(p, c) for p, c, _ in train_pairs],
            "rejected_ids": [enc.ids(p, r) for p, _, r in train_pairs],
        }
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(backbone_path(args.backbone), num_labels=1)
    with tempfile.TemporaryDirectory() as out:
        config = RewardConfig(
            output_dir=out,
            per_device_train_batch_size=args.batch,
            num_train_epochs=1,
            logging_steps=10_000,
            report_to=[],
            save_strategy="no",
            max_length=args.max_length,
            use_cpu=device == "cpu",
            bf16=precision == "bf16",
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=0,
            gradient_checkpointing=checkpointing,  # RewardConfig's default is True
        )
        trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=enc.tokenizer)
        if len(trainer.train_dataset) != len(train_pairs):
            raise SystemExit(f"TRL dropped {len(train_pairs) - len(trainer.train_dataset)} pairs")
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    model.eval()
    texts = [enc.ids(p, c) for p, c, _ in test_pairs] + [enc.ids(p, r) for p, _, r in test_pairs]
    dtype = torch.bfloat16 if precision == "bf16" else None
    scores: list[float] = []
    t = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
        for i in range(0, len(texts), 32):
            batch = enc.batch(texts[i : i + 32])
            scores += model(**{k: v.to(model.device) for k, v in batch.items()}).logits[:, 0].float().tolist()
    score_s = time.perf_counter() - t
    return figures(len(train_pairs), seconds, scores, score_s)


def warm_up(args, device: str) -> None:
    """A few forward/backward passes first, so neither trainer pays for the thread pool and the
    allocator warming up (whichever ran first was about 25 % slower without this)."""

    from models_srv.engine import Encoder, TrainConfig

    enc = Encoder(TrainConfig(backbone=args.backbone, max_length=args.max_length), device)
    enc.model.train()
    batch = enc.batch([enc.ids("warm up " * 40, "the model " * 40)] * (2 * args.batch))
    for _ in range(5):
        enc.pool(enc.model, batch).sum().backward()
    del enc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="default")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--with-full", action="store_true", help="also our full fine-tuning, like for like")
    parser.add_argument("--limit", type=int, default=1600)
    parser.add_argument(
        "--skip-trl-defaults", action="store_true", help="only TRL without gradient checkpointing (like for like)"
    )
    args = parser.parse_args()
    setup_django()
    import torch

    from models_srv.engine import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    train_pairs, test_pairs = split(load_hh_pairs(args.limit))
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, backbone {args.backbone}, "
        f"max_length {args.max_length}, batch {args.batch}, {len(train_pairs)} training pairs, 1 epoch, "
        f"{len(test_pairs)} held out",
        flush=True,
    )
    warm_up(args, device)
    results = {}
    for precision in args.precisions.split(","):
        runs = {"ours (default)": lambda p=precision: ours(train_pairs, test_pairs, args, device, p, "top")}
        if args.with_full:
            runs["ours (full)"] = lambda p=precision: ours(train_pairs, test_pairs, args, device, p, "full")
        runs["TRL, no checkpointing"] = lambda p=precision: trl(train_pairs, test_pairs, args, device, p, False)
        if not args.skip_trl_defaults:
            runs["TRL, its defaults"] = lambda p=precision: trl(train_pairs, test_pairs, args, device, p, True)
        for name, run in runs.items():
            r = run()
            results[f"{precision} {name}"] = r
            print(
                f"{precision:>5} {name:<22} train {r['pairs_per_s']:7.2f} pairs/s ({r['seconds']:6.1f} s)  "
                f"held-out accuracy {r['accuracy']:.4f}  scoring {r['score_pairs_per_s']:7.1f} pairs/s",
                flush=True,
            )
        for trl_name in [n for n in runs if n.startswith("TRL")]:
            base = results[f"{precision} {trl_name}"]
            for name in [n for n in runs if not n.startswith("TRL")]:
                r = results[f"{precision} {name}"]
                print(
                    f"{precision:>5} {name} / {trl_name}: {r['pairs_per_s'] / base['pairs_per_s']:.2f}x training, "
                    f"{r['score_pairs_per_s'] / base['score_pairs_per_s']:.2f}x scoring, "
                    f"accuracy {r['accuracy'] - base['accuracy']:+.4f}",
                    flush=True,
                )
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / f"results-{device}-{args.max_length}-{int(time.time())}.json").write_text(
        json.dumps({"results": results, "args": vars(args)}, indent=2)
    )


if __name__ == "__main__":
    main()
