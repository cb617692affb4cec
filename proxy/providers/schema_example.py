"""A deterministic example instance for a JSON Schema: what the mock provider answers
structured-output requests and tool calls with.

`example(schema)` returns a value that validates against `schema` for the schemas that
clients actually send (Pydantic / zod / OpenAI strict-mode schemas and hand-written tool
parameters). The same schema always gives the same value; nothing is random. Strings
are readable and come from the property name (`city` → `"mock city"`).

Supported:
- `type` (one or a list; the first non-null type wins), inferred from other keywords
  when absent; boolean schemas; `{}` gives a string.
- objects: every property in `properties` (required or not), `required` names without
  a property schema (from `patternProperties`/`additionalProperties`),
  `additionalProperties` (false adds nothing), `minProperties`/`maxProperties`,
  `dependentRequired`.
- arrays: `items` (a schema, or the draft-7 list with `additionalItems`), `prefixItems`,
  `minItems`/`maxItems` (one item by default), `uniqueItems` (items differ by position),
  `contains`.
- `enum`, `const`; `examples`/`default` when scalar and valid.
- `anyOf`/`oneOf`: the first non-null branch whose value passes the whole schema
  (for `oneOf`, passes exactly one branch); `allOf` merged into one schema.
- `$ref` to `#`, `#/$defs/...`, `#/definitions/...` or any JSON pointer into the
  document, siblings of `$ref` applied too. Recursion: once one `$ref` repeats more
  than `MAX_REF_DEPTH` times on a path the generator goes minimal (null when allowed,
  the fewest array items, only required properties), so recursive models terminate.
- numbers: `minimum`/`maximum`, `exclusiveMinimum`/`exclusiveMaximum` (numbers, or
  draft-4 booleans), `multipleOf` (checked the way `jsonschema` divides floats).
- strings: `minLength`/`maxLength`; `format` date-time, date, time, email, idn-email,
  uri, url, iri, uri-reference, hostname, idn-hostname, ipv4, ipv6, uuid, duration,
  json-pointer, regex, byte; `pattern`, best effort: the readable string is kept when
  it matches, else strings built from the pattern itself (literals, classes, groups,
  first alternative, quantifiers at their minimum and a little above), else a few
  stock strings. A pattern is a match when `re.search` finds it, as in JSON Schema.
  Arbitrary patterns (lookarounds that exclude, back-references, patterns combined
  with conflicting lengths or formats) are not guaranteed.

Not supported (ignored): `not`, `if`/`then`/`else`, `propertyNames`,
`dependentSchemas`, `unevaluated*`, `minContains`/`maxContains`, remote `$ref`s and
`$anchor`s (they count as `{}`), and `format`s not listed above (a readable string).
Schemas with no valid instance (`false`, an empty `enum`, unsatisfiable recursion)
get some value anyway, usually null.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeGuard
from urllib.parse import unquote

# A value parsed from JSON (dict, list, str, int, float, bool or None): schemas and the
# instances generated for them arrive untyped, so nothing tighter than Any is honest.
# A schema node that is an object is typed `dict[str, Any]`.
Json: TypeAlias = Any

MAX_REF_DEPTH = 2  # times one $ref may repeat on a path before going minimal
_HARD_DEPTH = 48  # $refs on one path: beyond this, recursion is unsatisfiable; give up
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_. @+:/#,"
_STOCK = ("mock", "a", "A", "0", "1", "x1", "A1", "mock-1", "mock_1")

_LOWER = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_OBJECT_HINTS = ("properties", "required", "additionalProperties", "patternProperties", "minProperties")
_ARRAY_HINTS = ("items", "prefixItems", "minItems", "maxItems", "contains", "uniqueItems")
_STRING_HINTS = ("minLength", "maxLength", "pattern", "format")
_NUMBER_HINTS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


@dataclass(frozen=True, slots=True)
class _Ctx:
    root: Json  # the whole document, for resolving $ref
    path: tuple[str, ...] = ()  # the $refs entered on the way here, outermost first

    @property
    def minimal(self) -> bool:
        return any(self.path.count(ref) > MAX_REF_DEPTH for ref in set(self.path))

    def enter(self, ref: str) -> _Ctx:
        return _Ctx(self.root, self.path + (ref,))


def example(schema: Json, name: str = "value") -> Json:
    """A deterministic instance of `schema`; `name` seeds readable strings at the root."""
    return _generate(schema, _Ctx(schema), name, 0)


def conforms(instance: Json, schema: Json, root: Json = None) -> bool:
    """Whether `instance` satisfies `schema`, for the keywords this module generates
    (formats are not checked). Used to pick branches and hints; public for tests."""
    return _conforms(instance, schema, schema if root is None else root, 0)


# ------------------------------------------------------------------ schema plumbing


def _as_schema(value: Json) -> dict[str, Any]:
    if value is False:
        return {"not": {}}
    return value if isinstance(value, dict) else {}


def _resolve(root: Json, ref: Json) -> Json:
    """The schema a local `$ref` points at; `{}` for what cannot be resolved."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return {}
    node = root
    pointer = ref[1:]
    if pointer and not pointer.startswith("/"):
        return {}  # an $anchor: not supported
    for raw in pointer.split("/")[1:]:
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return {}
    return node


def _flatten(schema: dict[str, Any], ctx: _Ctx) -> tuple[dict[str, Any], _Ctx]:
    """Resolve `$ref` and fold `allOf` into one schema; the context records refs entered."""
    while len(ctx.path) <= _HARD_DEPTH:
        if "$ref" in schema:
            ref = schema["$ref"]
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            ctx = ctx.enter(str(ref))
            schema = _merge(_as_schema(_resolve(ctx.root, ref)), rest)
        elif isinstance(schema.get("allOf"), list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                flat, ctx = _flatten(_as_schema(part), ctx)
                merged = _merge(merged, flat)
            schema = merged
        else:
            return schema, ctx
    return {}, ctx


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One schema that demands what both demand (best effort: where they clash, `a` wins)."""
    out = dict(a)
    for key, theirs in b.items():
        if key not in out:
            out[key] = theirs
            continue
        mine = out[key]
        if key == "properties" and isinstance(mine, dict) and isinstance(theirs, dict):
            out[key] = {**mine, **{k: {"allOf": [mine[k], v]} if k in mine else v for k, v in theirs.items()}}
        elif key == "required" and isinstance(mine, list) and isinstance(theirs, list):
            out[key] = list(dict.fromkeys([*mine, *theirs]))
        elif key == "type":
            out[key] = _intersect_types(mine, theirs)
        elif key == "enum" and isinstance(mine, list) and isinstance(theirs, list):
            out[key] = [v for v in mine if any(_same(v, w) for w in theirs)]
        elif key in _LOWER and _is_number(mine) and _is_number(theirs):
            out[key] = max(mine, theirs)
        elif key in _UPPER and _is_number(mine) and _is_number(theirs):
            out[key] = min(mine, theirs)
        elif key in ("anyOf", "oneOf") and isinstance(mine, list) and isinstance(theirs, list):
            out[key] = [{"allOf": [x, y]} for x in mine for y in theirs]
        elif key == "allOf" and isinstance(mine, list) and isinstance(theirs, list):
            out[key] = [*mine, *theirs]
        elif key in ("items", "additionalProperties", "contains"):
            out[key] = False if False in (mine, theirs) else {"allOf": [mine, theirs]}
    return out


def _intersect_types(a: Json, b: Json) -> Json:
    mine = [a] if isinstance(a, str) else list(a) if isinstance(a, list) else []
    theirs = [b] if isinstance(b, str) else list(b) if isinstance(b, list) else []
    both = [t for t in mine if t in theirs or (t == "integer" and "number" in theirs)]
    both += [t for t in theirs if t == "integer" and "number" in mine and t not in both]
    return both or a


def _is_number(value: Json) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(a: Json, b: Json) -> bool:
    """JSON equality: `true` is not `1`, `1` is `1.0`."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _object_at(schema: dict[str, Any], key: str) -> dict[str, Any]:
    """`schema[key]` when it is an object (`properties`, `patternProperties`, ...), else `{}`."""
    value = schema.get(key)
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------ generation


def _generate(schema: Json, ctx: _Ctx, name: str, variant: int) -> Json:
    if schema is False or len(ctx.path) > _HARD_DEPTH:
        return None  # nothing is valid here; null is as good as anything
    schema, ctx = _flatten(_as_schema(schema), ctx)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list):
        return _from_enum(schema, ctx, variant)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _from_branches(schema, key, ctx, name, variant)
    hint = _hint(schema, ctx) if variant == 0 else None
    if hint is not None:
        return hint
    return _BUILDERS[_kind(schema, ctx)](schema, ctx, name, variant)


def _from_enum(schema: dict[str, Any], ctx: _Ctx, variant: int) -> Json:
    rest = {k: v for k, v in schema.items() if k != "enum"}
    values = [v for v in schema["enum"] if _conforms(v, rest, ctx.root, 0)] or schema["enum"]
    return values[variant % len(values)] if values else None


def _from_branches(schema: dict[str, Any], key: str, ctx: _Ctx, name: str, variant: int) -> Json:
    """The first branch (non-null ones first, or null first when minimal) whose value
    passes the whole schema; failing that, the first branch's value."""
    base = {k: v for k, v in schema.items() if k != key}
    branches = schema[key]
    order = sorted(range(len(branches)), key=lambda i: _is_null_branch(branches[i], ctx) != ctx.minimal)
    first: tuple[Json] | None = None
    for i in order:
        branch, branch_ctx = _flatten(_as_schema(branches[i]), ctx)
        value = _generate(_merge(base, branch), branch_ctx, name, variant)
        if _conforms(value, schema, ctx.root, 0):
            return value
        first = first or (value,)
    return first[0] if first else None


def _is_null_branch(branch: Json, ctx: _Ctx) -> bool:
    flat, _ = _flatten(_as_schema(branch), ctx)
    kind = flat.get("type")
    return (
        kind == "null"
        or kind == ["null"]
        or ("const" in flat and flat["const"] is None)
        or flat.get("enum") == [None]
    )


def _hint(schema: dict[str, Any], ctx: _Ctx) -> Json:
    """A scalar `examples`/`example`/`default` that is valid; structures are generated so
    they show every property and an item."""
    candidates = list(schema["examples"]) if isinstance(schema.get("examples"), list) else []
    candidates += [schema[k] for k in ("example", "default") if k in schema]
    for candidate in candidates:
        if candidate is not None and not isinstance(candidate, (dict, list)):
            if _conforms(candidate, schema, ctx.root, 0):
                return candidate
    return None


def _kind(schema: dict[str, Any], ctx: _Ctx) -> str:
    declared = schema.get("type")
    types = [declared] if isinstance(declared, str) else declared if isinstance(declared, list) else []
    # membership first: only strings are builder names (and an unhashable entry raises as before)
    known = [t for t in types if t in _BUILDERS and isinstance(t, str)]
    if known:
        # a null member loses to any other type, unless recursion asks for the least
        return sorted(known, key=lambda t: (t == "null") != ctx.minimal)[0]
    for kind, hints in (("object", _OBJECT_HINTS), ("array", _ARRAY_HINTS),
                        ("string", _STRING_HINTS), ("number", _NUMBER_HINTS)):
        if any(h in schema for h in hints):
            return kind
    return "string"


# ------------------------------------------------------------------ objects and arrays


def _object(schema: dict[str, Any], ctx: _Ctx, name: str, variant: int) -> dict[str, Json]:
    props = _object_at(schema, "properties")
    required = [r for r in schema.get("required") or [] if isinstance(r, str)]
    keys = [k for k in props if k in required] if ctx.minimal else list(props)
    keys += [r for r in required if r not in props]
    out = {key: _generate(_property_schema(schema, key), ctx, key, variant) for key in keys}
    _add_dependencies(out, schema, ctx, variant)
    _fit_property_count(out, schema, ctx, required, variant)
    return out


def _property_schema(schema: dict[str, Any], key: str) -> Json:
    props = _object_at(schema, "properties")
    if key in props:
        return props[key]
    patterns = _object_at(schema, "patternProperties")
    for pattern, sub in patterns.items():
        if _search(pattern, key):
            return sub
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else {}


def _add_dependencies(out: dict[str, Json], schema: dict[str, Any], ctx: _Ctx, variant: int) -> None:
    deps = _object_at(schema, "dependentRequired")
    for key in list(out):
        for needed in deps.get(key) or []:
            if isinstance(needed, str) and needed not in out:
                out[needed] = _generate(_property_schema(schema, needed), ctx, needed, variant)


def _fit_property_count(
    out: dict[str, Json], schema: dict[str, Any], ctx: _Ctx, required: list[str], variant: int
) -> None:
    least = schema.get("minProperties")
    extra = schema.get("additionalProperties", {})
    while isinstance(least, int) and len(out) < least and extra is not False:
        key = f"extra_{len(out) + 1}"
        out[key] = _generate(_property_schema(schema, key), ctx, key, variant)
    most = schema.get("maxProperties")
    for key in reversed([k for k in out if k not in required]):
        if not isinstance(most, int) or len(out) <= most:
            break
        del out[key]


def _array(schema: dict[str, Any], ctx: _Ctx, name: str, variant: int) -> list[Json]:
    prefix, rest = _item_schemas(schema)
    least = min_items if isinstance(min_items := schema.get("minItems"), int) else 0
    count = least if ctx.minimal else max(least, len(prefix), 1)
    if isinstance(schema.get("maxItems"), int):
        count = min(count, schema["maxItems"])
    if rest is False:
        count = min(count, len(prefix))
    item = _singular(name)
    items = [_generate(prefix[i] if i < len(prefix) else rest, ctx, item, variant + i) for i in range(count)]
    return _ensure_contains(items, schema, ctx, item, variant)


def _item_schemas(schema: dict[str, Any]) -> tuple[list[Json], Json]:
    """The positional item schemas and the schema for the items after them."""
    items = schema.get("items", {})
    if isinstance(items, list):  # draft 7's tuple form
        return items, schema.get("additionalItems", {})
    prefix = schema.get("prefixItems")
    return (prefix if isinstance(prefix, list) else []), items


def _ensure_contains(items: list[Json], schema: dict[str, Any], ctx: _Ctx, name: str, variant: int) -> list[Json]:
    wanted = schema.get("contains")
    if wanted is None or any(_conforms(i, wanted, ctx.root, 0) for i in items):
        return items
    value = _generate(wanted, ctx, name, variant)
    return [*items[:-1], value] if items and len(items) >= schema.get("maxItems", math.inf) else [*items, value]


def _singular(name: str) -> str:
    if name.endswith("ies") and len(name) > 4:
        return name[:-3] + "y"
    if name.endswith("s") and not name.endswith("ss") and len(name) > 3:
        return name[:-1]
    return name


# ------------------------------------------------------------------ scalars


def _null(schema: dict[str, Any], ctx: _Ctx, name: str, variant: int) -> None:
    return None


def _boolean(schema: dict[str, Any], ctx: _Ctx, name: str, variant: int) -> bool:
    return variant % 2 == 0


def _integer(schema: dict[str, Any], ctx: _Ctx, name: str, variant: int) -> int:
    # with integer=True every candidate is snapped to an int and the fallback is 1: int() is a
    # no-op at run time, it states what `_number_value`'s float | int signature cannot
    return int(_number_value(schema, True, variant))


def _number(schema: dict[str, Any], ctx: _Ctx, name: str, variant: int) -> float | int:
    return _number_value(schema, False, variant)


def _bounds(schema: dict[str, Any]) -> tuple[float | None, bool, float | None, bool]:
    """(low, low is exclusive, high, high is exclusive), for draft 4 and 2020-12 alike."""
    low, high = schema.get("minimum"), schema.get("maximum")
    low = low if _is_number(low) else None
    high = high if _is_number(high) else None
    low_open = high_open = False
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if ex_low is True:
        low_open = low is not None
    elif _is_number(ex_low) and (low is None or ex_low >= low):
        low, low_open = ex_low, True
    if ex_high is True:
        high_open = high is not None
    elif _is_number(ex_high) and (high is None or ex_high <= high):
        high, high_open = ex_high, True
    return low, low_open, high, high_open


def _number_value(schema: dict[str, Any], integer: bool, variant: int) -> float | int:
    """The `variant`-th distinct valid number, in order of preference (so items of a
    `uniqueItems` array differ)."""
    low, low_open, high, high_open = _bounds(schema)
    if integer:  # the integer interval, closed
        low = None if low is None else (math.floor(low) + 1 if low_open else math.ceil(low))
        high = None if high is None else (math.ceil(high) - 1 if high_open else math.floor(high))
        low_open = high_open = False
    step = schema.get("multipleOf") if _is_number(schema.get("multipleOf")) and schema["multipleOf"] > 0 else None
    checks = {k: schema[k] for k in _NUMBER_HINTS if k in schema}
    checks["type"] = "integer" if integer else "number"
    found: list[float] = []
    for value in _number_candidates(low, low_open, high, high_open, integer, step):
        if _conforms(value, checks, checks, 0) and not any(value == f for f in found):
            found.append(value)
            if len(found) > variant:
                return value
    return found[-1] if found else (1 if integer else 1.5)


def _number_candidates(
    low: float | None, low_open: bool, high: float | None, high_open: bool, integer: bool, step: float | None
) -> Iterator[float]:
    """1 (1.5), the middle of the range and its ends; then stepping away from each."""
    bases: list[float] = [1 if integer else 1.5]
    if low is not None and high is not None:
        bases.append(math.floor((low + high) / 2) if integer else (low + high) / 2)
    if low is not None:
        bases.append(low + 1 if low_open else low)
    if high is not None:
        bases.append(high - 1 if high_open else high)
    bases.append(0)
    unit = step or (1 if integer or low is None or high is None else min(1, (high - low) / 8))
    for i in range(64):
        for shift in (i, -i) if i else (0,):
            for base in bases:
                yield _snap(base + shift * unit, step, integer)


def _snap(value: float, step: float | None, integer: bool) -> float:
    """The multiple of `step` nearest `value` (an int where it is whole and ints fit)."""
    if step is not None:
        value = round(value / step) * step
    if (integer or isinstance(step, int)) and float(value).is_integer():
        return int(value)
    return value


def _string(schema: dict[str, Any], ctx: _Ctx, name: str, variant: int) -> str:
    fmt = schema.get("format")
    base = _FORMATS[fmt](name, variant) if fmt in _FORMATS else _readable(name, variant)
    candidates = list(dict.fromkeys([base, _fit_length(base, schema)]))
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        candidates += [p for extra in (0, 1, 3, 8, 24) if (p := pattern_example(pattern, extra)) is not None]
        candidates += [_fit_length(s, schema) for s in _STOCK]
    checks = {k: schema[k] for k in ("minLength", "maxLength", "pattern") if k in schema}
    for candidate in candidates:
        if _conforms(candidate, checks, checks, 0):
            return candidate
    return candidates[0]


def _fit_length(text: str, schema: dict[str, Any]) -> str:
    least, most = schema.get("minLength"), schema.get("maxLength")
    if isinstance(least, int) and len(text) < least:
        text = " ".join([text] * (least // (len(text) + 1) + 1))[:least]
    if isinstance(most, int) and len(text) > most:
        text = text[:most]
    return text


def _words(name: str) -> list[str]:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return [w for w in re.split(r"[\s_\-.]+", spaced.lower()) if w]


def _readable(name: str, variant: int) -> str:
    words = _words(name)
    text = " ".join(["mock", *(words[1:] if words[:1] == ["mock"] else words)])
    return f"{text} {variant + 1}" if variant else text


def _slug(name: str, variant: int, sep: str) -> str:
    words = [re.sub(r"[^a-z0-9]", "", w) for w in _words(name)]
    slug = sep.join(w for w in ["mock", *words] if w)
    return f"{slug}{variant + 1}" if variant else slug


_FORMATS: dict[str, Callable[[str, int], str]] = {
    "date-time": lambda n, v: f"2024-01-{1 + v % 28:02d}T12:00:00Z",
    "date": lambda n, v: f"2024-01-{1 + v % 28:02d}",
    "time": lambda n, v: f"12:{v % 60:02d}:00Z",
    "email": lambda n, v: f"{_slug(n, v, '.')}@example.com",
    "idn-email": lambda n, v: f"{_slug(n, v, '.')}@example.com",
    "uri": lambda n, v: f"https://example.com/{_slug(n, v, '-')}",
    "url": lambda n, v: f"https://example.com/{_slug(n, v, '-')}",
    "iri": lambda n, v: f"https://example.com/{_slug(n, v, '-')}",
    "uri-reference": lambda n, v: f"https://example.com/{_slug(n, v, '-')}",
    "iri-reference": lambda n, v: f"https://example.com/{_slug(n, v, '-')}",
    "hostname": lambda n, v: f"{_slug(n, v, '-')}.example.com",
    "idn-hostname": lambda n, v: f"{_slug(n, v, '-')}.example.com",
    "ipv4": lambda n, v: f"192.0.2.{1 + v % 254}",
    "ipv6": lambda n, v: f"2001:db8::{1 + v:x}",
    "uuid": lambda n, v: str(uuid.uuid5(uuid.NAMESPACE_URL, f"switchyard-mock:{n}:{v}")),
    "duration": lambda n, v: f"P{1 + v}D",
    "json-pointer": lambda n, v: f"/{_slug(n, v, '-')}",
    "regex": lambda n, v: f"^{_slug(n, v, '-')}$",
    "byte": lambda n, v: "bW9jaw==",
}

_BUILDERS: dict[str, Callable[[dict[str, Any], _Ctx, str, int], Json]] = {
    "object": _object,
    "array": _array,
    "string": _string,
    "integer": _integer,
    "number": _number,
    "boolean": _boolean,
    "null": _null,
}


# ------------------------------------------------------------------ patterns


def pattern_example(pattern: str, extra: int = 0) -> str | None:
    """A string the regular expression matches, for simple expressions: every
    quantifier takes its minimum plus `extra` (within its maximum), every alternation
    its first branch, every class its first character from a readable alphabet.
    None when the expression is beyond this (or not valid)."""
    try:
        re.compile(pattern)
        text, end = _sequence(pattern, 0, extra)
    except (re.error, IndexError, ValueError):
        return None
    return text if end == len(pattern) else None


def _sequence(p: str, i: int, extra: int) -> tuple[str, int]:
    """The first alternative from p[i] up to the `)` closing it (not consumed) or the end."""
    out: list[str] = []
    while i < len(p) and p[i] != ")":
        if p[i] == "|":
            return "".join(out), _skip_alternatives(p, i)
        atom, i = _atom(p, i, extra)
        count, i = _quantifier(p, i, extra)
        out.append(atom * count)
    return "".join(out), i


def _skip_alternatives(p: str, i: int) -> int:
    depth = 0
    while i < len(p):
        c = p[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i = _class_end(p, i) + 1
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return i


def _atom(p: str, i: int, extra: int) -> tuple[str, int]:
    c = p[i]
    if c in "^$":
        return "", i + 1
    if c == "(":
        return _group(p, i, extra)
    if c == "[":
        end = _class_end(p, i)
        return _pick_char(p[i : end + 1]), end + 1
    if c == "\\":
        return _escape(p, i)
    if c == ".":
        return "a", i + 1
    return c, i + 1


def _group(p: str, i: int, extra: int) -> tuple[str, int]:
    j = i + 1
    if p.startswith(("?=", "?!", "?<=", "?<!"), j):  # lookarounds add no characters
        return "", _skip_alternatives(p, j) + 1
    if p.startswith(("?P<", "?<"), j):
        j = p.index(">", j) + 1
    elif p.startswith("?", j):
        j = p.index(":", j) + 1  # (?:...) and inline flags like (?i:...)
    text, end = _sequence(p, j, extra)
    if end >= len(p) or p[end] != ")":
        raise ValueError("unbalanced group")
    return text, end + 1


def _class_end(p: str, i: int) -> int:
    j = i + 1
    if j < len(p) and p[j] == "^":
        j += 1
    if j < len(p) and p[j] == "]":
        j += 1  # a leading ] is a literal
    while p[j] != "]":
        j += 2 if p[j] == "\\" else 1
    return j


_CONTROL = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}


def _escape(p: str, i: int) -> tuple[str, int]:
    c = p[i + 1]
    if c in "dDwWsS":
        return _pick_char(p[i : i + 2]), i + 2
    if c in "bBAZz":
        return "", i + 2  # anchors
    if c.isdigit():
        raise ValueError("back-references are not supported")
    if c in _CONTROL:
        return _CONTROL[c], i + 2
    if c == "x":
        return chr(int(p[i + 2 : i + 4], 16)), i + 4
    if c == "u":
        return chr(int(p[i + 2 : i + 6], 16)), i + 6
    return c, i + 2


_QUANTIFIER = re.compile(r"\{(\d+)(?:(,)(\d*))?\}")


def _quantifier(p: str, i: int, extra: int) -> tuple[int, int]:
    if i >= len(p):
        return 1, i
    c = p[i]
    if c in "*+?":
        count, i = {"*": extra, "+": 1 + extra, "?": min(1, extra)}[c], i + 1
    elif c == "{" and (m := _QUANTIFIER.match(p, i)):
        least = int(m.group(1))
        most = int(m.group(3)) if m.group(3) else (least if not m.group(2) else least + extra)
        count, i = min(least + extra, most), m.end()
    else:
        return 1, i
    if i < len(p) and p[i] in "?+":  # lazy or possessive: the same strings match
        i += 1
    return count, i


def _pick_char(atom: str) -> str:
    for char in _ALPHABET:
        if re.fullmatch(atom, char):
            return char
    raise ValueError(f"no readable character for {atom}")


def _search(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return True  # a pattern Python cannot read cannot be checked; do not block on it


# ------------------------------------------------------------------ checking


def _types_of(value: Json) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number", "integer"} if value.is_integer() else {"number"}
    if isinstance(value, str):
        return {"string"}
    if isinstance(value, list):
        return {"array"}
    return {"object"} if isinstance(value, dict) else set()


def _conforms(value: Json, schema: Json, root: Json, depth: int) -> bool:
    if schema is False:
        return False
    if not isinstance(schema, dict) or not schema or depth > 64:
        return True  # `true`, `{}`, or a $ref loop with no end: nothing left to check
    if "$ref" in schema and not _conforms(value, _resolve(root, schema["$ref"]), root, depth + 1):
        return False
    return all(check(value, schema, root, depth) for check in _CHECKS)


def _check_type(value: Json, schema: dict[str, Any], root: Json, depth: int) -> bool:
    declared = schema.get("type")
    if declared is None:
        return True
    wanted = {declared} if isinstance(declared, str) else set(declared)
    return bool(wanted & _types_of(value))


def _check_values(value: Json, schema: dict[str, Any], root: Json, depth: int) -> bool:
    if "const" in schema and not _same(value, schema["const"]):
        return False
    enum = schema.get("enum")
    return not isinstance(enum, list) or any(_same(value, v) for v in enum)


def _check_combinators(value: Json, schema: dict[str, Any], root: Json, depth: int) -> bool:
    def ok(sub: Json) -> bool:
        return _conforms(value, sub, root, depth + 1)

    if not all(ok(s) for s in schema.get("allOf") or []):
        return False
    if isinstance(schema.get("anyOf"), list) and not any(ok(s) for s in schema["anyOf"]):
        return False
    return not isinstance(schema.get("oneOf"), list) or sum(map(ok, schema["oneOf"])) == 1


def _check_object(value: Json, schema: dict[str, Any], root: Json, depth: int) -> bool:
    if not isinstance(value, dict):
        return True
    props = _object_at(schema, "properties")
    patterns = _object_at(schema, "patternProperties")
    if any(isinstance(r, str) and r not in value for r in schema.get("required") or []):
        return False
    if not _count_ok(len(value), schema, "minProperties", "maxProperties"):
        return False
    for key, item in value.items():
        matched = [s for p, s in patterns.items() if _search(p, key)]
        if key in props:
            matched.append(props[key])
        elif not matched:
            matched.append(schema.get("additionalProperties", True))
        if not all(_conforms(item, s, root, depth + 1) for s in matched):
            return False
    return True


def _check_array(value: Json, schema: dict[str, Any], root: Json, depth: int) -> bool:
    if not isinstance(value, list):
        return True
    if not _count_ok(len(value), schema, "minItems", "maxItems"):
        return False
    prefix, rest = _item_schemas(schema)
    for i, item in enumerate(value):
        if not _conforms(item, prefix[i] if i < len(prefix) else rest, root, depth + 1):
            return False
    if schema.get("uniqueItems") is True and any(
        _same(value[i], value[j]) for i in range(len(value)) for j in range(i)
    ):
        return False
    wanted = schema.get("contains")
    return wanted is None or any(_conforms(item, wanted, root, depth + 1) for item in value)


def _check_string(value: Json, schema: dict[str, Any], root: Json, depth: int) -> bool:
    if not isinstance(value, str):
        return True
    if not _count_ok(len(value), schema, "minLength", "maxLength"):
        return False
    pattern = schema.get("pattern")
    return not isinstance(pattern, str) or _search(pattern, value)


def _check_number(value: Json, schema: dict[str, Any], root: Json, depth: int) -> bool:
    if not _is_number(value):
        return True
    low, low_open, high, high_open = _bounds(schema)
    if low is not None and (value <= low if low_open else value < low):
        return False
    if high is not None and (value >= high if high_open else value > high):
        return False
    step = schema.get("multipleOf")
    return not (_is_number(step) and step > 0) or _is_multiple(value, step)


def _is_multiple(value: int | float, step: int | float) -> bool:
    if isinstance(step, float):  # as jsonschema does it: the quotient must be integral
        quotient = value / step
        return math.isfinite(quotient) and int(quotient) == quotient
    return value % step == 0


def _count_ok(count: int, schema: dict[str, Any], low_key: str, high_key: str) -> bool:
    low, high = schema.get(low_key), schema.get(high_key)
    return not (isinstance(low, int) and count < low) and not (isinstance(high, int) and count > high)


_CHECKS = (_check_type, _check_values, _check_combinators, _check_object, _check_array, _check_string, _check_number)
