"""How hard a prompt looks: a cheap, table-driven score for `match: {complexity: [...]}`.

`classify(text)` measures a fixed set of surface features (FEATURES), each normalised to
[0, 1], and sums `weight × value` into a score clamped to [0, 1]. Two cut-offs turn the
score into a level: below `medium` is "simple", from `complex` up is "complex", and
anything in between is "medium". A negative weight (the default for `routine`) pulls the
score down.

Invariants: pure (no I/O, clock or randomness), deterministic, never raises on any str.
Only the first MAX_CHARS characters are scanned (the length feature still sees the full
length), so the cost is bounded whatever the client sends. The work is one tokenising
regex, a walk over the tokens with a memoised table lookup, and C-level `str.count`s:
a 200-character prompt takes about 20 µs (`python loadtest/bench_complexity.py`).

The vocabulary is plain data (`_VOCABULARY`, `_CODE_MARKS`); DEFAULT_WEIGHTS and the two
cut-offs were fitted on two thirds of tests/data/complexity_prompts.jsonl and checked on
the other third (tests/test_complexity.py holds the accuracy floors).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import compress
from types import MappingProxyType
from typing import Any

MAX_CHARS = 4000
CHARS_PER_TOKEN = 4  # the usual rough figure for English text with OpenAI-style tokenizers

FEATURES: tuple[str, ...] = (
    "length",  # estimated tokens, log-scaled: 1 token -> ~0, LENGTH_TOKENS and beyond -> 1
    "sentences",  # sentence ends and line breaks
    "questions",  # question marks
    "code",  # code fences, code-like symbols and keywords, error names
    "math",  # math symbols and vocabulary (integral, theorem, modulo, ...)
    "reasoning",  # prove, derive, step by step, analyze, compare, trade-off, why, ...
    "multipart",  # list items, sequencing words, task verbs, enumerating commas
    "constraints",  # must, at least, without, exactly, JSON/table/YAML output, ...
    "domain",  # specialist vocabulary (distributed systems, ML, security, law, finance, ...)
    "jargon",  # share of long words (9+ characters) among all words
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
_JARGON_SHARE = 0.25  # the share of long words at which `jargon` saturates
_LONG_WORD_LEN = 9
_LOG_LENGTH_TOKENS = math.log1p(LENGTH_TOKENS)
_CODE_NOT_MATH = 4  # from this many code hits on, `=` and `^` are code, not math

# Fitted on the training two thirds of the labelled set (see the module docstring);
# `turns` and `system` are set by judgement: the labelled prompts are single turns.
DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "length": 0.50,
        "sentences": 0.10,
        "questions": 0.00,
        "code": 0.00,
        "math": 0.60,
        "reasoning": 0.50,
        "multipart": 0.30,
        "constraints": 0.05,
        "domain": 0.75,
        "jargon": 0.20,
        "routine": -0.25,
        "turns": 0.10,
        "system": 0.10,
    }
)

# Vocabulary per feature, matched on lower-case tokens (runs of letters, digits, `'`, `-`).
# An entry is space-separated slots, matched against consecutive tokens; a slot lists
# alternatives with `|`; `stem*` matches by prefix; `#` matches a number; a leading `^`
# matches only as the first token of the prompt. Every entry that matches counts once.
_VOCABULARY: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "reasoning": (
            "prove|proves|proving|proof|proofs|disprove",
            "show that",
            "derive|derives|deriving|derivation",
            "justify|justification",
            "step-by-step",
            "step by step",
            "analysis|analyses|analyse|analysed|analysing|analyz*",  # not analys*: analyst
            "compare|comparing|comparison",
            "evaluat*",
            "design",
            "architect*",
            "trade-off|trade-offs|tradeoff|tradeoffs",
            "trade off|offs",
            "why",
            "optimiz*|optimise|optimised|optimising|optimisation",
            "diagnos*",
            "reason|reasoning about|through",
            "think through",
            "walk through",
            "walk me through",
            "hypothesis|hypotheses",
            "root cause",
            "implication|implications",
            "guarantee|guarantees",
            "propose|proposal",
            "generaliz*|generalis*",
            "rigor*|rigour*",
            "estimate",
            "assumption|assumptions",
            "failure mode|modes",
            "edge case|cases",
            "pros and cons",
            "strategy|strategies",
        ),
        "math": (
            "theorem|theorems|lemma|lemmas|corollary",
            "integral|integrals",
            "derivative|derivatives",
            "differentiable",
            "continuous",
            "eigen*",
            "matrix|matrices",
            "polynomial*",
            "prime|primes",
            "modulo|mod",
            "congruen*",
            "converg*",
            "diverg*",
            "series",
            "probabilit*",
            "expected value|number",
            "variance",
            "inequalit*",
            "induction",
            "recurrence",
            "closed-form",
            "closed form",
            "countabl*|uncountabl*",
            "abelian",
            "isomorph*",
            "bijection*",
            "asymptotic*",
            "logarithm*",
            "equation|equations",
            "solution|solutions",
            "real number|numbers",
            "integer|integers",
            "lagrange",
            "minimiz*|minimis*|maximiz*|maximis*",
            "graph|graphs",
            "combinator*",
            "topolog*",
            "functor|functors|monad|monads",
            "category theory",
            "sin|cos|tan|ln|exp",
        ),
        "constraints": (
            "must|mustn't",
            "at least|most",
            "no more than",
            "without",
            "exactly",
            "only",
            "ensure",
            "require|required",
            "constraint|constraints",
            "under|within #",
            "json|yaml|csv",
            "table",
            "schema",
            "format",
            "never",
            "zero-downtime",
            "zero downtime",
            "can't|cannot tolerate",
        ),
        "domain": (
            "distributed",
            "consensus",
            "consisten*",
            "latency",
            "throughput",
            "concurren*",
            "deadlock|deadlocks",
            "race condition|conditions",
            "lock-free",
            "lock free",
            "atomic*",
            "memory ordering",
            "mutex*",
            "thread-safe",
            "thread safe",
            "shard*",
            "replica*",
            "partition*",
            "idempoten*",
            "exactly-once",
            "exactly once",
            "rebalanc*",
            "failover",
            "invalidation",
            "multi-tenant",
            "migration",
            "rollback",
            "outbox",
            "event sourcing",
            "crdt|crdts",
            "raft|paxos",
            "kafka",
            "kubernetes",
            "compil*",
            "parser|parsing",
            "ssa",
            "type system|inference|checking",
            "allocator",
            "garbage collect*",
            "memory leak",
            "profile|profiler|profiling",
            "p99",
            "jvm",
            "asyncio",
            "encrypt*",
            "cryptograph*",
            "vulnerabilit*",
            "reentrancy",
            "oauth",
            "pkce",
            "sandbox*",
            "key rotation",
            "gradient*",
            "regression",
            "overfitting",
            "attention",
            "transformer|transformers",
            "mixed precision",
            "stochastic",
            "bayesian",
            "statistical*",
            "experiment",
            "seasonality",
            "forecast*",
            "anomal*",
            "undecidab*",
            "diagonaliz*|diagonalis*",
            "complexity",
            "algorithm|algorithms",
            "liabilit*",
            "indemnif*",
            "jurisdiction",
            "law",
            "clause",
            "pharmaco*",
            "dosage|therapy",
            "interaction",
            "revenue",
            "cash flow",
            "balance sheet",
            "hedg*",
            "ltv|cac|churn",
            "storage engine",
            "amplification",
            "compaction",
            "b-tree|b-trees|lsm",
            # broad specialist terms, so that the list is not just this data set's topics
            "scalab*",
            "load-balanc*",
            "load balanc*",
            "quorum",
            "leader election",
            "byzantine",
            "two-phase commit",
            "transaction|transactions",
            "isolation level|levels",
            "serializab*|linearizab*",
            "liveness",
            "invariant|invariants",
            "specification",
            "model checking",
            "formal verification",
            "lock|locks|locking",
            "semaphore|semaphores",
            "scheduler",
            "kernel",
            "syscall|syscalls",
            "cache coherence",
            "false sharing",
            "numa",
            "simd|vectoriz*|vectoris*",
            "gpu|gpus|cuda",
            "connection pool*",
            "backpressure",
            "circuit breaker|breakers",
            "observability",
            "backpropagation",
            "loss function",
            "embedding|embeddings",
            "fine-tun*",
            "hyperparameter*",
            "reinforcement learning",
            "causal*|confound*",
            "p-value|p-values",
            "a b test*",
            "monte carlo",
            "markov",
            "time series",
            "threat model*",
            "side-channel",
            "zero-knowledge",
            "injection",
            "privilege escalation",
            "authorization|authorisation",
            "statute|statutes|precedent|tort",
            "regulat*|compliance|gdpr|hipaa",
            "clinical|contraindicat*|pathophysiolog*",
            "mechanism",
            "amortiz*|amortis*",
            "valuation|arbitrage",
            "discounted cash flow",
            "volatility",
            "unit economics",
            "np-hard|np-complete",
            "dynamic programming",
            "heuristic|heuristics",
            "approximat*",
            "randomized|randomised",
            "quantum",
        ),
        "routine": (
            "^hi|hello|hey",  # a greeting opens the prompt; `hi` elsewhere is often a variable
            "thanks",
            "thank you",
            "good morning|afternoon|evening",
            "what's|whats capital|meaning|plural|difference|shortcut|keyword|weather|command",
            "what's|whats the|a|an capital|meaning|plural|difference|shortcut|keyword|weather|command",
            "what is|are|does the|a|an capital|meaning|plural|difference|shortcut|keyword|weather|command",
            "what year|time",
            "who wrote|painted|invented|is|was",
            "when did|was|is",
            "how many",
            "how do i|you say|make|exit|center|reverse|check",
            "translate",
            "synonym|synonyms",
            "spell",
            "define|definition",
            "typo|typos",
            "grammar",
            "rephrase|reword",
            "rewrite this",
            "shorter",
            "polite",
            "uppercase|lowercase",
            "bullet|bulleted list",
            "title|name for",
            "haiku|poem|joke|recipe",
            "alphabetical*",
            "convert this|#",
            "summarize|summarise in one sentence",
            "tl dr",
            "tldr",
            "keep it short",
        ),
        "multipart": (
            "then",
            "also",
            "finally",
            "first|firstly",
            "second|secondly",
            "each",
            "both",
            "as well as",
            "covering|cover",
            "including",
            "discuss",
            "explain",
            "describe",
            "identify",
            "implement",
            "write",
            "show",
            "give",
            "flag",
            "consider|considering",
        ),
        "code": (
            "def|elif|lambda|const|nullptr|null|async|await|self|printf|println|func|impl|struct",
            "namespace|std|isinstance|typeof|stdout|stderr|traceback|kwargs|args|bool|dict",
            "return|import",
        ),
    }
)

# Case-sensitive code signals counted with str.count (braces and `;` come from _CODE_CHARS).
_CODE_MARKS = ("()", "::", "->", "=>", "==", "!=", "&&", "||", "Error", "Exception", "SELECT ")
_CODE_CHARS = re.compile(r"[{};`]")
_MATH_CHARS = re.compile(r"[=^√∑∫∞≤≥≠≈πθλ∀∃∈⊂∪∩×÷]")
# Tokens are capped at 32 characters (a longer run splits), which no vocabulary word
# reaches, so the per-token memo stays small whatever a client sends.
_TOKEN = re.compile(r"[a-z0-9][a-z0-9'-]{0,31}")
_LIST_ITEM = re.compile(r"^[ \t]*(?:\d+[.)]|[-*•])[ \t]", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class _Slot:
    words: frozenset[str]
    stems: tuple[str, ...]
    number: bool

    def matches(self, token: str) -> bool:
        return (
            token in self.words
            or (bool(self.stems) and token.startswith(self.stems))
            or (self.number and token.isdigit())
        )


@dataclass(frozen=True, slots=True)
class _Entry:
    category: str
    rest: tuple[_Slot, ...]  # the slots after the first
    opener: bool  # matches only as the prompt's first token


def _index(
    vocabulary: Mapping[str, tuple[str, ...]],
) -> tuple[dict[str, tuple[_Entry, ...]], dict[str, tuple[_Entry, ...]]]:
    """Entries keyed by the exact words and by the stems of their first slot."""
    by_word: dict[str, list[_Entry]] = {}
    by_stem: dict[str, list[_Entry]] = {}
    for category, specs in vocabulary.items():
        for spec in specs:
            opener = spec.startswith("^")
            first, *rest = spec.lstrip("^").split()
            entry = _Entry(category, tuple(_slot(s) for s in rest), opener)
            for alternative in first.split("|"):
                if alternative.endswith("*"):
                    by_stem.setdefault(alternative[:-1], []).append(entry)
                else:
                    by_word.setdefault(alternative, []).append(entry)
    return {k: tuple(v) for k, v in by_word.items()}, {k: tuple(v) for k, v in by_stem.items()}


def _slot(spec: str) -> _Slot:
    alternatives = spec.split("|")
    words = frozenset(a for a in alternatives if not a.endswith("*") and a != "#")
    stems = tuple(a[:-1] for a in alternatives if a.endswith("*"))
    return _Slot(words, stems, "#" in alternatives)


_BY_WORD, _BY_STEM = _index(_VOCABULARY)
_STEM_LENGTHS = tuple(sorted({len(stem) for stem in _BY_STEM}))


@lru_cache(maxsize=16384)
def _entries(token: str) -> tuple[_Entry, ...]:
    """The entries whose first slot this token fills; memoised, as prompts reuse words."""
    found = _BY_WORD.get(token, ())
    for n in _STEM_LENGTHS:
        if n > len(token):
            break
        found += _BY_STEM.get(token[:n], ())
    return found


@dataclass(frozen=True, slots=True)
class ComplexitySettings:
    """Weights per feature and the two score cut-offs.

    `weights` is taken as given: a feature it does not name weighs 0 (to change one weight,
    pass `{**DEFAULT_WEIGHTS, "code": 0.3}`). Names outside FEATURES, non-finite weights,
    or cut-offs outside 0 <= medium <= complex <= 1 raise ValueError.
    """

    weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_WEIGHTS)
    medium: float = 0.30
    complex: float = 0.60
    _vector: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(FEATURES))
        if unknown:
            raise ValueError(f"unknown complexity feature(s) {', '.join(unknown)}; known: {', '.join(FEATURES)}")
        if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in self.weights.values()):
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
    lower = head.lower()
    tokens = _TOKEN.findall(lower)
    hits = dict.fromkeys(_VOCABULARY, 0.0)
    count = len(tokens)
    found = list(map(_entries, tokens))
    for i in compress(range(count), found):  # only the few tokens that start an entry
        for entry in found[i]:
            if entry.opener and i:
                continue
            rest = entry.rest
            if rest and (
                i + len(rest) >= count or not all(slot.matches(tokens[i + 1 + j]) for j, slot in enumerate(rest))
            ):
                continue
            hits[entry.category] += 1
    fences = head.count("```")
    code = hits["code"] + len(_CODE_CHARS.findall(head)) + sum(map(head.count, _CODE_MARKS)) + 4 * fences
    math_hits = hits["math"] + (0 if code >= _CODE_NOT_MATH else len(_MATH_CHARS.findall(head)))
    ends = head.count(". ") + head.count("? ") + head.count("! ") + head.count("\n")
    sentences = ends + (head.rstrip()[-1:] in (".", "?", "!"))
    multipart = hits["multipart"] + len(_LIST_ITEM.findall(head)) + head.count(",") / 3
    long_share = sum(map(_LONG_WORD_LEN.__le__, map(len, tokens))) / count if count else 0.0
    return {
        "length": min(1.0, math.log1p(len(text) / CHARS_PER_TOKEN) / _LOG_LENGTH_TOKENS),
        "sentences": min(1.0, sentences / _SATURATION["sentences"]),
        "questions": min(1.0, head.count("?") / _SATURATION["questions"]),
        "code": min(1.0, code / _SATURATION["code"]),
        "math": min(1.0, math_hits / _SATURATION["math"]),
        "reasoning": min(1.0, hits["reasoning"] / _SATURATION["reasoning"]),
        "multipart": min(1.0, multipart / _SATURATION["multipart"]),
        "constraints": min(1.0, hits["constraints"] / _SATURATION["constraints"]),
        "domain": min(1.0, hits["domain"] / _SATURATION["domain"]),
        "jargon": min(1.0, long_share / _JARGON_SHARE),
        "routine": min(1.0, hits["routine"] / _SATURATION["routine"]),
        "turns": min(1.0, max(0, turns) / TURNS_SATURATE),
        "system": min(1.0, max(0, system_chars) / SYSTEM_CHARS_SATURATE),
    }


def classify(text: str, settings: ComplexitySettings = DEFAULT, *, turns: int = 0, system_chars: int = 0) -> Verdict:
    values = features(text, turns=turns, system_chars=system_chars)
    contributions = {name: w * values[name] for name, w in zip(FEATURES, settings._vector, strict=True)}
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

    Never raises, whatever the client sent: a non-dict body, missing or malformed
    messages, and content that is neither a string nor a list of parts yield empty text
    and zeros. Text parts of multi-part content are joined with newlines; image and audio
    parts are skipped. A legacy completions body (`prompt`: str or list of str) is read
    as one user turn.
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
