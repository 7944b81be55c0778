"""Reward-model training and scoring with torch + transformers. Imported only by workers and
commands that train or score, never by the web process at start-up.

A reward model is a backbone (any Hugging Face model: mean pooling for encoders, last token for
decoders) with small heads on its pooled embedding of "prompt [SEP] response":
- `reward`: N linear heads trained as an ensemble (each on its own bootstrap weights and
  initialization); the score is their mean and the uncertainty their standard deviation;
- `aspects`: one regression output per rubric aspect, on the shared embedding.

Objectives, mixed in one run as the data has them:
- Bradley-Terry with margin on pairwise judgments: -log sigmoid(r_chosen - r_rejected - margin), the
  margin `margin_scale` per strength level above the first (`strength_margin`); ties pull the two
  rewards together (binary cross-entropy towards 0.5);
- Plackett-Luce on rankings (tied groups share their step);
- mean squared error on rubric ratings, each aspect scaled to 0..1.

Modes: `frozen` embeds every text once with the backbone (cached in the database per text, so a
retrain never re-embeds) and trains only the heads - the fast default on CPU; `full` fine-tunes the
backbone with the heads (bf16 autocast on GPUs, gradient accumulation, length-bucketed batches,
DistributedDataParallel when launched with torchrun).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models_srv.data import Examples, SplitData

DEFAULT_BACKBONE = "default"


class TrainingCancelled(Exception):  # noqa: N818 - a request, not a failure
    pass


class TrainConfig(BaseModel):
    """What to train and how; stored with every version."""

    model_config = ConfigDict(extra="forbid")
    backbone: str = Field(
        default=DEFAULT_BACKBONE,
        description="'default' (the packaged MiniLM), a Hugging Face id in the workers' cache, or a folder under "
        "the operator's MODEL_DIRS",
    )
    mode: Literal["top", "frozen", "full", "pluralistic"] = Field(
        default="top",
        description="top (the default): the backbone's lower layers frozen and run once, its top blocks "
        "fine-tuned with the heads on the whole dialogue; frozen: heads only, on cached embeddings; full: every "
        "weight fine-tuned (for GPUs); pluralistic: a mixture of reward heads, one per preference group, each "
        "annotator weighted over them (pairwise judgments, on cached embeddings)",
    )
    groups: int = Field(
        default=0,
        ge=0,
        le=8,
        description="pluralistic: preference groups (reward heads); 0 = chosen from 1-4 by BIC over annotators",
    )
    group_dims: int = Field(
        default=8, ge=1, le=256, description="pluralistic: principal components of the embedding the heads read"
    )
    top_layers: int = Field(default=4, ge=1, le=64, description="blocks fine-tuned in top mode (the last ones)")
    max_length: int = Field(
        default=0, ge=0, le=8192, description="tokens per text; 0 = the mode's default (top 128, frozen and full 256)"
    )
    epochs: int = Field(default=0, ge=0, le=1000, description="0 = the mode's default (top 1, frozen 60, full 2)")
    batch_size: int = Field(
        default=0, ge=0, le=4096, description="pairs per step; 0 = the mode's default (top 8, else 16)"
    )
    grad_accum: int = Field(default=1, ge=1, le=1024, description="steps whose gradients add up before one update")
    lr: float = Field(default=0.0, ge=0, description="0 = the mode's default (top 1e-4, frozen 3e-3, full 3e-5)")
    weight_decay: float = Field(default=1e-3, ge=0, description="AdamW weight decay of the fine-tuned blocks")
    l2: float = Field(
        default=0.02, ge=0, description="L2 penalty on the heads' weights (a linear head overfits without it)"
    )
    ensemble: int = Field(
        default=3, ge=1, le=16, description="heads, each on its own bootstrap weights; their spread is the uncertainty"
    )
    head: Literal["linear", "mlp"] = Field(default="linear", description="linear or a small MLP per head")
    margin_scale: float = Field(default=0.5, ge=0, description="margin per level of annotated strength")
    tie_weight: float = Field(default=0.5, ge=0, description="weight of the loss pulling tied responses together")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: bf16 autocast on GPUs, fp32 on CPUs"
    )
    device: str = Field(default="auto", description="auto (a GPU when there is one), cpu or cuda")
    seed: int = Field(default=0, description="seeds the held-out split, the bootstrap and the training")
    label_source: Literal["people", "human", "imported", "ai", "both", "all"] = Field(
        default="people",
        description="people (human and imported), human (annotators' judgments made here), imported, ai, "
        "both (human and ai) or all",
    )
    eval_fraction: float = Field(default=0.2, ge=0, lt=1, description="share of items held out (by a hash of their id)")
    embed_batch_size: int = Field(default=32, ge=1, le=1024, description="texts per batch when embedding or scoring")
    dropout: bool = Field(default=False, description="keep the backbone's dropout when fine-tuning (off, as TRL does)")
    # A tiny model built from a config instead of loading weights: for tests and smoke runs, only
    # where the operator allows it (ALLOW_MODEL_FROM_CONFIG; models_srv.model_sources).
    from_config: dict[str, Any] | None = Field(default=None, description="a tiny model built from a config (tests)")

    @field_validator("max_length")
    @classmethod
    def _length_or_default(cls, value: int) -> int:
        if 0 < value < 16:
            raise ValueError("max_length is 0 (the mode's default) or at least 16")
        return value

    def resolved_max_length(self) -> int:
        return self.max_length or (128 if self.mode == "top" else 256)

    def resolved_batch_size(self) -> int:
        return self.batch_size or (8 if self.mode == "top" else 16)

    def resolved_epochs(self) -> int:
        return self.epochs or {"frozen": 60, "top": 1, "full": 2}.get(self.mode, 1)

    def resolved_lr(self) -> float:
        return self.lr or {"frozen": 3e-3, "top": 1e-4, "full": 3e-5}.get(self.mode, 3e-3)


def check_sources(config: TrainConfig) -> None:
    """Refuse (ModelSourceError) a config naming a model this server does not load for it."""
    from models_srv.model_sources import check_from_config, check_model_source

    check_model_source(config.backbone)
    if config.from_config is not None:
        check_from_config(config.from_config)


def backbone_path(name: str) -> str:
    """The local folder to load the model `name` from (models_srv.model_sources' rule)."""
    from models_srv.model_sources import resolve_model_source

    return resolve_model_source(name)


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def autocast_dtype(precision: str, device: str) -> Any:
    """bf16 autocast on GPUs that support it (or when asked), else None (fp32)."""
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _seed_all(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Backbone: tokenization with the right truncation, pooling


class Encoder:
    """Turns (prompt, response) into token ids and pooled embeddings."""

    def __init__(self, config: TrainConfig, device: str, saved_backbone: Path | None = None) -> None:
        """`saved_backbone`: a reward-model version's own backbone folder (written by this server);
        otherwise the config's model, checked again here (a stored config may predate the rule)."""
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from models_srv.model_sources import check_built_config, check_from_config

        self.config = config
        self.device = device
        if saved_backbone is not None:
            self.tokenizer = AutoTokenizer.from_pretrained(str(saved_backbone))
            self.model = AutoModel.from_pretrained(str(saved_backbone))
        elif config.from_config is not None:
            check_sources(config)
            spec = check_from_config(config.from_config)
            self.tokenizer = AutoTokenizer.from_pretrained(backbone_path(spec.pop("tokenizer", DEFAULT_BACKBONE)))
            model_config = AutoConfig.for_model(**{"vocab_size": self.tokenizer.vocab_size, **spec})
            check_built_config(model_config)
            torch.manual_seed(config.seed)
            self.model = AutoModel.from_config(model_config)
        else:
            check_sources(config)
            path = backbone_path(config.backbone)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.to(device)
        self.decoder = (
            bool(getattr(self.model.config, "is_decoder", False))
            or any(a.endswith("ForCausalLM") for a in (self.model.config.architectures or []))
            or self.model.config.model_type in {"gpt2", "llama", "mistral", "qwen2", "gemma", "phi", "opt", "gpt_neox"}
        )
        self.dim = int(self.model.config.hidden_size)
        # top mode reads the whole dialogue as one text, keeping its end; the others pair prompt and
        # response and pool the response's tokens
        self.dialogue = config.mode == "top"
        self.key = hashlib.sha256(
            json.dumps(
                [
                    config.backbone,
                    config.from_config,
                    config.seed if config.from_config else None,
                    config.resolved_max_length(),
                    self.decoder,
                    "dialogue" if self.dialogue else "response-pool",  # bump when pooling changes
                ],
                sort_keys=True,
            ).encode()
        ).hexdigest()

    def encode(self, prompt: str, response: str) -> tuple[list[int], list[int] | None]:
        """Token ids (and, for BERT-like pairs, segment ids) of prompt + response.

        Keep the end of the prompt (the latest turns) and the start of the response: long dialogues
        share their opening, so cutting from the end would make pairs identical. The cut is made on
        token boundaries (offsets of a fast tokenizer), then the two parts are encoded as a pair so
        each backbone gets its own special tokens."""
        tok = self.tokenizer
        if self.dialogue:
            return self._encode_dialogue(prompt, response), None
        p = tok(prompt, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        r = tok(response, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        lp, lr = len(p["input_ids"]), len(r["input_ids"])
        max_length = self.config.resolved_max_length()
        avail = max_length - tok.num_special_tokens_to_add(pair=True)
        r_keep = min(lr, max(avail - lp, (avail * 3) // 4))
        p_keep = max(0, min(lp, avail - r_keep))
        p_text = prompt[p["offset_mapping"][lp - p_keep][0] :] if p_keep else ""
        r_text = response[: r["offset_mapping"][r_keep - 1][1]] if r_keep else ""
        out = tok(p_text, r_text, truncation=True, max_length=max_length)
        types = out.get("token_type_ids")
        return out["input_ids"], (list(types) if types is not None and any(types) else None)

    def _encode_dialogue(self, prompt: str, response: str) -> list[int]:
        """The dialogue as one text (`dialogue_prompt(prompt) + response`), cut from the start: a
        reward model reads the response in its context, and the latest turns matter most."""
        tok = self.tokenizer
        text = dialogue_prompt(prompt) + response
        ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
        prefix, suffix = self._specials()
        keep = max(1, self.config.resolved_max_length() - len(prefix) - len(suffix))
        return prefix + list(ids[-keep:]) + suffix

    def _specials(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after one text ([CLS] / [SEP], <s>)."""
        if not hasattr(self, "_special_ids"):
            bare = self.tokenizer("a", add_special_tokens=False)["input_ids"]
            full = self.tokenizer("a", add_special_tokens=True)["input_ids"]
            at = next((i for i in range(len(full)) if full[i : i + len(bare)] == bare), 0)
            self._special_ids = (list(full[:at]), list(full[at + len(bare) :]))
        return self._special_ids

    def ids(self, prompt: str, response: str) -> list[int]:
        return self.encode(prompt, response)[0]

    def batch(self, encoded: Sequence[Any]) -> dict[str, Any]:
        """Pad a batch of `ids` lists or `encode` tuples into tensors on the device."""
        import torch

        pairs = [(e, None) if isinstance(e, list) else e for e in encoded]
        width = max(len(x) for x, _ in pairs)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(pairs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        types = torch.zeros((len(pairs), width), dtype=torch.long)
        has_types = any(t is not None for _, t in pairs)
        for i, (x, t) in enumerate(pairs):
            input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, : len(x)] = 1
            if t is not None:
                types[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        inputs = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
        if has_types:
            inputs["token_type_ids"] = types.to(self.device)
        return inputs

    def pool(self, model: Any, inputs: dict[str, Any]) -> Any:
        """Decoders: the last token. Encoders: the mean over the response's tokens (segment 1)
        where the tokenizer marks segments, else over all tokens. Pooling the response alone keeps
        a long shared prompt from drowning the difference between two responses."""
        import torch

        hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"]
        if self.decoder:
            last = mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
        types = inputs.get("token_type_ids")
        if types is not None:
            response = mask * types
            mask = torch.where(response.sum(dim=1, keepdim=True) > 0, response, mask)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-6)

    def embed(self, pairs: Sequence[tuple[str, str]], progress: Callable[[int], None] | None = None) -> Any:
        """Embeddings of many texts, in length-sorted batches (little padding), without gradients."""
        import torch

        all_ids = [self.encode(p, r) for p, r in pairs]
        order = sorted(range(len(all_ids)), key=lambda i: len(all_ids[i][0]))
        out = torch.zeros((len(all_ids), self.dim), dtype=torch.float32)
        dtype = autocast_dtype(self.config.precision, self.device)
        self.model.eval()
        bs = self.config.embed_batch_size
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                inputs = self.batch([all_ids[i] for i in idx])
                with torch.autocast(self.device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                    pooled = self.pool(self.model, inputs)
                out[idx] = pooled.float().cpu()
                if progress:
                    progress(min(len(order), start + bs))
        return out


# ---------------------------------------------------------------------------------------------
# Top mode: the lower layers frozen and run once, the top layers trained over their cached output


def layer_stack(model: Any) -> Any:
    """The backbone's list of transformer blocks (BERT-like `encoder.layer`, Llama-like `layers`,
    GPT-2-like `h`, ...), or ValueError naming the model type."""
    from torch import nn

    for path in ("encoder.layer", "layers", "h", "decoder.layers", "transformer.layer", "transformer.h"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList) and len(obj):
            return obj
    raise ValueError(f"top mode: no list of layers found in a {model.config.model_type!r} model; use mode 'full'")


def top_param_names(model: Any, n: int) -> list[str]:
    """The parameters top mode trains: the last `n` blocks and what follows them (a final norm),
    not the embeddings nor the blocks below."""
    layers = layer_stack(model)
    lower = {id(p) for layer in layers[: max(0, len(layers) - n)] for p in layer.parameters()}
    return [
        name
        for name, param in model.named_parameters()
        if id(param) not in lower and not any(e in name for e in ("embed", "wte", "wpe"))
    ]


class TopLayers:
    """The top `n` blocks of a backbone as the only trainable part (with whatever follows them,
    such as a final norm). For BERT-like encoders the input of the first trained block is computed
    once per text, without gradients, and kept (fp16, each text at its own length) while it fits
    in `cache_mb`; each step then runs only the trained blocks. Otherwise (decoders, or too many
    tokens to keep) each step runs the whole backbone, gradients stopping at the trained blocks.
    Both paths compute the same function; the first cached batch is checked against the whole
    backbone and the cache is dropped if they differ."""

    def __init__(self, encoder: Encoder, n: int, cache_mb: int) -> None:
        self.encoder = encoder
        model = encoder.model
        self.layers = layer_stack(model)
        self.n = min(n, len(self.layers))
        self.top = self.layers[len(self.layers) - self.n :]
        names = set(top_param_names(model, n))
        self.params = []
        for name, param in model.named_parameters():
            param.requires_grad_(name in names)
            if name in names:
                self.params.append(param)
        self.cache_mb = cache_mb
        self.cacheable = (
            not encoder.decoder and hasattr(getattr(model, "encoder", None), "layer") and hasattr(model, "embeddings")
        )
        self.states: dict[tuple[str, str], Any] = {}

    def fill(
        self, texts: list[tuple[str, str]], token_ids: dict[tuple[str, str], Any], progress: Callable[[int], None]
    ) -> bool:
        """Compute and keep the trained blocks' input for every text; False when it would not fit."""
        import torch

        if not self.cacheable:
            return False
        tokens = sum(len(token_ids[t][0]) for t in texts)
        if tokens * self.encoder.dim * 2 > self.cache_mb * 2**20:
            return False
        model = self.encoder.model
        level = len(self.layers) - self.n
        order = sorted(range(len(texts)), key=lambda i: len(token_ids[texts[i]][0]))
        was_training = model.training
        model.eval()
        bs = self.encoder.config.embed_batch_size
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                keys = [texts[i] for i in order[start : start + bs]]
                inputs = self.encoder.batch([token_ids[k] for k in keys])
                hidden = model.embeddings(input_ids=inputs["input_ids"], token_type_ids=inputs.get("token_type_ids"))
                hidden = self._run(self.layers[:level], hidden, inputs["attention_mask"])
                lengths = inputs["attention_mask"].sum(1).tolist()
                for k, h, n in zip(keys, hidden, lengths, strict=True):
                    self.states[k] = h[:n].to(torch.float16).cpu().clone()
                progress(min(len(order), start + bs))
        model.train(was_training)
        return True

    def forward(self, keys: list[tuple[str, str]]) -> Any:
        """Pooled embeddings of cached texts through the trained blocks (mean over all tokens)."""
        import torch

        device = self.encoder.device
        width = max(self.states[k].shape[0] for k in keys)
        hidden = torch.zeros((len(keys), width, self.encoder.dim), dtype=torch.float32)
        mask = torch.zeros((len(keys), width), dtype=torch.float32)
        for i, k in enumerate(keys):
            n = self.states[k].shape[0]
            hidden[i, :n] = self.states[k].float()
            mask[i, :n] = 1
        hidden, mask = hidden.to(device), mask.to(device)
        h = self._run(self.top, hidden, mask)
        weights = mask.unsqueeze(-1).to(h.dtype)
        return (h * weights).sum(1) / weights.sum(1).clamp(min=1e-6)

    @staticmethod
    def _run(blocks: Any, hidden: Any, mask: Any) -> Any:
        """BERT-like blocks over `hidden`, padding masked out (an additive mask, as BERT builds it)."""
        import torch

        additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for block in blocks:
            out = block(hidden, attention_mask=additive)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def agrees(self, keys: list[tuple[str, str]], token_ids: dict[tuple[str, str], Any]) -> bool:
        """The cached path gives what the whole backbone gives, on these texts (checked once)."""
        import torch

        model = self.encoder.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            cached = self.forward(keys).float()
            whole = self.encoder.pool(model, self.encoder.batch([token_ids[k] for k in keys])).float()
        model.train(was_training)
        scale = whole.abs().max().clamp(min=1.0)
        return bool(((cached - whole).abs().max() / scale) < 1e-2)


def text_sha(prompt: str, response: str) -> str:
    return hashlib.sha256(f"{prompt}\x00{response}".encode()).hexdigest()


def cached_embeddings(
    encoder: Encoder, pairs: list[tuple[str, str]], progress: Callable[[int, int], None] | None = None
) -> Any:
    """Embeddings for (prompt, response) pairs, computing only those not cached for this backbone."""
    import numpy as np
    import torch

    from models_srv.models import EmbeddingCache

    shas = [text_sha(p, r) for p, r in pairs]
    unique = list(dict.fromkeys(shas))
    found: dict[str, Any] = {}
    for start in range(0, len(unique), 5000):
        chunk = unique[start : start + 5000]
        for sha, blob in EmbeddingCache.objects.filter(backbone_key=encoder.key, text_sha__in=chunk).values_list(
            "text_sha", "vector"
        ):
            found[sha] = np.frombuffer(bytes(blob), dtype=np.float32)
    missing = [s for s in unique if s not in found]
    if missing:
        first = {s: pairs[i] for i, s in reversed(list(enumerate(shas)))}
        todo = [first[s] for s in missing]
        vectors = encoder.embed(todo, (lambda n: progress(n, len(todo))) if progress else None).numpy()
        EmbeddingCache.objects.bulk_create(
            [
                EmbeddingCache(backbone_key=encoder.key, text_sha=s, vector=v.tobytes())
                for s, v in zip(missing, vectors, strict=True)
            ],
            ignore_conflicts=True,
            batch_size=1000,
        )
        found.update(zip(missing, vectors, strict=True))
    return torch.from_numpy(np.stack([found[s] for s in shas])) if shas else torch.zeros((0, encoder.dim))


# ---------------------------------------------------------------------------------------------
# Heads and losses


def make_heads(dim: int, ensemble: int, n_aspects: int, kind: str) -> Any:
    import torch
    from torch import nn

    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(dim, dim), nn.GELU()) if kind == "mlp" else nn.Identity()
            self.reward = nn.Linear(dim, ensemble)
            self.aspects = nn.Linear(dim, n_aspects) if n_aspects else None

        def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            h = self.trunk(emb)
            return self.reward(h), (self.aspects(h) if self.aspects is not None else None)

    heads = Heads()
    with torch.no_grad():  # each ensemble member starts from its own random direction
        nn.init.normal_(heads.reward.weight, std=1.0 / math.sqrt(dim))
        heads.reward.bias.zero_()
    return heads


def dialogue_prompt(prompt: str) -> str:
    """What precedes the response in the one text top mode reads: "<prompt>\n\nAssistant: " (the
    dataset export's `pairs_plain` prompts are this, so TRL's prompt + response is the same text)."""
    return f"{prompt}\n\nAssistant: " if prompt else ""


def strength_margin(strength: float, margin_scale: float) -> float:
    """The margin Bradley-Terry asks of a preference of this strength: `margin_scale` per level
    above the first, so none at the first level (every HH pair, every one-level schema). `bt_loss`
    applies the same on tensors; the dataset export writes it as TRL's `margin`."""
    return margin_scale * max(float(strength), 1.0) - margin_scale


def bt_loss(r_chosen: Any, r_rejected: Any, strength: Any, tie: Any, weights: Any, cfg: TrainConfig) -> Any:
    """Bradley-Terry with margin per ensemble member; ties towards equal rewards. Shapes [B, N]."""
    import torch.nn.functional as F  # noqa: N812

    diff = r_chosen - r_rejected
    margin = (cfg.margin_scale * strength.clamp(min=1) - cfg.margin_scale).unsqueeze(1)  # strength_margin
    pref = F.softplus(-(diff - margin))  # -log sigmoid(diff - margin)
    tie_l = F.binary_cross_entropy_with_logits(diff, diff.new_full(diff.shape, 0.5), reduction="none")
    tie = tie.unsqueeze(1)
    per = pref * (1 - tie) + cfg.tie_weight * tie_l * tie
    return (per * weights).sum() / weights.sum().clamp(min=1e-6)


def pl_loss(scores: Any, ranks: Any, weights: Any) -> Any:
    """Plackett-Luce over one list: scores [K, N], ranks [K] (1 = best; tied groups share a step)."""
    import torch

    total = scores.new_zeros(scores.shape[1])
    remaining = torch.ones_like(ranks, dtype=torch.bool)
    for level in torch.unique(ranks).tolist():
        group = ranks == level
        if remaining.sum() <= 1:
            break
        lse = torch.logsumexp(scores[remaining], dim=0)
        total = total + (lse - scores[group]).mean(dim=0)
        remaining = remaining & ~group
    return (total * weights).sum() / weights.sum().clamp(min=1e-6)


# ---------------------------------------------------------------------------------------------
# The model as used after training


@dataclass
class RewardModel:
    config: TrainConfig
    encoder: Encoder
    heads: Any
    aspects: list[str]
    aspect_scales: dict[str, tuple[int, int]]
    # What training did, as observed while it ran (not what the config asked for): set by `train`,
    # stored with the version's metrics.
    training: dict[str, Any] = field(default_factory=dict)
    # The pluralistic mode's mixture (heads is None then): models_srv.pluralistic.Plural.
    plural: Any = None

    def score(self, pairs: list[tuple[str, str]], use_cache: bool = True) -> tuple[Any, Any, Any]:
        """(mean reward, ensemble std, aspect predictions on their scales) per (prompt, response).
        A pluralistic model scores for the population: its heads weighted by the groups' sizes,
        the spread their disagreement."""
        import torch

        if self.plural is not None:
            emb = cached_embeddings(self.encoder, pairs) if use_cache else self.encoder.embed(pairs)
            mean, std = self.plural.population_scores(emb.double().numpy(), [r for _, r in pairs])
            return torch.from_numpy(mean).float(), torch.from_numpy(std).float(), None

        if self.config.mode == "frozen" and use_cache:
            emb = cached_embeddings(self.encoder, pairs)
        else:
            emb = self.encoder.embed(pairs)
        self.heads.eval()
        with torch.inference_mode():
            rewards, aspects = self.heads(emb.to(next(self.heads.parameters()).device))
        rewards = rewards.float().cpu()
        std = rewards.std(dim=1) if rewards.shape[1] > 1 else torch.zeros(rewards.shape[0])
        scaled = None
        if aspects is not None:
            lo = torch.tensor([self.aspect_scales[a][0] for a in self.aspects], dtype=torch.float32)
            hi = torch.tensor([self.aspect_scales[a][1] for a in self.aspects], dtype=torch.float32)
            scaled = lo + torch.sigmoid(aspects.float().cpu()) * (hi - lo)
        return rewards.mean(dim=1), std, scaled

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        if self.plural is not None:
            meta = {"config": self.config.model_dump(), "aspects": [], "aspect_scales": {}, "dim": self.encoder.dim}
            meta["pluralistic"] = "pluralistic.json"
            (path / "pluralistic.json").write_text(json.dumps(self.plural.to_json()))
            (path / "reward_model.json").write_text(json.dumps(meta, indent=2))
            return
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()}, path / "heads.safetensors"
        )
        meta = {
            "config": self.config.model_dump(),
            "aspects": self.aspects,
            "aspect_scales": self.aspect_scales,
            "dim": self.encoder.dim,
            "decoder": self.encoder.decoder,
        }
        if self.config.mode == "full" or self.config.from_config is not None:
            self.encoder.model.save_pretrained(path / "backbone", safe_serialization=True)
            self.encoder.tokenizer.save_pretrained(path / "backbone")
            meta["backbone_saved"] = True
        elif self.config.mode == "top":  # only what was trained; the rest is the named backbone
            state = self.encoder.model.state_dict()
            names = top_param_names(self.encoder.model, self.config.top_layers)
            save_file({k: state[k].detach().cpu().contiguous() for k in names}, path / "top_layers.safetensors")
            meta["top_layers_saved"] = names
        (path / "reward_model.json").write_text(json.dumps(meta, indent=2))


def load_model(path: Path, device: str = "auto") -> RewardModel:
    from safetensors.torch import load_file

    meta = json.loads((path / "reward_model.json").read_text())
    config = TrainConfig.model_validate(meta["config"])
    device = pick_device(device if device != "auto" else config.device)
    if meta.get("pluralistic"):
        from models_srv.pluralistic import Plural

        plural = Plural.from_json(json.loads((path / meta["pluralistic"]).read_text()))
        return RewardModel(config, Encoder(config, "cpu"), None, [], {}, plural=plural)
    if meta.get("backbone_saved"):
        config_for_load = config.model_copy(update={"backbone": str(path / "backbone"), "from_config": None})
        encoder = Encoder(config_for_load, device, saved_backbone=path / "backbone")
    else:
        encoder = Encoder(config, device)
        if meta.get("top_layers_saved"):
            state = load_file(path / "top_layers.safetensors")
            missing = set(meta["top_layers_saved"]) - set(state)
            unknown = set(state) - set(dict(encoder.model.named_parameters()))
            if missing or unknown:
                raise ValueError(f"top_layers.safetensors does not fit the backbone: {sorted(missing | unknown)[:3]}")
            encoder.model.load_state_dict(state, strict=False)
            encoder.model.to(device)
    heads = make_heads(meta["dim"], config.ensemble, len(meta["aspects"]), config.head)
    heads.load_state_dict(load_file(path / "heads.safetensors"))
    heads.to(device)
    return RewardModel(config, encoder, heads, meta["aspects"], {k: tuple(v) for k, v in meta["aspect_scales"].items()})


# ---------------------------------------------------------------------------------------------
# Training


Progress = Callable[[dict[str, Any]], None]


def _index_texts(examples: Examples) -> tuple[list[tuple[str, str]], dict[tuple[str, str], int]]:
    index: dict[tuple[str, str], int] = {}
    for pr in examples.texts():
        index.setdefault(pr, len(index))
    return list(index), index


def _dist() -> tuple[int, int]:
    """(rank, world size) when launched by torchrun with several processes, else (0, 1)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if os.environ.get("LOCAL_RANK") is not None else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)


def train(
    data: SplitData,
    config: TrainConfig,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RewardModel:
    """Train a reward model on data.train. Raises TrainingCancelled when should_stop() says so."""
    import torch

    _seed_all(config.seed)
    rank, world = _dist()
    device = pick_device(config.device)
    if world > 1 and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    encoder = Encoder(config, device)
    report = progress or (lambda _: None)
    stop = should_stop or (lambda: False)
    texts, index = _index_texts(data.train)
    if not texts:
        raise ValueError("the snapshot has no training examples")
    if config.mode == "pluralistic":
        return _train_pluralistic(data, config, encoder, report, stop)
    aspects = sorted(data.aspects)
    heads = make_heads(encoder.dim, config.ensemble, len(aspects), config.head).to(device)
    if config.mode == "frozen":
        started = time.monotonic()

        def embed_progress(done: int, total: int) -> None:
            if stop():
                raise TrainingCancelled
            rate = done / max(1e-6, time.monotonic() - started)
            report(
                {"phase": "embedding", "step": done, "total": total, "eta_s": round((total - done) / max(rate, 1e-6))}
            )

        table = cached_embeddings(encoder, texts, embed_progress).to(device)
        params = list(heads.parameters())
        model = None
    elif config.mode == "top":
        table = None
        model = encoder.model
        model.train()
        for module in model.modules():  # dropout off, as in full mode's default
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        top = TopLayers(encoder, config.top_layers, _activation_cache_mb())
        params = top.params + list(heads.parameters())
    else:
        table = None
        model = encoder.model
        model.train()
        if not config.dropout:  # reward models train better, and faster, without dropout
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        if getattr(model, "gradient_checkpointing_enable", None) and device != "cpu":
            model.gradient_checkpointing_enable()
        params = list(model.parameters()) + list(heads.parameters())
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None)
    lr = config.resolved_lr()
    if config.mode == "top":  # the heads start from nothing; the blocks from pretrained weights
        groups = [{"params": top.params, "lr": lr}, {"params": list(heads.parameters()), "lr": lr * 10}]
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    dtype = autocast_dtype(config.precision, device)
    gen = torch.Generator().manual_seed(config.seed)
    # Online bootstrap: each ensemble member weighs each example by its own Poisson(1) draw.
    n_heads = config.ensemble
    boot = {
        kind: (torch.poisson(torch.ones((n, n_heads)), generator=gen) if n_heads > 1 else torch.ones((n, 1)))
        for kind, n in (
            ("pair", len(data.train.pairs)),
            ("list", len(data.train.lists)),
            ("rating", len(data.train.ratings)),
        )
    }
    token_ids = {} if table is not None else {pr: encoder.encode(*pr) for pr in texts}
    cached_top = False
    if config.mode == "top":
        started = time.monotonic()

        def lower_progress(done: int) -> None:
            if stop():
                raise TrainingCancelled
            rate = done / max(1e-6, time.monotonic() - started)
            report({"phase": "encoding", "step": done, "total": len(texts), "eta_s": round((len(texts) - done) / rate)})

        cached_top = top.fill(texts, token_ids, lower_progress)
        if cached_top:
            probe = texts[: min(8, len(texts))]
            cached_top = top.agrees(probe, token_ids)

    def embed(keys: list[tuple[str, str]]) -> Any:
        if table is not None:
            return table[torch.tensor([index[k] for k in keys], device=device)]
        if cached_top:
            return top.forward(keys).float()
        inputs = encoder.batch([token_ids[k] for k in keys])
        return encoder.pool(model, inputs).float()

    batches = _batches(
        data.train,
        config.resolved_batch_size(),
        config.seed,
        lambda pr: len(token_ids[pr][0]) if pr in token_ids else 0,
    )
    epochs = config.resolved_epochs()
    total = epochs * len(batches)
    scheduler = None
    if config.mode == "top":  # warm up over the first tenth of the updates, then decay to zero
        updates = max(1, math.ceil(total / max(1, world) / config.grad_accum))
        warm = max(1, updates // 10)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: min(1.0, (k + 1) / warm) * max(0.0, 1.0 - k / updates)
        )
    step, started, last_report = 0, time.monotonic(), 0.0
    ema = None
    lo_hi = [data.aspects[a] for a in aspects]
    record: dict[str, Any] = {"grad_accum": config.grad_accum, "optimizer_steps": 0}
    hooks = _watch_output_dtypes(heads, model, top if config.mode == "top" else None, record)
    device_type = device.split(":")[0]
    for epoch in range(epochs):
        order = list(range(len(batches)))
        random.Random(config.seed + epoch).shuffle(order)
        for bi in order:
            if bi % world != rank:
                continue
            kind, members = batches[bi]
            with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
                if "autocast" not in record:  # read inside the context: what the forward runs under
                    on = torch.is_autocast_enabled(device_type)
                    record["autocast"] = _dtype_name(torch.get_autocast_dtype(device_type)) if on else None
                loss = _batch_loss(kind, members, data.train, embed, heads, boot, config, aspects, lo_hi, device)
            if config.l2:
                loss = loss + config.l2 * (heads.reward.weight.float() ** 2).sum() / n_heads
                if heads.aspects is not None:
                    loss = loss + config.l2 * (heads.aspects.weight.float() ** 2).sum() / max(1, len(aspects))
            (loss / config.grad_accum).backward()
            step += 1
            if step % config.grad_accum == 0 or step == total:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                record["optimizer_steps"] += 1
                optimizer.zero_grad(set_to_none=True)
                if scheduler is not None:
                    scheduler.step()
            value = float(loss.detach())
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            now = time.monotonic()
            if now - last_report >= 1.0 or step == total:
                last_report = now
                if stop():
                    raise TrainingCancelled
                rate = step / max(1e-6, now - started)
                report(
                    {
                        "phase": "training",
                        "epoch": epoch + 1,
                        "epochs": epochs,
                        "step": step,
                        "total": total,
                        "loss": round(ema, 4),
                        "eta_s": round((total - step) / max(rate, 1e-6)),
                    }
                )
    for hook in hooks:
        hook.remove()
    record["micro_batches"] = step
    if model is not None and world > 1:
        encoder.model = model.module
    return RewardModel(config, encoder, heads, aspects, dict(data.aspects), training=record)


def _train_pluralistic(
    data: SplitData, config: TrainConfig, encoder: Encoder, report: Progress, stop: Callable[[], bool]
) -> RewardModel:
    """The pluralistic mode: embeddings of every response (cached, as the frozen mode's), then the
    mixture of reward heads over them (`models_srv.pluralistic.train_plural`); CPU and numpy."""
    from models_srv.pluralistic import train_plural

    if not data.train.pairs:
        raise ValueError("the pluralistic mode learns from pairwise judgments; the snapshot has none")
    texts, index = _index_texts(Examples(pairs=data.train.pairs))
    started = time.monotonic()

    def embed_progress(done: int, total: int) -> None:
        if stop():
            raise TrainingCancelled
        rate = done / max(1e-6, time.monotonic() - started)
        report({"phase": "embedding", "step": done, "total": total, "eta_s": round((total - done) / max(rate, 1e-6))})

    emb = cached_embeddings(encoder, texts, embed_progress).double().numpy()
    report({"phase": "training", "step": 0, "total": 1})
    plural = train_plural(data.train.pairs, emb, index, [r for _, r in texts], config)
    report({"phase": "training", "step": 1, "total": 1})
    record = {"groups": plural.mixture.k, "k_scores": plural.k_scores, "em_iterations": plural.mixture.iterations}
    return RewardModel(config, encoder, None, [], {}, training=record, plural=plural)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _watch_output_dtypes(heads: Any, model: Any, top: TopLayers | None, record: dict[str, Any]) -> list[Any]:
    """Forward hooks that note, in `record["output_dtypes"]`, the dtype of the first output of the
    reward heads and of a trained linear layer of the backbone (none in frozen mode): bfloat16 where
    the matrix products ran under bf16 autocast, float32 where they did not."""
    from torch import nn

    seen: dict[str, str] = {}
    record["output_dtypes"] = seen

    def watch(module: Any, key: str) -> Any:
        def note(_module: Any, _inputs: Any, out: Any) -> None:  # None: the output stays as it is
            seen.setdefault(key, _dtype_name(out.dtype))

        return module.register_forward_hook(note)

    hooks = [watch(heads.reward, "heads")]
    trained = top.top if top is not None else model
    linear = next((m for m in trained.modules() if isinstance(m, nn.Linear)), None) if trained is not None else None
    if linear is not None:
        hooks.append(watch(linear, "backbone"))
    return hooks


def _activation_cache_mb() -> int:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        return int(getattr(settings, "RM_ACTIVATION_CACHE_MB", 4096))
    except ImproperlyConfigured:  # outside Django (a script): the default
        return 4096


def _batches(
    examples: Examples, size: int, seed: int, length: Callable[[tuple[str, str]], int]
) -> list[tuple[str, list[int]]]:
    """Batches of one kind each. Pairs are bucketed by length so padding stays small."""
    rng = random.Random(seed)
    out: list[tuple[str, list[int]]] = []
    pairs = list(range(len(examples.pairs)))
    rng.shuffle(pairs)
    pairs.sort(
        key=lambda i: (
            length((examples.pairs[i].prompt, examples.pairs[i].chosen))
            + length((examples.pairs[i].prompt, examples.pairs[i].rejected))
        )
    )
    out += [("pair", pairs[i : i + size]) for i in range(0, len(pairs), size)]
    lists = list(range(len(examples.lists)))
    out += [("list", lists[i : i + max(1, size // 4)]) for i in range(0, len(lists), max(1, size // 4))]
    ratings = list(range(len(examples.ratings)))
    rng.shuffle(ratings)
    out += [("rating", ratings[i : i + size]) for i in range(0, len(ratings), size)]
    return out


def _batch_loss(
    kind: str,
    members: list[int],
    examples: Examples,
    embed: Callable[[list[tuple[str, str]]], Any],
    heads: Any,
    boot: dict[str, Any],
    cfg: TrainConfig,
    aspects: list[str],
    lo_hi: list[tuple[int, int]],
    device: str,
) -> Any:
    import torch
    import torch.nn.functional as F  # noqa: N812

    weights = boot[kind][members].to(device)
    if kind == "pair":
        ex = [examples.pairs[i] for i in members]
        emb = embed([(e.prompt, e.chosen) for e in ex] + [(e.prompt, e.rejected) for e in ex])
        rewards, _ = heads(emb)
        rc, rr = rewards[: len(ex)].float(), rewards[len(ex) :].float()
        strength = torch.tensor([e.strength for e in ex], dtype=torch.float32, device=device)
        tie = torch.tensor([1.0 if e.tie else 0.0 for e in ex], device=device)
        return bt_loss(rc, rr, strength, tie, weights, cfg)
    if kind == "list":
        losses = []
        for j, i in enumerate(members):
            listed = examples.lists[i]
            rewards, _ = heads(embed([(listed.prompt, r) for r in listed.responses]))
            ranks = torch.tensor(listed.ranks, device=device)
            losses.append(pl_loss(rewards.float(), ranks, weights[j : j + 1]))
        return torch.stack(losses).mean()
    rated = [examples.ratings[i] for i in members]
    _, pred = heads(embed([(e.prompt, e.response) for e in rated]))
    target = torch.full((len(rated), len(aspects)), float("nan"), device=device)
    for r, e in enumerate(rated):
        for c, a in enumerate(aspects):
            if a in e.ratings:
                lo, hi = lo_hi[c]
                target[r, c] = (e.ratings[a] - lo) / (hi - lo)
    known = ~torch.isnan(target)
    if pred is None or not known.any():
        return torch.zeros((), device=device, requires_grad=True)
    err = F.mse_loss(torch.sigmoid(pred.float())[known], target[known], reduction="none")
    return err.mean()


def iter_chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]
