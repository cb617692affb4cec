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

The facts live in proxy/data/complexity.yaml, read once at import and checked by
`_load_tables` (a malformed file raises ComplexityDataError naming the file and the key):
the vocabulary and symbols counted, where each feature saturates, DEFAULT_WEIGHTS and the
two cut-offs. The weights and cut-offs were fitted on two thirds of
tests/data/complexity_prompts.jsonl and checked on the other third (tests/test_complexity.py
holds the accuracy floors).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from itertools import compress
from types import MappingProxyType
from typing import Any, NoReturn

import yaml

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
# The features with a word list in the data file; `features` counts hits for each.
_CATEGORIES = ("reasoning", "math", "constraints", "domain", "routine", "multipart", "code")

DATA_FILE = "complexity.yaml"  # in the proxy.data package
_TOP = "(top level)"  # how errors name the file's outermost mapping
_SECTIONS = ("weights", "cutoffs", "saturation", "symbols", "vocabulary")
_CUTOFFS = ("medium", "complex")
_SYMBOLS = ("code_marks", "code_chars", "math_chars")
# One alternative of a vocabulary slot: a word that can be a whole token (see _TOKEN), or
# such a word ending in `*` (a stem); `#` (any number) is allowed outside the first slot.
_ALTERNATIVE = re.compile(r"[a-z0-9][a-z0-9'-]{0,31}\*?")


class ComplexityDataError(ValueError):
    """The classifier's data file is malformed; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class _Tables:
    """The contents of the data file, checked; mappings are read-only."""

    weights: Mapping[str, float]  # every name in FEATURES, in that order
    medium: float
    complex: float
    saturation: Mapping[str, float]  # every name in FEATURES, in that order
    vocabulary: Mapping[str, tuple[str, ...]]  # every name in _CATEGORIES
    code_marks: tuple[str, ...]
    code_chars: str
    math_chars: str


class _UniqueKeys(yaml.constructor.SafeConstructor):
    """PyYAML keeps the last of repeated keys; here a second `domain:` would silently drop
    the first one's words, so a repeated key is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(None, None, f"repeated key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


class _PyLoader(_UniqueKeys, yaml.SafeLoader):
    pass


_Loader: type[_PyLoader | _CLoader] = _PyLoader
if yaml.__with_libyaml__:  # libyaml's parser, when PyYAML has it, reads the file ten times faster

    class _CLoader(_UniqueKeys, yaml.CSafeLoader):
        pass

    _Loader = _CLoader


class _Check:
    """Reads one parsed data file; every failure names the file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ComplexityDataError(f"{self.source}: {key}: {problem}")

    def mapping(self, value: object, key: str, names: Sequence[str]) -> dict[str, object]:
        """`value` as a mapping with exactly these keys, in this order."""
        if not isinstance(value, dict):
            self.fail(key, f"expected a mapping of {', '.join(names)}; got {_kind(value)}")
        prefix = "" if key == _TOP else f"{key}."
        for name in value:
            if name not in names:
                self.fail(f"{prefix}{name}", f"unknown key; expected {', '.join(names)}")
        missing = [name for name in names if name not in value]
        if missing:
            self.fail(f"{prefix}{missing[0]}", "missing")
        return {name: value[name] for name in names}

    def number(self, value: object, key: str, *, positive: bool = False) -> float:
        # bool is an int; `yes`/`no`/`on`/`off` read as bools in YAML 1.1
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, f"expected a finite number; got {value!r}")
        if positive and value <= 0:
            self.fail(key, f"expected a number above 0; got {value!r}")
        return value

    def text(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(key, f"expected a non-empty string; got {value!r}")
        return value

    def strings(self, value: object, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.fail(key, f"expected a list of strings; got {_kind(value)}")
        return tuple(self.text(item, f"{key}[{i}]") for i, item in enumerate(value))

    def entries(self, value: object, key: str) -> tuple[str, ...]:
        """A vocabulary list: each entry well-formed (see the data file), none repeated."""
        specs = self.strings(value, key)
        first: dict[str, int] = {}
        for i, spec in enumerate(specs):
            where = f"{key}[{i}]"
            if first.setdefault(spec, i) != i:
                self.fail(where, f"{spec!r} repeats entry {first[spec]}")
            slots = spec.removeprefix("^").split()
            if not slots:
                self.fail(where, f"{spec!r} has no words")
            for n, slot in enumerate(slots):
                for alternative in slot.split("|"):
                    if not (_ALTERNATIVE.fullmatch(alternative) or (n and alternative == "#")):
                        self.fail(
                            where,
                            f"{spec!r}: {alternative!r} is not a lower-case word of letters, digits, ' and - "
                            "(at most 32 characters), a stem ending in *, or # (a number; not in the first slot)",
                        )
        return specs


def _kind(value: object) -> str:
    return "nothing" if value is None else f"a {type(value).__name__}"


def _load_tables(file: Traversable) -> _Tables:
    """Read and check a data file (the shipped one is `resources.files("proxy.data") / DATA_FILE`)."""
    check = _Check(str(file))
    try:
        raw = yaml.load(file.read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, UnicodeDecodeError) as exc:
        check.fail("(file)", f"cannot read: {exc}")
    except yaml.YAMLError as exc:
        mark = exc.problem_mark if isinstance(exc, yaml.MarkedYAMLError) else None
        problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) and exc.problem else str(exc)
        check.fail(f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)", f"invalid YAML: {problem}")
    top = check.mapping(raw, _TOP, _SECTIONS)
    weights = check.mapping(top["weights"], "weights", FEATURES)
    cutoffs = check.mapping(top["cutoffs"], "cutoffs", _CUTOFFS)
    saturation = check.mapping(top["saturation"], "saturation", FEATURES)
    symbols = check.mapping(top["symbols"], "symbols", _SYMBOLS)
    vocabulary = check.mapping(top["vocabulary"], "vocabulary", _CATEGORIES)
    medium = check.number(cutoffs["medium"], "cutoffs.medium")
    complex_ = check.number(cutoffs["complex"], "cutoffs.complex")
    if not 0.0 <= medium <= complex_ <= 1.0:
        check.fail("cutoffs", f"need 0 <= medium <= complex <= 1; got medium={medium}, complex={complex_}")
    return _Tables(
        weights=MappingProxyType({k: check.number(v, f"weights.{k}") for k, v in weights.items()}),
        medium=medium,
        complex=complex_,
        saturation=MappingProxyType(
            {k: check.number(v, f"saturation.{k}", positive=True) for k, v in saturation.items()}
        ),
        vocabulary=MappingProxyType({k: check.entries(v, f"vocabulary.{k}") for k, v in vocabulary.items()}),
        code_marks=check.strings(symbols["code_marks"], "symbols.code_marks"),
        code_chars=check.text(symbols["code_chars"], "symbols.code_chars"),
        math_chars=check.text(symbols["math_chars"], "symbols.math_chars"),
    )


_TABLES = _load_tables(resources.files("proxy.data").joinpath(DATA_FILE))

DEFAULT_WEIGHTS: Mapping[str, float] = _TABLES.weights
# Where each feature reaches 1.0; for the counted ones value = min(1, hits / saturation).
_SATURATION: Mapping[str, float] = _TABLES.saturation
LENGTH_TOKENS = _SATURATION["length"]  # estimated tokens at which `length` saturates
TURNS_SATURATE = _SATURATION["turns"]
SYSTEM_CHARS_SATURATE = _SATURATION["system"]
_JARGON_SHARE = _SATURATION["jargon"]  # the share of long words at which `jargon` saturates
_LONG_WORD_LEN = 9
_LOG_LENGTH_TOKENS = math.log1p(LENGTH_TOKENS)
_CODE_NOT_MATH = 4  # from this many code hits on, `=` and `^` are code, not math

# Vocabulary per feature; the entry syntax is described in the data file.
_VOCABULARY: Mapping[str, tuple[str, ...]] = _TABLES.vocabulary
# Case-sensitive code signals counted with str.count (braces and `;` come from _CODE_CHARS).
_CODE_MARKS: tuple[str, ...] = _TABLES.code_marks
_CODE_CHARS = re.compile(f"[{re.escape(_TABLES.code_chars)}]")
_MATH_CHARS = re.compile(f"[{re.escape(_TABLES.math_chars)}]")
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
    medium: float = _TABLES.medium
    complex: float = _TABLES.complex
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


def prompt_text(body: object) -> tuple[str, int, int]:
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
