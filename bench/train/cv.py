"""Held-out accuracy of the default reward model against the strongest simple baselines, by k-fold
cross-validation on the 1,600 shared HH-RLHF harmless pairs (folds by pair, fixed permutation).

    .venv/bin/pip install -r bench/requirements.txt     # TRL, for the comparison only
    .venv/bin/python bench/train/cv.py [--folds 5] [--only ours,trl,frozen_lr,shorter]

In every fold, on the same training pairs and the same held-out pairs:
- `ours`: the app's default `TrainConfig()` through `models_srv.engine.train` (the function the
  training job calls), scored with the returned model;
- `trl`: TRL `RewardTrainer` fine-tuning the whole MiniLM (`AutoModelForSequenceClassification`), 1
  epoch, 128 tokens, TRL's defaults otherwise. It gets the same whole-dialogue token ids ours reads
  (the dialogue's end kept), because TRL drops every pair longer than `max_length` and most HH
  dialogues are;
- `frozen_lr`: the frozen MiniLM's mean-pooled whole-dialogue embedding (L2-normalized, the last
  256 tokens), logistic regression on the chosen-minus-rejected difference (both signs, no
  intercept, C by inner 4-fold CV); `frozen_lr_l4` is the same on layer 4 of 6, the best frozen
  variant found;
- `shorter`: prefer the shorter response (a tie counts half).

Prints mean accuracy and its standard error over folds, the paired difference to `ours` with its
standard error, and wall seconds per fold. Results also land in `bench/train/out/cv-*.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import ROOT, load_hh_pairs, setup_django


def folds_of(n: int, k: int) -> list[list[int]]:
    import numpy as np

    perm = np.random.RandomState(0).permutation(n)
    return [list(map(int, f)) for f in np.array_split(perm, k)]


def acc_of(chosen: list[float], rejected: list[float]) -> float:
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)) / len(chosen)


def ours(pairs, train_idx, test_idx, overrides: dict) -> tuple[float, float]:
    from models_srv.data import Examples, PairExample, SplitData
    from models_srv.engine import TrainConfig, train

    ex = Examples(pairs=[PairExample(i, *pairs[i], 1) for i in train_idx])
    t0 = time.perf_counter()
    model = train(SplitData(train=ex, eval=Examples(), aspects={}), TrainConfig(**overrides))
    seconds = time.perf_counter() - t0
    texts = [(pairs[i][0], pairs[i][1]) for i in test_idx] + [(pairs[i][0], pairs[i][2]) for i in test_idx]
    scores = model.score(texts, use_cache=False)[0].tolist()
    return acc_of(scores[: len(test_idx)], scores[len(test_idx) :]), seconds


def trl(pairs, train_idx, test_idx, max_length: int = 128) -> tuple[float, float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from models_srv.engine import Encoder, TrainConfig, backbone_path

    enc = Encoder(TrainConfig(mode="top", max_length=max_length), "cpu")  # the dialogue ids top mode reads
    data = Dataset.from_dict(
        {
            "chosen_ids": [enc.ids(pairs[i][0], pairs[i][1]) for i in train_idx],
            "rejected_ids": [enc.ids(pairs[i][0], pairs[i][2]) for i in train_idx],
        }
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(backbone_path("default"), num_labels=1)
    with tempfile.TemporaryDirectory() as out:
        config = RewardConfig(
            output_dir=out,
            num_train_epochs=1,
            max_length=max_length,
            report_to=[],
            save_strategy="no",
            logging_steps=10_000,
            use_cpu=True,
            seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = RewardTrainer(model=model, args=config, train_dataset=data, processing_class=enc.tokenizer)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    model.eval()
    scores = []
    texts = [enc.ids(pairs[i][0], pairs[i][1]) for i in test_idx]
    texts += [enc.ids(pairs[i][0], pairs[i][2]) for i in test_idx]
    with torch.inference_mode():
        for s in range(0, len(texts), 32):
            scores += model(**enc.batch(texts[s : s + 32])).logits[:, 0].tolist()
    return acc_of(scores[: len(test_idx)], scores[len(test_idx) :]), seconds


def frozen_features(pairs, max_length: int = 256):
    """Per text (2i chosen, 2i+1 rejected): mean-pooled whole-dialogue embeddings, layers 4 and 6."""
    import numpy as np
    import torch

    from models_srv.engine import Encoder, TrainConfig

    enc = Encoder(TrainConfig(mode="top", max_length=max_length), "cpu")
    ids = []
    for p, c, r in pairs:
        ids += [enc.ids(p, c), enc.ids(p, r)]
    out = {4: np.zeros((len(ids), enc.dim), np.float32), 6: np.zeros((len(ids), enc.dim), np.float32)}
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    enc.model.eval()
    with torch.inference_mode():
        for s in range(0, len(order), 32):
            idx = order[s : s + 32]
            inputs = enc.batch([ids[i] for i in idx])
            hidden = enc.model(**inputs, output_hidden_states=True).hidden_states
            w = inputs["attention_mask"].unsqueeze(-1).float()
            for layer in out:
                out[layer][idx] = ((hidden[layer] * w).sum(1) / w.sum(1)).numpy()
    return {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in out.items()}


def frozen_lr(features, train_idx, test_idx) -> float:
    import numpy as np
    from sklearn.linear_model import LogisticRegressionCV

    tr, te = np.array(train_idx), np.array(test_idx)
    diff = features[2 * tr] - features[2 * tr + 1]
    x = np.concatenate([diff, -diff])
    y = np.r_[np.ones(len(tr)), np.zeros(len(tr))]
    clf = LogisticRegressionCV(Cs=8, cv=4, fit_intercept=False, max_iter=3000).fit(x, y)
    m = clf.decision_function(features[2 * te] - features[2 * te + 1])
    return float(np.mean(np.where(m > 0, 1.0, np.where(m == 0, 0.5, 0.0))))


def shorter(pairs, test_idx) -> float:
    return acc_of([-len(pairs[i][1]) for i in test_idx], [-len(pairs[i][2]) for i in test_idx])


def mean_se(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, float("nan")
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var / len(values))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only", default="ours,trl,frozen_lr,shorter")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=1600)
    ap.add_argument("--config", default="{}", help="TrainConfig fields for ours, as JSON (default: the defaults)")
    ap.add_argument("--fold-list", default="", help="run only these folds, e.g. 0,1")
    args = ap.parse_args()
    setup_django()
    import torch
    from django.core.management import call_command

    call_command("migrate", verbosity=0)  # frozen mode keeps its embeddings in the database

    torch.set_num_threads(args.threads)
    pairs = load_hh_pairs(args.limit)
    which = args.only.split(",")
    folds = folds_of(len(pairs), args.folds)
    results: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    features = frozen_features(pairs) if "frozen_lr" in which else None
    for f, test_idx in enumerate(folds):
        if args.fold_list and str(f) not in args.fold_list.split(","):
            continue
        train_idx = [i for g, fold in enumerate(folds) if g != f for i in fold]
        line = []
        for name in which:
            if name == "ours":
                acc, sec = ours(pairs, train_idx, test_idx, json.loads(args.config))
                seconds.setdefault(name, []).append(sec)
                results.setdefault(name, []).append(acc)
            elif name == "trl":
                acc, sec = trl(pairs, train_idx, test_idx)
                seconds.setdefault(name, []).append(sec)
                results.setdefault(name, []).append(acc)
            elif name == "frozen_lr":
                results.setdefault("frozen_lr", []).append(frozen_lr(features[6], train_idx, test_idx))
                results.setdefault("frozen_lr_l4", []).append(frozen_lr(features[4], train_idx, test_idx))
            elif name == "shorter":
                results.setdefault(name, []).append(shorter(pairs, test_idx))
        line = "  ".join(f"{k} {v[-1]:.4f}" for k, v in results.items())
        print(f"fold {f}: {line}  seconds { ({k: round(v[-1]) for k, v in seconds.items()}) }", flush=True)
    print(f"\n{args.folds}-fold CV, {len(pairs)} HH-RLHF harmless pairs (mean ± standard error over folds)")
    print(f"{'':>14} {'accuracy':>16} {'ours minus it':>18} {'train s/fold':>13}")
    for name, accs in results.items():
        m, se = mean_se(accs)
        diff = ""
        if "ours" in results and name != "ours":
            dm, dse = mean_se([a - b for a, b in zip(results["ours"], accs, strict=True)])
            diff = f"{dm:+.4f} ± {dse:.4f}"
        sec = f"{sum(seconds[name]) / len(seconds[name]):.0f}" if name in seconds else ""
        print(f"{name:>14} {m:>9.4f} ± {se:.4f} {diff:>18} {sec:>13}")
    out = ROOT / "bench" / "train" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"cv-{int(time.time())}.json").write_text(json.dumps({"accuracy": results, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
