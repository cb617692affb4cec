"""How hard a prompt looks: a cheap, table-driven score for `match: {complexity: [...]}`.

`classify(text)` measures a fixed set of surface features (FEATURES), each normalised to
[0, 1], and sums `weight × value` into a score clamped to [0, 1]; two cut-offs turn the
score into a level: below `medium` is "simple", from `complex` up is "complex", the rest
"medium". A negative weight (the default for `routine`) pulls a score down.

Invariants: pure (no I/O, clock or randomness), deterministic, never raises on any str;
only the first MAX_CHARS characters are scanned (the length feature still sees the full
length), so the cost is bounded whatever the client sends. The work is a few precompiled
regex passes and C-level `str.count`s: a 200-character prompt takes a few microseconds
(`python loadtest/bench_complexity.py`).

The vocabulary is plain data in `_VOCABULARY` and `_CODE`/`_MATH`; DEFAULT_WEIGHTS and the
two cut-offs were fitted on two thirds of tests/data/complexity_prompts.jsonl and checked
on the other third (tests/test_complexity.py holds the accuracy floors).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

MAX_CHARS = 4000
CHARS_PER_TOKEN = 4  # the usual rough figure for English text with OpenAI-style tokenizers

FEATURES: tuple[str, ...] = (
    "length",  # estimated tokens, log-scaled: 1 token -> ~0, LENGTH_TOKENS and beyond -> 1
    "sentences",  # sentence ends and line breaks
    "questions",  # question marks
    "code",  # code fences, code-like tokens (braces, `def`, `->`, tracebacks, ...)
    "math",  # math symbols and vocabulary (integral, theorem, modulo, ...)
    "reasoning",  # prove, derive, step by step, analyze, compare, trade-off, why, ...
    "multipart",  # list items, sequencing words, several task verbs, enumerating commas
    "constraints",  # must, at least, without, exactly, JSON/table/YAML output, ...
    "domain",  # specialist vocabulary (distributed systems, ML, security, law, finance, ...)
    "jargon",  # share of long words (9+ letters) among all words
    "routine",  # greetings and lookup/transform requests (translate, what is, fix typos, ...)
    "turns",  # prior user turns in the conversation
    "system",  # length of the system prompt
)

LENGTH_TOKENS = 600  # estimated tokens at which `length` saturates
TURNS_SATURATE = 10
SYSTEM_CHARS_SATURATE = 6000

# Hits at which a count feature reaches 1.0 (value = min(1, hits / saturation)).
_SATURATION: Mapping[str, float] = MappingProxyType(
    {
        "sentences": 12,
        "questions": 4,
        "code": 12,
        "math": 8,
        "reasoning": 4,
        "multipart": 8,
        "constraints": 4,
        "domain": 6,
        "routine": 2,
    }
)
_JARGON_SHARE = 0.25  # a share of long words at which `jargon` saturates
_LOG_LENGTH_TOKENS = math.log1p(LENGTH_TOKENS)
_CODE_NOT_MATH = 4  # from this many code hits on, `=`, `*`, `-` are code, not math

DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "length": 0.55,
        "sentences": 0.00,
        "questions": 0.05,
        "code": 0.05,
        "math": 0.60,
        "reasoning": 0.60,
        "multipart": 0.25,
        "constraints": 0.00,
        "domain": 0.55,
        "jargon": 0.15,
        "routine": -0.60,
        "turns": 0.10,
        "system": 0.10,
    }
)

# Lower-case words and phrases per feature, as regex fragments matched on word boundaries.
# An occurrence counts once, for the first category listed that matches at that point.
_VOCABULARY: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "reasoning": (
            r"prov(?:e|es|ing)",
            r"proofs?",
            r"disprove",
            r"show that",
            r"deriv(?:e|ing|ation)",
            r"justif(?:y|ication)",
            r"step[- ]by[- ]step",
            r"analy[sz]\w*",
            r"compar(?:e|ing|ison)",
            r"evaluat\w*",
            r"design",
            r"architect\w*",
            r"trade-?offs?",
            r"why",
            r"optimi[sz]\w*",
            r"diagnos\w*",
            r"reason(?:ing)? (?:about|through)",
            r"think through",
            r"walk (?:me )?through",
            r"hypothes[ie]s",
            r"root cause",
            r"implications?",
            r"guarantees?",
            r"propos(?:e|al)",
            r"recommend(?:ation)? \w+ with justification",
            r"generali[sz]\w*",
            r"rigor\w*",
            r"estimate",
            r"assumptions?",
            r"failure modes?",
            r"edge cases?",
            r"pros and cons",
            r"strateg(?:y|ies)",
        ),
        "math": (
            r"theorems?",
            r"lemmas?",
            r"corollary",
            r"integrals?",
            r"derivatives?",
            r"differentiable",
            r"continuous",
            r"eigen\w*",
            r"matri(?:x|ces)",
            r"polynomials?",
            r"primes?",
            r"modulo",
            r"mod \d+",
            r"congruen\w*",
            r"converg\w*",
            r"diverg\w*",
            r"series",
            r"probabilit\w*",
            r"expected (?:value|number)",
            r"variance",
            r"inequalit\w*",
            r"induction",
            r"recurrence",
            r"closed[- ]form",
            r"countabl\w*|uncountabl\w*",
            r"abelian",
            r"isomorph\w*",
            r"bijection",
            r"asymptotic\w*",
            r"logarithm\w*",
            r"equations?",
            r"solutions?",
            r"real numbers?",
            r"integers?",
            r"graphs?",
            r"combinatori\w*",
            r"topolog\w*",
            r"functors?|monads?|category theory",
            r"lagrange",
            r"minimi[sz]\w*|maximi[sz]\w*",
        ),
        "constraints": (
            r"must(?:n't| not)?",
            r"at (?:least|most)",
            r"no more than",
            r"without",
            r"exactly",
            r"only",
            r"ensure",
            r"required?",
            r"constraints?",
            r"under \d+",
            r"within \d+",
            r"json",
            r"yaml",
            r"csv",
            r"table",
            r"schema",
            r"format",
            r"never",
            r"zero[- ]downtime",
            r"can't tolerate",
        ),
        "domain": (
            r"distributed",
            r"consensus",
            r"consisten\w*",
            r"latency",
            r"throughput",
            r"concurren\w*",
            r"deadlocks?",
            r"race conditions?",
            r"lock[- ]free",
            r"atomic\w*",
            r"memory ordering",
            r"mutex\w*",
            r"thread[- ]safe",
            r"shard\w*",
            r"replica\w*",
            r"partition\w*",
            r"idempoten\w*",
            r"exactly[- ]once",
            r"rebalanc\w*",
            r"failover",
            r"invalidation",
            r"multi[- ]tenant",
            r"migration",
            r"rollback",
            r"outbox",
            r"event sourcing",
            r"crdts?",
            r"raft|paxos",
            r"kafka",
            r"kubernetes",
            r"compil\w*",
            r"parser|parsing",
            r"ssa",
            r"type (?:system|inference|checking)",
            r"allocator",
            r"garbage collect\w*",
            r"memory leak",
            r"profil(?:e|er|ing)",
            r"p99",
            r"jvm",
            r"asyncio",
            r"encrypt\w*",
            r"cryptograph\w*",
            r"vulnerabilit\w*",
            r"reentrancy",
            r"oauth",
            r"pkce",
            r"sandbox\w*",
            r"key rotation",
            r"gradient\w*",
            r"regression",
            r"overfitting",
            r"attention",
            r"transformers?",
            r"mixed precision",
            r"stochastic",
            r"bayesian",
            r"statistical\w*",
            r"experiment",
            r"seasonality",
            r"forecast\w*",
            r"anomal\w*",
            r"undecidab\w*",
            r"diagonali[sz]\w*",
            r"complexity",
            r"o\(n(?: log n|\^2)?\)",
            r"algorithms?",
            r"liabilit\w*",
            r"indemnif\w*",
            r"jurisdiction",
            r"law",
            r"clause",
            r"pharmaco\w*",
            r"dosage|therapy",
            r"interaction",
            r"revenue",
            r"cash flow",
            r"balance sheet",
            r"hedg\w*",
            r"ltv|cac|churn",
            r"storage engine",
            r"amplification",
            r"compaction",
            r"b-trees?|lsm",
            # broad specialist terms, so the list is not just this data set's topics
            r"scalab\w*",
            r"load[- ]balanc\w*",
            r"quorum",
            r"leader election",
            r"byzantine",
            r"two[- ]phase commit",
            r"transactions?",
            r"isolation levels?",
            r"serializab\w*|linearizab\w*",
            r"liveness",
            r"invariants?",
            r"specification",
            r"model checking|formal verification",
            r"locks?|locking",
            r"semaphores?",
            r"scheduler",
            r"kernel",
            r"syscalls?",
            r"cache coherence|false sharing|numa",
            r"simd|vectori[sz]\w*",
            r"gpus?|cuda",
            r"connection pool\w*",
            r"backpressure",
            r"circuit breakers?",
            r"observability",
            r"backpropagation",
            r"loss function",
            r"embeddings?",
            r"fine[- ]tun\w*",
            r"hyperparameters?",
            r"reinforcement learning",
            r"causal\w*|confound\w*",
            r"p-values?",
            r"a/b test\w*",
            r"monte carlo|markov",
            r"time series",
            r"threat model\w*",
            r"side[- ]channel",
            r"zero[- ]knowledge",
            r"injection",
            r"privilege escalation",
            r"authori[sz]ation",
            r"statutes?|precedent|tort",
            r"regulat\w*|compliance|gdpr|hipaa",
            r"clinical|contraindicat\w*|pathophysiolog\w*",
            r"mechanism",
            r"amorti[sz]\w*",
            r"valuation|discounted cash flow|arbitrage",
            r"volatility",
            r"unit economics",
            r"np-(?:hard|complete)",
            r"dynamic programming",
            r"heuristics?",
            r"approximat\w*",
            r"randomi[sz]ed",
            r"quantum",
        ),
        "routine": (
            r"^(?:hi|hello|hey)",  # a greeting opens the prompt; `hi` elsewhere is often a variable
            r"thanks|thank you",
            r"good (?:morning|afternoon|evening)",
            r"what(?:'s| is| are| does| year| time) (?:the |a |an )?(?:capital|meaning|plural|difference|"
            r"shortcut|keyword|weather|chemical|boiling|square root|command)",
            r"who (?:wrote|painted|invented|is|was)",
            r"when (?:did|was|is)",
            r"how many",
            r"how do (?:i|you) (?:say|make|exit|center|reverse|check)",
            r"translate",
            r"synonyms?",
            r"spell",
            r"define|definition",
            r"typos?",
            r"grammar",
            r"rephrase|reword",
            r"rewrite this",
            r"shorter",
            r"polite",
            r"uppercase|lowercase",
            r"bullet(?:ed)? list",
            r"(?:title|name) for",
            r"haiku|poem|joke|recipe",
            r"alphabetical\w*",
            r"convert (?:this|\d)",
            r"summari[sz]e in one sentence",
            r"tl;?dr",
            r"keep it short",
        ),
        "multipart": (
            r"and then",
            r"then",
            r"also",
            r"finally",
            r"first(?:ly)?",
            r"second(?:ly)?",
            r"each",
            r"both",
            r"as well as",
            r"covering|cover",
            r"including",
            r"discuss",
            r"explain",
            r"describe",
            r"identify",
            r"implement",
            r"write",
            r"show",
            r"give",
            r"flag",
            r"consider(?:ing)?",
        ),
    }
)

# Case-sensitive code signals, matched on the raw text.
_CODE = re.compile(
    r"[{};]|=>|->|::|\+=|-=|==|!=|&&|\|\||\w\(\)|\w\[|"
    r"\b(?:def|class|return|import|from|function|const|let|var|async|await|lambda|None|null|self|"
    r"SELECT|FROM|WHERE|JOIN|ORDER BY|GROUP BY)\b|"
    r"Traceback|\w+(?:Error|Exception)\b|#include|</?\w+>"
)
# Math symbols, powers and arithmetic between numbers or single letters.
_MATH = re.compile(r"[=^√∑∫∞≤≥≠≈πθλ∀∃∈⊂∪∩×÷]|\b(?:\d+|[a-z])\s*[-+*/]\s*(?:\d+|[a-z])\b|\b(?:ln|sin|cos|tan|log|exp)(?:\s*\(|\s+[a-z0-9]\b)")
_LIST_ITEM = re.compile(r"^[ \t]*(?:\d+[.)]|[-*•])[ \t]", re.MULTILINE)
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)|\n")
_LONG_WORD = re.compile(r"[A-Za-z]{9,}")


def _vocabulary_pattern(vocabulary: Mapping[str, tuple[str, ...]]) -> re.Pattern[str]:
    groups = "|".join(f"(?P<{name}>{'|'.join(fragments)})" for name, fragments in vocabulary.items())
    return re.compile(rf"\b(?:{groups})\b")


_WORDS = _vocabulary_pattern(_VOCABULARY)


@dataclass(frozen=True, slots=True)
class ComplexitySettings:
    """Weights per feature and the two score cut-offs.

    `weights` is taken as given: a feature it does not name weighs 0 (to change one weight,
    pass `{**DEFAULT_WEIGHTS, "code": 0.3}`). Names outside FEATURES, non-finite weights,
    or cut-offs outside 0 <= medium <= complex <= 1 raise ValueError.
    """

    weights: Mapping[str, float] = field(default_factory=DEFAULT_WEIGHTS.copy)
    medium: float = 0.30
    complex: float = 0.60
    _vector: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(FEATURES))
        if unknown:
            raise ValueError(f"unknown complexity feature(s) {', '.join(unknown)}; known: {', '.join(FEATURES)}")
        if not all(math.isfinite(w) for w in self.weights.values()):
            raise ValueError("complexity weights must be finite numbers")
        if not 0.0 <= self.medium <= self.complex <= 1.0:
            raise ValueError(f"need 0 <= medium <= complex <= 1, got medium={self.medium}, complex={self.complex}")
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        object.__setattr__(self, "_vector", tuple(float(self.weights.get(name, 0.0)) for name in FEATURES))


DEFAULT = ComplexitySettings()


@dataclass(frozen=True, slots=True)
class Verdict:
    level: str  # "simple", "medium" or "complex"
    score: float  # in [0, 1]
    features: Mapping[str, float]  # every name in FEATURES, each value in [0, 1]
    contributions: Mapping[str, float]  # weight × value per feature; their sum, clamped, is score


def features(text: str, *, turns: int = 0, system_chars: int = 0) -> dict[str, float]:
    """The normalised values of one prompt, keyed in FEATURES order, each in [0, 1]."""
    head = text[:MAX_CHARS]
    words = dict.fromkeys(_VOCABULARY, 0)
    for m in _WORDS.finditer(head.lower()):
        if m.lastgroup:  # always a category name: every alternative sits in a named group
            words[m.lastgroup] += 1
    code = len(_CODE.findall(head)) + 4 * head.count("```") + head.count("`")
    hits = {
        "sentences": len(_SENTENCE_END.findall(head.rstrip())),
        "questions": head.count("?"),
        "code": code,
        "math": words["math"] + (0 if code >= _CODE_NOT_MATH else len(_MATH.findall(head))),
        "reasoning": words["reasoning"],
        "multipart": words["multipart"] + len(_LIST_ITEM.findall(head)) + head.count(",") / 3,
        "constraints": words["constraints"],
        "domain": words["domain"],
        "routine": words["routine"],
    }
    n_words = len(head.split())
    long_share = len(_LONG_WORD.findall(head)) / n_words if n_words else 0.0
    return {
        "length": min(1.0, math.log1p(len(text) / CHARS_PER_TOKEN) / _LOG_LENGTH_TOKENS),
        "sentences": min(1.0, hits["sentences"] / _SATURATION["sentences"]),
        "questions": min(1.0, hits["questions"] / _SATURATION["questions"]),
        "code": min(1.0, hits["code"] / _SATURATION["code"]),
        "math": min(1.0, hits["math"] / _SATURATION["math"]),
        "reasoning": min(1.0, hits["reasoning"] / _SATURATION["reasoning"]),
        "multipart": min(1.0, hits["multipart"] / _SATURATION["multipart"]),
        "constraints": min(1.0, hits["constraints"] / _SATURATION["constraints"]),
        "domain": min(1.0, hits["domain"] / _SATURATION["domain"]),
        "jargon": min(1.0, long_share / _JARGON_SHARE),
        "routine": min(1.0, hits["routine"] / _SATURATION["routine"]),
        "turns": min(1.0, max(0, turns) / TURNS_SATURATE),
        "system": min(1.0, max(0, system_chars) / SYSTEM_CHARS_SATURATE),
    }


def classify(
    text: str, settings: ComplexitySettings = DEFAULT, *, turns: int = 0, system_chars: int = 0
) -> Verdict:
    values = features(text, turns=turns, system_chars=system_chars)
    contributions = {name: w * values[name] for name, w in zip(FEATURES, settings._vector)}
    score = min(1.0, max(0.0, sum(contributions.values())))
    if score >= settings.complex:
        level = "complex"
    elif score >= settings.medium:
        level = "medium"
    else:
        level = "simple"
    return Verdict(level, score, MappingProxyType(values), MappingProxyType(contributions))


def prompt_text(body: dict[str, Any]) -> tuple[str, int, int]:
    """(last user message text, prior user turns, system prompt chars) of a chat body.

    Never raises, whatever the client sent: a non-dict body, missing or malformed messages, and content that is
    neither a string nor a list of parts yield empty text and zeros rather than an error.
    A legacy completions body (`prompt`: str or list of str) is read as one user turn.
    """
    if not isinstance(body, dict):
        return "", 0, 0
    messages = body.get("messages")
    if not isinstance(messages, list):
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            return "\n".join(p for p in prompt if isinstance(p, str)), 0, 0
        return (prompt, 0, 0) if isinstance(prompt, str) else ("", 0, 0)
    text = ""
    users = 0
    system_chars = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "user":
            users += 1
            text = _content_text(message.get("content"))
        elif role in ("system", "developer"):
            system_chars += len(_content_text(message.get("content")))
    return text, max(0, users - 1), system_chars


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and part.get("type") in ("text", "input_text"):
            value = part.get("text")
            if isinstance(value, str):
                parts.append(value)
    return "\n".join(parts)


def classify_body(body: dict[str, Any], settings: ComplexitySettings = DEFAULT) -> Verdict:
    text, turns, system_chars = prompt_text(body)
    return classify(text, settings, turns=turns, system_chars=system_chars)
