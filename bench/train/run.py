"""Reward-model training and scoring throughput, side by side with TRL's RewardTrainer.

    .venv/bin/pip install -r bench/requirements.txt   # TRL, for the comparison only
    .venv/bin/python bench/train/run.py [--max-length 128] [--batch 8] [--steps 40] [--device auto]

Both trainers get the same backbone (the packaged MiniLM unless --backbone), the same pre-tokenized
and truncated HH-RLHF pairs (prompt tail + response head, so no pair is dropped or cut differently),
the same batch size, sequence length, precision, learning rate and number of optimizer steps, in
the same process. Throughput is measured over the optimizer steps only (model loading excluded).
Also measured: scoring (pairs/s) and the frozen-backbone path (embedding texts/s, head training).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HH = ROOT.parent / "shared" / "data" / "hh_harmless_pairs.jsonl.gz"


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("DATABASE_URL", "sqlite:///:memory:")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


def load_pairs(limit: int) -> list[tuple[str, str, str]]:
    from annotation.importing import hh_messages, split_hh_dialogue, transcript

    if not HH.exists():
        raise SystemExit(f"{HH} is absent: this benchmark reads the shared HH-RLHF pairs")
    out = []
    with gzip.open(HH, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            prompt, chosen, rejected = split_hh_dialogue(row["chosen"], row["rejected"])
            out.append((transcript(hh_messages(prompt)), chosen, rejected))
            if len(out) >= limit:
                break
    return out


def ours_full(pairs, args, device: str) -> dict[str, float]:
    from models_srv.data import Examples, PairExample, SplitData
    from models_srv.engine import TrainConfig, train

    cfg = TrainConfig(
        mode="full",
        backbone=args.backbone,
        max_length=args.max_length,
        batch_size=args.batch,
        epochs=1,
        lr=3e-5,
        ensemble=1,
        precision=args.precision,
        device=device,
    )
    ex = Examples(pairs=[PairExample(i, p, c, r, 1) for i, (p, c, r) in enumerate(pairs[: args.steps * args.batch])])
    marks: list[tuple[float, int]] = []

    def progress(info: dict) -> None:
        if info.get("phase") == "training":
            marks.append((time.perf_counter(), info["step"]))

    t0 = time.perf_counter()
    model = train(SplitData(train=ex, eval=Examples(), aspects={}), cfg, progress)
    total = time.perf_counter() - t0
    (t_a, s_a), (t_b, s_b) = marks[0], marks[-1]
    rate = (s_b - s_a) * args.batch / (t_b - t_a) if t_b > t_a else float("nan")
    return {"pairs_per_s": rate, "wall_s": total, "model": model}


def trl_full(pairs, args, device: str, encoder) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from models_srv.engine import backbone_path

    n = args.steps * args.batch
    chosen_ids = [encoder.ids(p, c) for p, c, _ in pairs[:n]]
    rejected_ids = [encoder.ids(p, r) for p, _, r in pairs[:n]]
    dataset = Dataset.from_dict({"chosen_ids": chosen_ids, "rejected_ids": rejected_ids})
    model = AutoModelForSequenceClassification.from_pretrained(backbone_path(args.backbone), num_labels=1)
    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kw):
            marks.append((time.perf_counter(), state.global_step))

    with tempfile.TemporaryDirectory() as out:
        config = RewardConfig(
            output_dir=out,
            per_device_train_batch_size=args.batch,
            max_steps=args.steps,
            learning_rate=3e-5,
            logging_steps=10_000,
            report_to=[],
            save_strategy="no",
            max_length=args.max_length,
            use_cpu=device == "cpu",
            bf16=args.precision == "bf16",
            dataloader_num_workers=0,
            seed=0,
            gradient_checkpointing=False,
        )
        trainer = RewardTrainer(
            model=model, args=config, train_dataset=dataset, processing_class=encoder.tokenizer, callbacks=[Clock()]
        )
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
    (t_a, s_a), (t_b, s_b) = marks[0], marks[-1]
    # scoring with the TRL-style model: one forward per text
    model.eval()
    texts = chosen_ids[: args.score_pairs] + rejected_ids[: args.score_pairs]
    t1 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), 32):
            batch = encoder.batch(texts[i : i + 32])
            model(**{k: v.to(model.device) for k, v in batch.items()})
    score_rate = len(texts) / 2 / (time.perf_counter() - t1)
    return {"pairs_per_s": (s_b - s_a) * args.batch / (t_b - t_a), "wall_s": total, "score_pairs_per_s": score_rate}


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
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--score-pairs", type=int, default=256)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--skip-trl", action="store_true")
    args = parser.parse_args()
    setup_django()
    import torch

    from models_srv.engine import Encoder, TrainConfig, pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    pairs = load_pairs(max(args.steps * args.batch, args.score_pairs, 1600))
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, backbone {args.backbone}, "
        f"max_length {args.max_length}, batch {args.batch}, steps {args.steps}, {args.precision}",
        flush=True,
    )

    warm_up(args, device)
    ours = ours_full(pairs, args, device)
    print(f"ours  full fine-tune : {ours['pairs_per_s']:.2f} pairs/s", flush=True)
    model = ours["model"]
    sample = [(p, c) for p, c, _ in pairs[: args.score_pairs]] + [(p, r) for p, _, r in pairs[: args.score_pairs]]
    t = time.perf_counter()
    model.score(sample, use_cache=False)
    score_rate = args.score_pairs / (time.perf_counter() - t)
    print(f"ours  scoring        : {score_rate:.2f} pairs/s", flush=True)

    frozen_cfg = TrainConfig(
        mode="frozen",
        backbone=args.backbone,
        max_length=args.max_length,
        embed_batch_size=64,
        precision=args.precision,
        device=device,
    )
    encoder = Encoder(frozen_cfg, device)
    texts = [(p, c) for p, c, _ in pairs[:800]] + [(p, r) for p, _, r in pairs[:800]]
    t = time.perf_counter()
    emb = encoder.embed(texts)
    embed_rate = len(texts) / (time.perf_counter() - t)
    print(
        f"ours  frozen: embed  : {embed_rate:.1f} texts/s ({embed_rate / 2:.1f} pairs/s), dim {emb.shape[1]}",
        flush=True,
    )
    from models_srv.engine import bt_loss, make_heads

    heads = make_heads(emb.shape[1], 5, 0, "linear")
    opt = torch.optim.AdamW(heads.parameters(), lr=3e-3)
    ec, er = emb[:800], emb[800:]
    t = time.perf_counter()
    for _ in range(200):
        for i in range(0, 800, 16):
            rc, _ = heads(ec[i : i + 16])
            rr, _ = heads(er[i : i + 16])
            n = rc.shape[0]
            loss = bt_loss(rc, rr, torch.ones(n), torch.zeros(n), torch.ones((n, 5)), frozen_cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
    head_s = time.perf_counter() - t
    print(
        f"ours  frozen: heads  : 200 epochs x 800 pairs x 5 heads in {head_s:.1f} s ({200 * 800 / head_s:.0f} pairs/s)",
        flush=True,
    )

    result = {
        "device": device,
        "ours_full_pairs_per_s": round(ours["pairs_per_s"], 2),
        "ours_score_pairs_per_s": round(score_rate, 2),
        "embed_texts_per_s": round(embed_rate, 1),
        "frozen_heads_s": round(head_s, 1),
    }
    if not args.skip_trl:
        trl = trl_full(pairs, args, device, Encoder(frozen_cfg, device))
        print(f"TRL   RewardTrainer  : {trl['pairs_per_s']:.2f} pairs/s", flush=True)
        print(f"TRL-style scoring    : {trl['score_pairs_per_s']:.2f} pairs/s", flush=True)
        ratio = ours["pairs_per_s"] / trl["pairs_per_s"]
        print(f"ratio ours / TRL (training): {ratio:.2f}", flush=True)
        result.update(
            trl_pairs_per_s=round(trl["pairs_per_s"], 2),
            ratio=round(ratio, 2),
            trl_score_pairs_per_s=round(trl["score_pairs_per_s"], 2),
        )
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / f"results-{device}-{args.max_length}.json").write_text(json.dumps({**result, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
