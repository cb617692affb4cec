"""The prompt registry: versioned message templates kept in `proxy.yaml` under `prompts:`.

A request names one with `"prompt": {"id", "version"?, "variables"?}` (the shape of the
Responses API's `prompt` parameter) on Chat Completions or Responses. The gateway renders
that version's messages ahead of the request's own, takes the field out before the
upstream call, and records prompt and version (ledger, `x-switchyard-prompt: id@version`).

Templates hold `{{name}}` placeholders; everything else is literal text. They are parsed
once, when the config compiles (`switchyard check` reports a malformed one with its
path), into literal parts and names, so rendering is a join. Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from proxy.errors import InvalidRequest, shown

if TYPE_CHECKING:
    from proxy.config import PromptConfig, PromptVersionConfig

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
_STRAY = re.compile(r"\{\{|\}\}")
_REFERENCE = re.compile(r"([^@\s]+)@([^@\s]+)")
FOREIGN_PREFIX = "pmpt_"  # OpenAI's own stored prompts: a Responses request may pass them through
SHOWN_NAMES = 20  # versions listed in an error message


# ---------------------------------------------------------------- templates


@dataclass(frozen=True, slots=True)
class Template:
    """Literal text with placeholders: literals[0] names[0] literals[1] ... literals[-1]."""

    literals: tuple[str, ...]
    names: tuple[str, ...]

    def render(self, values: Mapping[str, str]) -> str:
        if not self.names:
            return self.literals[0]
        out = [self.literals[0]]
        for name, literal in zip(self.names, self.literals[1:], strict=True):
            out.append(values[name])
            out.append(literal)
        return "".join(out)


def parse_template(text: str) -> Template | str:
    """The compiled template, or why it is malformed (a `{{` or `}}` that opens or closes
    no `{{name}}`; names are letters, digits, `_`, `.` and `-`, not starting with a digit)."""
    literals: list[str] = []
    names: list[str] = []
    start = 0
    for found in PLACEHOLDER.finditer(text):
        literals.append(text[start:found.start()])
        names.append(found.group(1))
        start = found.end()
    literals.append(text[start:])
    for literal in literals:
        stray = _STRAY.search(literal)
        if stray is not None:
            around = literal[max(0, stray.start() - 10):stray.end() + 20]
            return f"malformed placeholder near {around!r}: write {{{{name}}}} with a name of letters, digits, _ . -"
    return Template(tuple(literals), tuple(names))


# ---------------------------------------------------------------- the compiled registry


@dataclass(frozen=True, slots=True)
class PromptVersion:
    prompt: str
    version: str
    status: str  # draft | testing | active | deprecated
    model: str | None
    messages: tuple[tuple[str, Template], ...]  # (role, content)
    uses: frozenset[str]  # the variables its templates name

    @property
    def ref(self) -> str:
        return f"{self.prompt}@{self.version}"


@dataclass(frozen=True, slots=True)
class Prompt:
    id: str
    active: str
    versions: Mapping[str, PromptVersion]
    defaults: Mapping[str, str]  # declared variables with a default value
    variables: frozenset[str]  # the names a request may send: declared, or else what any version uses
    objective: str
    min_samples: int
    alpha: float


Registry = Mapping[str, Prompt]
EMPTY: Registry = MappingProxyType({})


def active_version(config: PromptConfig) -> str | None:
    """The version a request naming none gets: `active`, or the one version whose status is active."""
    if config.active is not None:
        return config.active
    actives = [name for name, v in config.versions.items() if v.status == "active"]
    return actives[0] if len(actives) == 1 else None


def compile_prompts(configs: Mapping[str, PromptConfig]) -> Registry:
    """The registry of a validated config (`prompt_problems` found nothing)."""
    return MappingProxyType({pid: _compile_prompt(pid, config) for pid, config in configs.items()})


def _compile_prompt(pid: str, config: PromptConfig) -> Prompt:
    active = active_version(config)
    assert active is not None, "validated: a prompt has an active version"
    versions = {name: _compile_version(pid, name, v, name == active) for name, v in config.versions.items()}
    defaults: dict[str, str] = {}
    if config.variables is None:
        variables = frozenset().union(*(v.uses for v in versions.values()))
    else:
        variables = frozenset(config.variables)
        if isinstance(config.variables, dict):
            defaults = {k: v for k, v in config.variables.items() if v is not None}
    report = config.report
    return Prompt(pid, active, MappingProxyType(versions), MappingProxyType(defaults), variables,
                  report.objective, report.min_samples, report.alpha)


def _compile_version(pid: str, name: str, config: PromptVersionConfig, is_active: bool) -> PromptVersion:
    messages = []
    uses: set[str] = set()
    for message in config.messages:
        template = parse_template(message.content)
        assert isinstance(template, Template), "validated: templates parse"
        messages.append((message.role, template))
        uses.update(template.names)
    status = config.status or ("active" if is_active else "draft")
    return PromptVersion(pid, name, status, config.model, tuple(messages), frozenset(uses))


# ---------------------------------------------------------------- config checks


def prompt_problems(prompts: Mapping[str, PromptConfig]) -> list[tuple[str, str]]:
    """Every problem of the `prompts:` section, as (path, reason)."""
    problems: list[tuple[str, str]] = []
    for pid, config in prompts.items():
        where = f"prompts.{pid}"
        if not _REFERENCE.fullmatch(f"{pid}@x"):
            problems.append((where, "a prompt id must not contain '@' or whitespace"))
        problems.extend(_active_problems(where, config))
        declared = None if config.variables is None else set(config.variables)
        for name, version in config.versions.items():
            vwhere = f"{where}.versions.{name}"
            if not _REFERENCE.fullmatch(f"x@{name}"):
                problems.append((vwhere, "a version name must not contain '@' or whitespace"))
            for i, message in enumerate(version.messages):
                template = parse_template(message.content)
                path = f"{vwhere}.messages[{i}].content"
                if isinstance(template, str):
                    problems.append((path, template))
                    continue
                undeclared = set() if declared is None else set(template.names) - declared
                for variable in sorted(undeclared):
                    problems.append((path, f"uses {{{{{variable}}}}}, which {where}.variables does not declare "
                                           f"(declared: {', '.join(sorted(declared or ())) or 'none'})"))
    return problems


def _active_problems(where: str, config: PromptConfig) -> list[tuple[str, str]]:
    actives = [name for name, v in config.versions.items() if v.status == "active"]
    if config.active is None:
        if len(actives) == 1:
            return []
        if not actives:
            return [(f"{where}.active", "no active version: name one in active (or give one version status: active)")]
        return [(f"{where}.versions", f"several versions have status active ({', '.join(actives)}); "
                                      "name the one requests get in active")]
    if config.active not in config.versions:
        return [(f"{where}.active", f"unknown version {config.active!r} (versions: {_listed(config.versions)})")]
    problems = []
    status = config.versions[config.active].status
    if status not in (None, "active"):
        problems.append((f"{where}.versions.{config.active}.status",
                         f"is {status}, but active names this version: make it active (or name another in active)"))
    for name in actives:
        if name != config.active:
            problems.append((f"{where}.versions.{name}.status",
                             f"only the version active names ({config.active}) may have status active"))
    return problems


def prompt_reference_problems(path: str, ref: str, prompts: Mapping[str, PromptConfig],
                              matched: Sequence[str] = ()) -> list[tuple[str, str]]:
    """An experiment variant's prompt must name a version that exists: `id@version`, or a
    bare version of the prompts the rule matches on (`matched`: its match.prompts)."""
    parsed = _REFERENCE.fullmatch(ref)
    if parsed is None:
        literal = [pid for pid in matched if "*" not in pid and "?" not in pid]
        if "@" in ref or not _REFERENCE.fullmatch(f"x@{ref}"):
            return [(path, f"{ref!r} must be id@version (e.g. support-answer@4), or a version of the "
                           "prompts the rule matches on")]
        if not matched:
            return [(path, f"{ref!r} names a version of no prompt: write id@version, or match: {{prompts: [id]}}")]
        return [(path, f"prompt {pid!r} has no version {ref!r} (versions: {_listed(prompts[pid].versions)})")
                for pid in literal if pid in prompts and ref not in prompts[pid].versions]
    pid, version = parsed.groups()
    if pid not in prompts:
        return [(path, f"unknown prompt {pid!r} (prompts: {_listed(prompts) or 'none'})")]
    if version not in prompts[pid].versions:
        return [(path, f"prompt {pid!r} has no version {version!r} (versions: {_listed(prompts[pid].versions)})")]
    return []


def split_reference(ref: str) -> tuple[str, str]:
    """`id@version` (validated) as its two parts; a bare version: ("", version), meaning a
    version of whichever prompt the request names."""
    pid, _, version = ref.rpartition("@")
    return pid, version


def _listed(names: Mapping[str, Any]) -> str:
    shown_names = list(names)[:SHOWN_NAMES]
    more = len(names) - len(shown_names)
    return ", ".join(shown_names) + (f" and {more} more" if more > 0 else "")


def describe_prompt(prompt: Prompt) -> dict[str, Any]:
    """What /admin/prompts and `switchyard prompts list` show of one prompt."""
    return {
        "id": prompt.id, "active": prompt.active,
        "variables": sorted(prompt.variables),
        "defaults": dict(prompt.defaults),
        "versions": [{"version": v.version, "status": v.status, "model": v.model, "messages": len(v.messages),
                      "variables": sorted(v.uses)} for v in prompt.versions.values()],
    }


# ---------------------------------------------------------------- a request's prompt


@dataclass(frozen=True, slots=True)
class PromptUse:
    """A request's registered prompt: the version chosen and the variables it sent."""

    prompt: Prompt
    version: PromptVersion
    variables: Mapping[str, str]
    pinned: bool  # the request named the version (an experiment on versions then leaves it alone)


def read_reference(registry: Registry, value: Any, *, foreign_ok: bool = False) -> PromptUse | None:
    """The request's `prompt` field checked against the registry (InvalidRequest naming what
    is wrong). None for a prompt the gateway does not keep that may pass through: an OpenAI
    stored prompt (`pmpt_...`) on the Responses API."""
    if not isinstance(value, dict):
        raise InvalidRequest("'prompt' must be an object: {\"id\": ..., \"version\": ..., \"variables\": {...}}",
                             param="prompt")
    pid = value.get("id")
    if not isinstance(pid, str) or not pid:
        raise InvalidRequest("'prompt.id' must be a non-empty string naming a registered prompt", param="prompt.id")
    prompt = registry.get(pid)
    if prompt is None:
        if foreign_ok and pid.startswith(FOREIGN_PREFIX):
            return None
        raise InvalidRequest(f"unknown prompt {shown(pid)}: it is not in this gateway's prompts", param="prompt.id")
    version = _version_of(prompt, value.get("version"))
    variables = _variables_of(prompt, value.get("variables"))
    return PromptUse(prompt, version, variables, pinned=value.get("version") is not None)


def _version_of(prompt: Prompt, named: Any) -> PromptVersion:
    if named is None:
        return prompt.versions[prompt.active]
    if isinstance(named, bool) or not isinstance(named, (str, int)):
        raise InvalidRequest("'prompt.version' must be a string", param="prompt.version")
    version = prompt.versions.get(str(named))
    if version is None:
        raise InvalidRequest(f"prompt {prompt.id!r} has no version {shown(str(named))} "
                             f"(versions: {_listed(prompt.versions)})", param="prompt.version")
    return version


def _variables_of(prompt: Prompt, given: Any) -> Mapping[str, str]:
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise InvalidRequest("'prompt.variables' must be an object of name: value", param="prompt.variables")
    known = prompt.variables
    values: dict[str, str] = {}
    for name, raw in given.items():
        if name not in known:
            raise InvalidRequest(f"unknown variable {shown(str(name))} for prompt {prompt.id!r} "
                                 f"(variables: {', '.join(sorted(known)) or 'none'})",
                                 param=f"prompt.variables.{name}")
        values[name] = _text_of(name, raw)
    return values


def _text_of(name: str, raw: Any) -> str:
    """A variable's value as text: a string, a number or a boolean, or an `input_text` part."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (int, float)):
        return str(raw)
    if isinstance(raw, dict) and raw.get("type") == "input_text" and isinstance(raw.get("text"), str):
        return str(raw["text"])
    raise InvalidRequest(f"variable {shown(name)} must be a string, a number or an input_text part "
                         "(images and files are not rendered into registered prompts)",
                         param=f"prompt.variables.{name}")


def render(use: PromptUse, version: PromptVersion | None = None) -> list[dict[str, str]]:
    """The version's messages (the one the request chose, or `version`) with the variables
    filled in; a variable the version needs and nobody gave is an InvalidRequest."""
    chosen = version or use.version
    values = use.variables
    missing = [name for name in chosen.uses if name not in values]
    if missing:
        defaults = use.prompt.defaults
        absent = sorted(name for name in missing if name not in defaults)
        if absent:
            raise InvalidRequest(f"prompt {chosen.ref} needs variable {absent[0]!r} "
                                 f"(missing: {', '.join(absent)})", param=f"prompt.variables.{absent[0]}")
        values = {**{name: defaults[name] for name in missing}, **values}
    return [{"role": role, "content": template.render(values)} for role, template in chosen.messages]


__all__ = ["EMPTY", "Prompt", "PromptUse", "PromptVersion", "Registry", "Template", "compile_prompts",
           "describe_prompt", "parse_template", "prompt_problems", "prompt_reference_problems", "read_reference",
           "render", "split_reference"]
