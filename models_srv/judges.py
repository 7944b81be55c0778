"""AI labelers: an LLM judge over any OpenAI-compatible chat-completions endpoint, a reward-model
judge, and a density-ratio judge from two local causal LMs. Each turns items into payloads of the
project's schema (validated like a human's), with a confidence and its raw output.

The LLM judge asks for a JSON answer, re-asks when it does not parse (then records the failure
with the raw text), retries 429/5xx/timeouts with exponential backoff (honouring Retry-After),
judges both response orders and reconciles them. Orders that disagree (the preferred response
differs once mapped back) give no preference: a tie where the schema allows ties, else an
abstention (no judgment; counted on the run, with both answers kept). Following either order
would turn position bias into labels. Each order's verdict is kept in shown order in the raw
output (models_srv.verdicts), which is what position bias is measured from.

An LLM judge sends its key to its `base_url`, and both come from a curator's config, so the server
decides what they may name (`endpoint_refusal`): the key only from environment variables whose
names start with KEY_ENV_PREFIX or that the operator lists in AI_LABELER_KEY_ENVS (never
SECRET_KEY, DATABASE_URL, ...), and the host only one of AI_LABELER_ALLOWED_HOSTS when the operator
sets it. The check runs when a config is saved and again when the worker connects, so a config
stored earlier, or one the operator's settings no longer allow, sends nothing.

A density-ratio judge loads the two models its config names, by the rule of
models_srv.model_sources (the packaged default, Hugging Face ids from the workers' cache, folders
under MODEL_DIRS; from_config only where ALLOW_MODEL_FROM_CONFIG is on), checked on saving and
again when the worker loads them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import validate_host
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from annotation.models import Item, Labeler
from annotation.queue import to_stored_order
from annotation.schema import JudgmentRead, JudgmentSchema, PayloadError, format_validation_error

# ---------------------------------------------------------------------------------------------
# Configurations (stored in Labeler.config; validated here)


class LLMJudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str = Field(description="e.g. https://api.openai.com/v1 or http://localhost:8000/v1 (vLLM, Ollama)")
    model: str
    api_key_env: str = Field(
        default="",
        description="name of the environment variable holding the API key: PREFLOOP_LLM_KEY_..., or one the "
        "operator lists in AI_LABELER_KEY_ENVS",
    )
    api_key_encrypted: str = Field(default="", description="set through the form; never shown back")
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=600, ge=16, le=32_000)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=4, ge=0, le=20, description="retries on 429, 5xx and timeouts")
    parse_retries: int = Field(default=1, ge=0, le=5, description="re-asks when the answer does not parse")
    backoff_s: float = Field(default=1.0, ge=0)
    concurrency: int = Field(default=4, ge=1, le=64)
    swap_positions: bool = Field(default=True, description="judge both orders and reconcile")
    prompt_cost_per_1k: float = Field(default=0.0, ge=0)
    completion_cost_per_1k: float = Field(default=0.0, ge=0)
    templates: dict[str, str] = Field(default_factory=dict, description="overrides of DEFAULT_TEMPLATES by key")


class RewardModelJudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(
        default="current",
        description="'current' (this project's current version), or the uuid of a succeeded version of this "
        "project or of any project its curator curates",
    )
    strength_threshold: float = Field(default=1.0, ge=0, description="reward gap above which the preference is strong")
    tie_margin: float = Field(default=0.0, ge=0, description="reward gap under which it is a tie (0 = never)")

    @field_validator("version")
    @classmethod
    def _current_or_uuid(cls, value: str) -> str:
        from uuid import UUID

        if value == "current":
            return value
        try:
            return str(UUID(value))
        except ValueError:
            raise ValueError("version is 'current' or a version's uuid") from None


def version_refusal(version: str) -> str:
    """The one answer for a reward-model version a judge may not use: missing, not succeeded, or
    in a project the user does not curate, alike (so a uuid leaks nothing)."""
    return f"no succeeded reward-model version {version!r} in this project or in one you curate"


class DensityRatioConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strong: str = Field(description="the stronger causal LM: a Hugging Face id, or a folder under MODEL_DIRS")
    weak: str = Field(description="the weaker causal LM: a Hugging Face id, or a folder under MODEL_DIRS")
    preamble: str = Field(default="", description="criteria text put before the prompt, as in CDR")
    max_length: int = Field(default=512, ge=16)
    strength_threshold: float = Field(default=0.5, ge=0)
    tie_margin: float = Field(default=0.0, ge=0)
    scale: float = Field(default=4.0, gt=0, description="sigmoid scale turning a reward gap into confidence")
    from_config: dict[str, Any] | None = Field(
        default=None, description="tests, where ALLOW_MODEL_FROM_CONFIG is on: {'strong': cfg, 'weak': cfg}"
    )

    @model_validator(mode="after")
    def _allowed_models(self) -> DensityRatioConfig:
        from models_srv.model_sources import check_from_config, check_model_source

        check_model_source(self.strong)
        check_model_source(self.weak)
        if self.from_config is not None:
            if set(self.from_config) != {"strong", "weak"}:
                raise ValueError("from_config takes exactly two configs, 'strong' and 'weak'")
            for which in ("strong", "weak"):
                check_from_config(self.from_config[which])
        return self


CONFIGS: dict[str, type[BaseModel]] = {
    Labeler.Kind.LLM: LLMJudgeConfig,
    Labeler.Kind.REWARD_MODEL: RewardModelJudgeConfig,
    Labeler.Kind.DENSITY_RATIO: DensityRatioConfig,
}


def _fernet() -> Any:
    from cryptography.fernet import Fernet

    key = base64.urlsafe_b64encode(hashlib.sha256(f"{settings.SECRET_KEY}:llm-api-keys".encode()).digest())
    return Fernet(key)


def encrypt_api_key(key: str) -> str:
    return _fernet().encrypt(key.encode()).decode()


# An LLM judge's api_key_env may name a variable with this prefix, or one in AI_LABELER_KEY_ENVS.
KEY_ENV_PREFIX = "PREFLOOP_LLM_KEY_"


def key_env_allowed(name: str) -> bool:
    return (name.startswith(KEY_ENV_PREFIX) and len(name) > len(KEY_ENV_PREFIX)) or name in settings.AI_LABELER_KEY_ENVS


def host_allowed(host: str) -> bool:
    """Whether an LLM judge may connect to `host` (AI_LABELER_ALLOWED_HOSTS, matched like
    ALLOWED_HOSTS: exact names, `.example.org` for a domain and its subdomains; empty = any)."""
    allowed = settings.AI_LABELER_ALLOWED_HOSTS
    if not allowed:
        return True
    host = host.lower().rstrip(".")
    return validate_host(host, allowed) or (":" in host and validate_host(f"[{host}]", allowed))


def endpoint_refusal(cfg: LLMJudgeConfig) -> str:
    """Why this server will not send this config's requests ("" when it will)."""
    if cfg.api_key_env and not key_env_allowed(cfg.api_key_env):
        return (
            f"api_key_env {cfg.api_key_env!r} is not allowed: name an environment variable starting with "
            f"{KEY_ENV_PREFIX} (or one the operator lists in AI_LABELER_KEY_ENVS), or give the key itself"
        )
    parts = urlsplit(cfg.base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"base_url {cfg.base_url!r} must be an http:// or https:// URL with a host"
    if not host_allowed(parts.hostname):
        return (
            f"base_url host {parts.hostname!r} is not allowed: this server's operator lets AI labelers connect "
            "only to the hosts in AI_LABELER_ALLOWED_HOSTS"
        )
    return ""


def api_key(cfg: LLMJudgeConfig) -> str:
    if cfg.api_key_encrypted:
        return _fernet().decrypt(cfg.api_key_encrypted.encode()).decode()
    if cfg.api_key_env:
        if not key_env_allowed(cfg.api_key_env):  # a config stored before the rule, or a narrowed list
            raise JudgeError(endpoint_refusal(cfg))
        return os.environ.get(cfg.api_key_env, "")
    return ""


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """A labeler's config as shown back to people: the key is never part of it."""
    return {k: ("(set)" if k == "api_key_encrypted" and v else v) for k, v in config.items()}


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class Label:
    item_id: int
    payload: dict[str, Any] | None = None
    confidence: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    abstained: bool = False  # the judge answered, but its answers carry no label (see reconcile)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class JudgeError(Exception):
    """This item cannot be labeled (with the raw output kept for the failure list)."""

    def __init__(self, reason: str, raw: str = "") -> None:
        super().__init__(reason)
        self.raw = raw


# ---------------------------------------------------------------------------------------------
# LLM judge

DEFAULT_TEMPLATES = {
    "system": "You are a careful, impartial judge of AI assistant responses. Follow the instructions exactly.",
    "intro": "Here is a user prompt and {n} candidate responses.\n\n# Prompt\n{prompt}\n\n{responses}",
    "pairwise": (
        'Decide which response is better overall. Give "choice": "A", "B"{tie}, and "strength": an integer '
        "from 1 to {levels} for how much better ({scale})."
    ),
    "ranking": 'Rank all responses from best to worst. Give "ranking": the response letters, best first.',
    "rubric": (
        'Rate every response on each aspect. Give "ratings": an object per response letter, mapping each '
        "aspect to an integer score. Aspects: {aspects}"
    ),
    "spans": (
        'List errors in the responses. Give "spans": a list of {{"response": letter, "quote": exact text copied '
        'from that response, "category": one of {categories}}}.'
    ),
    "answer": (
        'Answer with a single JSON object and nothing else, with the fields asked above plus "confidence": a '
        'number from 0 to 1, and "explanation": one sentence.'
    ),
}


class TransientHTTPError(Exception):
    pass


class OpenAIClient:
    """Chat completions over HTTP with timeouts and retries on 429 / 5xx / network errors."""

    def __init__(self, cfg: LLMJudgeConfig) -> None:
        import httpx

        self.cfg = cfg
        refusal = endpoint_refusal(cfg)  # checked again here: the config may predate the operator's rules
        if refusal:
            raise JudgeError(refusal)
        headers = {"Content-Type": "application/json"}
        key = api_key(cfg)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # No redirects: an allowed host could otherwise pass the key on to one that is not.
        self.http = httpx.Client(
            base_url=cfg.base_url.rstrip("/") + "/", headers=headers, timeout=cfg.timeout_s, follow_redirects=False
        )

    def close(self) -> None:
        self.http.close()

    def chat(self, messages: list[dict[str, str]]) -> tuple[str, int, int]:
        import httpx

        body = {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        attempt = 0
        while True:
            try:
                response = self.http.post("chat/completions", json=body)
                if response.status_code == 429 or response.status_code >= 500:
                    raise TransientHTTPError(f"HTTP {response.status_code}", response.headers.get("retry-after"))
                response.raise_for_status()
                data = response.json()
                text = data["choices"][0]["message"]["content"] or ""
                usage = data.get("usage") or {}
                return text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
            except (TransientHTTPError, httpx.TimeoutException, httpx.TransportError) as exc:
                attempt += 1
                if attempt > self.cfg.max_retries:
                    raise JudgeError(f"the endpoint kept failing after {attempt} tries: {exc}") from None
                retry_after = exc.args[1] if isinstance(exc, TransientHTTPError) and len(exc.args) > 1 else None
                delay = (
                    float(retry_after)
                    if retry_after and str(retry_after).replace(".", "", 1).isdigit()
                    else (self.cfg.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
                )
                time.sleep(min(delay, 60.0))
            except (httpx.HTTPStatusError, ValueError, KeyError, IndexError, TypeError) as exc:
                raise JudgeError(f"the endpoint answered something unusable: {exc}") from None


def build_prompt(cfg: LLMJudgeConfig, schema: JudgmentSchema, prompt: str, shown: list[str]) -> list[dict[str, str]]:
    t = {**DEFAULT_TEMPLATES, **cfg.templates}
    letters = [chr(ord("A") + i) for i in range(len(shown))]
    responses = "\n\n".join(f"# Response {letter}\n{text}" for letter, text in zip(letters, shown, strict=True))
    parts = [t["intro"].format(n=len(shown), prompt=prompt, responses=responses)]
    if schema.pairwise:
        levels = len(schema.pairwise.strengths)
        scale = ", ".join(f"{i} = {s}" for i, s in enumerate(schema.pairwise.strengths, start=1))
        parts.append(
            t["pairwise"].format(tie=', or "tie"' if schema.pairwise.allow_tie else "", levels=levels, scale=scale)
        )
    if schema.ranking:
        parts.append(t["ranking"])
    if schema.rubric:
        aspects = "; ".join(
            f"{a.name} ({a.scale.min}-{a.scale.max}){': ' + a.description if a.description else ''}"
            for a in schema.rubric.aspects
        )
        parts.append(t["rubric"].format(aspects=aspects))
    if schema.spans:
        parts.append(t["spans"].format(categories=", ".join(c.name for c in schema.spans.categories)))
    parts.append(t["answer"])
    return [{"role": "system", "content": t["system"]}, {"role": "user", "content": "\n\n".join(parts)}]


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def extract_json(text: str) -> dict[str, Any]:
    fenced = _FENCE.search(text)
    candidate = fenced.group(1) if fenced else text
    start, end = candidate.find("{"), candidate.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the answer")
    value = json.loads(candidate[start : end + 1])
    if not isinstance(value, dict):
        raise ValueError("the answer is not a JSON object")
    return value


def answer_to_payload(
    answer: dict[str, Any], schema: JudgmentSchema, shown: list[str]
) -> tuple[dict[str, Any], float | None]:
    """Turn a parsed answer (letters in display order) into a display-order payload."""
    letters = {chr(ord("A") + i): i for i in range(len(shown))}
    payload: dict[str, Any] = {}
    if schema.pairwise:
        choice = str(answer.get("choice", "")).strip()
        choice = "tie" if choice.lower() == "tie" else choice.upper()
        strength = 0 if choice == "tie" else int(answer.get("strength", 1))
        payload["pairwise"] = {"choice": choice, "strength": strength}
    if schema.ranking:
        order = [str(x).strip().upper() for x in answer.get("ranking", [])]
        if sorted(order) != sorted(letters):
            raise ValueError(f"ranking must list each response once, got {order}")
        ranks = [0] * len(shown)
        for rank, letter in enumerate(order, start=1):
            ranks[letters[letter]] = rank
        payload["ranking"] = ranks
    if schema.rubric:
        ratings = answer.get("ratings", {})
        payload["rubric"] = [{k: int(v) for k, v in (ratings.get(letter) or {}).items()} for letter in letters]
    if schema.spans:
        marks = []
        for s in answer.get("spans", []) or []:
            idx = letters.get(str(s.get("response", "")).strip().upper())
            quote = str(s.get("quote", ""))
            if idx is None or not quote:
                raise ValueError(f"span without a known response or quote: {s}")
            start = shown[idx].find(quote)
            if start < 0:
                raise ValueError(f"quoted text not found in response {s.get('response')}: {quote[:60]!r}")
            marks.append(
                {
                    "response": idx,
                    "start": len(shown[idx][:start]),
                    "end": len(shown[idx][:start]) + len(quote),
                    "category": s.get("category", ""),
                }
            )
        payload["spans"] = marks
    conf = answer.get("confidence")
    confidence = min(1.0, max(0.0, float(conf))) if isinstance(conf, int | float) else None
    return payload, confidence


class LLMJudge:
    kind = Labeler.Kind.LLM

    def __init__(self, labeler: Labeler) -> None:
        self.cfg = LLMJudgeConfig.model_validate(labeler.config)
        self.client = OpenAIClient(self.cfg)
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def _one_order(self, item: Item, schema: JudgmentSchema, order: list[int], label: Label) -> OrderAnswer:
        """Ask for one order of the responses (re-asking while the answer does not parse)."""
        shown = [item.responses[i]["text"] for i in order]
        messages = build_prompt(self.cfg, schema, item.prompt, shown)
        last_text, problem = "", ""
        for _ in range(self.cfg.parse_retries + 1):
            with self._lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            try:
                text, pt, ct = self.client.chat(messages)
            finally:
                with self._lock:
                    self.active -= 1
            label.prompt_tokens += pt
            label.completion_tokens += ct
            last_text = text
            try:
                payload, confidence = answer_to_payload(extract_json(text), schema, shown)
                stored = to_stored_order(payload, order)
                schema.validate_payload(stored, item.response_texts)
                return OrderAnswer(stored, preference_verdict(payload), confidence, text)
            except (ValueError, TypeError, KeyError, PayloadError) as exc:
                problem = str(exc)
                messages = [
                    *messages,
                    {"role": "assistant", "content": text},
                    {
                        "role": "user",
                        "content": f"That answer could not be used ({problem}). "
                        "Reply with only the JSON object, as specified.",
                    },
                ]
        raise JudgeError(f"the answer did not parse: {problem}", last_text)

    def label(self, item: Item, schema: JudgmentSchema) -> Label:
        """Judge one item; a failure comes back as a Label with its reason (tokens still counted)."""
        label = Label(item.id)
        try:
            return self._label(item, schema, label)
        except JudgeError as exc:
            label.error, label.raw = str(exc), {"text": exc.raw}
            return label

    def _label(self, item: Item, schema: JudgmentSchema, label: Label) -> Label:
        n = item.num_responses
        orders = [list(range(n))] + ([list(reversed(range(n)))] if self.cfg.swap_positions else [])
        answers = [self._one_order(item, schema, order, label) for order in orders]
        label.raw = {
            "answers": [a.text for a in answers],
            "orders": orders,
            "verdicts": [a.verdict for a in answers],
        }
        if len(answers) == 1:
            label.payload = answers[0].stored
            label.confidence = answers[0].confidence if answers[0].confidence is not None else 0.7
            return label
        first, second = answers
        label.payload, label.confidence, consistent = reconcile(
            schema, (first.stored, first.confidence), (second.stored, second.confidence)
        )
        label.raw["order_consistent"] = consistent
        if label.payload is None:
            label.abstained = True
            label.raw["abstained"] = True
        return label

    def ask_shown(self, prompt: str, shown: list[str], schema: JudgmentSchema) -> tuple[Label, dict[str, Any] | None]:
        """One answer to responses shown in this order (the judge audit's probes): the label
        (tokens, or the failure with its raw text) and the verdict in shown order."""
        probe = Item(prompt=prompt, responses=[{"text": t, "model": ""} for t in shown], num_responses=len(shown))
        label = Label(0)
        try:
            answer = self._one_order(probe, schema, list(range(len(shown))), label)
        except JudgeError as exc:
            label.error, label.raw = str(exc), {"text": exc.raw}
            return label, None
        label.payload, label.confidence, label.raw = answer.stored, answer.confidence, {"text": answer.text}
        return label, answer.verdict


@dataclass
class OrderAnswer:
    """The answer for one order of the responses: payload in stored order, verdict in shown order."""

    stored: dict[str, Any]
    verdict: dict[str, Any]
    confidence: float | None
    text: str


def preference_verdict(shown_payload: dict[str, Any]) -> dict[str, Any]:
    """The preference part of a shown-order payload, as models_srv.verdicts reads it."""
    if "pairwise" in shown_payload:
        return dict(shown_payload["pairwise"])
    if "ranking" in shown_payload:
        return {"ranking": list(shown_payload["ranking"])}
    return {}


def reconcile(
    schema: JudgmentSchema, a: tuple[dict[str, Any], float | None], b: tuple[dict[str, Any], float | None]
) -> tuple[dict[str, Any] | None, float, bool]:
    """Combine the answers given for both response orders (both already in stored order).

    Orders that agree keep today's answer: the mean signed strength (rankings: the mean ranks).
    Orders that disagree carry no preference, whatever the strengths and confidences: a pairwise
    answer whose preferred response differs between the orders becomes a tie where the schema
    allows ties and an abstention (payload None) where it does not; a ranking without ties whose
    mean ranks tie abstains too. Picking one order's answer instead would make the judge's
    position bias a label: an always-"A" judge would label every item "A" in stored order."""
    pa, pb = a[0], b[0]
    ra, rb = JudgmentRead.from_stored(pa), JudgmentRead.from_stored(pb)
    ca, cb = (a[1] if a[1] is not None else 0.7), (b[1] if b[1] is not None else 0.7)
    out = dict(pa)
    consistent = True
    abstain = False
    if schema.pairwise:
        # Both answers were read against the schema (`_one_order`): they carry its kinds.
        assert ra.pairwise is not None and rb.pairwise is not None
        choice_a, choice_b = ra.pairwise.choice, rb.pairwise.choice
        consistent = choice_a == choice_b
        if not consistent:
            if schema.pairwise.allow_tie:
                out["pairwise"] = {"choice": "tie", "strength": 0}
            else:
                abstain = True
        elif choice_a == "tie":
            out["pairwise"] = {"choice": "tie", "strength": 0}
        else:
            mean = (ra.pairwise.signed + rb.pairwise.signed) / 2
            out["pairwise"] = {
                "choice": choice_a,
                "strength": max(1, min(len(schema.pairwise.strengths), round(abs(mean)))),
            }
    if schema.ranking:
        assert ra.ranking is not None and rb.ranking is not None
        avg = [(x + y) / 2 for x, y in zip(ra.ranking.ranks, rb.ranking.ranks, strict=True)]
        consistent = consistent and ra.ranking == rb.ranking
        if schema.ranking.allow_ties:
            levels = sorted(set(avg))
            out["ranking"] = [levels.index(v) + 1 for v in avg]
        elif len(set(avg)) < len(avg):
            abstain = True  # the orders leave responses level, and the schema has no ties
        else:
            order = sorted(range(len(avg)), key=lambda i: avg[i])
            ranks = [0] * len(avg)
            for r, i in enumerate(order, start=1):
                ranks[i] = r
            out["ranking"] = ranks
    if schema.rubric and rb.fine.rubric is not None:
        out["rubric"] = [_mean_ratings(x, y) for x, y in zip(ra.fine.rubric or (), rb.fine.rubric, strict=True)]
    confidence = (ca + cb) / 2 * (1.0 if consistent else 0.3)
    return (None if abstain else out), round(confidence, 4), consistent


def _mean_ratings(x: dict[str, int], y: dict[str, int]) -> dict[str, int]:
    """Each aspect's mean rating over the two orders; an aspect one order left out: the other's."""
    return {k: round(((x[k] if k in x else y[k]) + (y[k] if k in y else x[k])) / 2) for k in {**x, **y}}


# ---------------------------------------------------------------------------------------------
# Reward-model judge and density-ratio judge: a scalar reward per response


def payload_from_rewards(
    schema: JudgmentSchema,
    rewards: list[float],
    uncertainty: list[float],
    strength_threshold: float,
    tie_margin: float,
    scale: float = 1.0,
) -> tuple[dict[str, Any], float]:
    payload: dict[str, Any] = {}
    if schema.rubric and schema.rubric.required:
        raise JudgeError("this judge gives rewards, not rubric ratings, and the project requires them")
    if schema.spans and schema.spans.required:
        raise JudgeError("this judge cannot mark spans, and the project requires them")
    if schema.pairwise:
        gap = rewards[1] - rewards[0]
        spread = math.sqrt(1 + uncertainty[0] ** 2 + uncertainty[1] ** 2)
        confidence = 1 / (1 + math.exp(-abs(gap) * scale / spread))
        if abs(gap) <= tie_margin and schema.pairwise.allow_tie:
            payload["pairwise"] = {"choice": "tie", "strength": 0}
        else:
            strong = abs(gap) >= strength_threshold and len(schema.pairwise.strengths) > 1
            payload["pairwise"] = {"choice": "B" if gap > 0 else "A", "strength": 2 if strong else 1}
        return payload, round(confidence, 4)
    if schema.ranking:
        order = sorted(range(len(rewards)), key=lambda i: -rewards[i])
        ranks = [0] * len(rewards)
        for r, i in enumerate(order, start=1):
            ranks[i] = r
        payload["ranking"] = ranks
        gaps = [rewards[order[i]] - rewards[order[i + 1]] for i in range(len(order) - 1)]
        spread = math.sqrt(1 + sum(u * u for u in uncertainty) / len(uncertainty))
        return payload, round(1 / (1 + math.exp(-min(gaps) * scale / spread)), 4)
    raise JudgeError("this judge labels pairwise and ranking projects only")


class RewardModelJudge:
    kind = Labeler.Kind.REWARD_MODEL

    def __init__(self, labeler: Labeler, user: Any = None) -> None:
        """`user`: who started the run. A version of another project is used only while they
        curate it (checked here again: access may have changed since the labeler was saved)."""
        from pathlib import Path

        from models_srv import engine
        from models_srv.selectors import judge_version

        try:
            self.cfg = RewardModelJudgeConfig.model_validate(labeler.config)
        except ValidationError as exc:
            raise JudgeError(format_validation_error(exc)) from None
        version = judge_version(user, labeler.own_project, self.cfg.version)
        if version is None:
            raise JudgeError(version_refusal(self.cfg.version))
        self.version = version
        self.model = engine.load_model(Path(version.artifact_path))
        self.peak = 1

    def close(self) -> None:
        pass

    def label_many(self, items: list[Item], schema: JudgmentSchema) -> list[Label]:
        keys = [(it.prompt, r["text"]) for it in items for r in it.responses]
        mean, std, _ = self.model.score(keys)
        out, k = [], 0
        for it in items:
            n = it.num_responses
            rewards, unc = [float(x) for x in mean[k : k + n]], [float(x) for x in std[k : k + n]]
            k += n
            label = Label(it.id, raw={"rewards": rewards, "uncertainty": unc, "version": str(self.version.uuid)})
            try:
                label.payload, label.confidence = payload_from_rewards(
                    schema, rewards, unc, self.cfg.strength_threshold, self.cfg.tie_margin
                )
            except JudgeError as exc:
                label.error = str(exc)
            out.append(label)
        return out


class DensityRatioJudge:
    """Reward = mean token log-likelihood of the response under the strong model minus the weak one
    ("CDR: Customizable Density Ratios of Strong-over-weak LLMs for Preference Annotation")."""

    kind = Labeler.Kind.DENSITY_RATIO

    def __init__(self, labeler: Labeler) -> None:
        try:  # checked again here: the config may predate the rule, or the operator's settings changed
            self.cfg = DensityRatioConfig.model_validate(labeler.config)
        except ValidationError as exc:
            raise JudgeError(format_validation_error(exc)) from None
        from models_srv.engine import pick_device

        self.device = pick_device("auto")
        self.models = {name: self._load(name) for name in ("strong", "weak")}
        self.peak = 1

    def close(self) -> None:
        pass

    def _load(self, which: str) -> tuple[Any, Any]:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from models_srv.model_sources import DEFAULT, check_built_config, check_from_config, resolve_model_source

        if self.cfg.from_config:
            spec = check_from_config(self.cfg.from_config[which])
            tok = AutoTokenizer.from_pretrained(resolve_model_source(spec.pop("tokenizer", DEFAULT)))
            torch.manual_seed(int(spec.pop("seed", 0)))
            model_config = AutoConfig.for_model(**{"vocab_size": tok.vocab_size, **spec})
            check_built_config(model_config)
            model = AutoModelForCausalLM.from_config(model_config)
        else:
            path = resolve_model_source(getattr(self.cfg, which))
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path)
        model.to(self.device).eval()
        return tok, model

    def mean_loglik(self, which: str, prompt: str, response: str) -> float:
        import torch

        tok, model = self.models[which]
        context = (self.cfg.preamble + "\n\n" if self.cfg.preamble else "") + prompt + "\n\n"
        c = tok(context, add_special_tokens=False, verbose=False)["input_ids"]
        r = tok(response, add_special_tokens=False, verbose=False)["input_ids"]
        r = r or [tok.eos_token_id or tok.sep_token_id or 0]
        r = r[: self.cfg.max_length // 2]
        c = c[-(self.cfg.max_length - len(r)) :] if len(c) + len(r) > self.cfg.max_length else c
        ids = torch.tensor([c + r], device=self.device)
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        targets = ids[0, 1:]
        token_lp = logp[torch.arange(len(targets)), targets]
        return float(token_lp[len(c) - 1 :].mean()) if c else float(token_lp.mean())

    def label_many(self, items: list[Item], schema: JudgmentSchema) -> list[Label]:
        out = []
        for it in items:
            rewards = [
                self.mean_loglik("strong", it.prompt, r["text"]) - self.mean_loglik("weak", it.prompt, r["text"])
                for r in it.responses
            ]
            label = Label(it.id, raw={"rewards": rewards})
            try:
                label.payload, label.confidence = payload_from_rewards(
                    schema,
                    rewards,
                    [0.0] * len(rewards),
                    self.cfg.strength_threshold,
                    self.cfg.tie_margin,
                    self.cfg.scale,
                )
            except JudgeError as exc:
                label.error = str(exc)
            out.append(label)
        return out


def make_judge(labeler: Labeler, user: Any = None) -> LLMJudge | RewardModelJudge | DensityRatioJudge:
    """The judge of `labeler` for a run started by `user` (None: from the shell)."""
    if labeler.kind == Labeler.Kind.REWARD_MODEL:
        return RewardModelJudge(labeler, user)
    judges: dict[str, type[LLMJudge | DensityRatioJudge]] = {
        Labeler.Kind.LLM: LLMJudge,
        Labeler.Kind.DENSITY_RATIO: DensityRatioJudge,
    }
    return judges[labeler.kind](labeler)
