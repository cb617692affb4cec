"""The prompt registry: templates parse or say why not, the config check names every bad
prompt by its path, a request's `prompt` renders the chosen version ahead of its own
messages (or is refused naming what is wrong), routing runs experiments on prompt
versions, and the gateway records and reports per version — in process and through the
served gateway with the official SDK."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest

from proxy.config import ConfigError
from proxy.errors import InvalidRequest
from proxy.experiments import Samples, analyse_prompt
from proxy.prompts import Template, parse_template, read_reference, render
from proxy.routing import RouteRequest, decide
from proxy.snapshot import snapshot_from_text
from proxy.tasks import drain
from support import FakeUpstream, ServerProcess, completion

KEY, ADMIN = "sk-prompts-team", "sk-prompts-admin"
AUTH = {"authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN}"}

PROMPTS = """
prompts:
  support-answer:
    active: "3"
    variables: {product: null, tone: brief}
    versions:
      "2": {status: deprecated, messages: [{role: system, content: "You help with {{product}}."}]}
      "3": {status: active, messages: [{role: system, content: "You are the {{product}} expert. Be {{tone}}."}]}
      "4": {status: testing, model: smart, messages: [{role: system, content: "Expert on {{ product }}."},
                                                      {role: user, content: "Context: {{product}} docs."}]}
      "5": {messages: [{role: developer, content: "Draft for {{product}}."}]}
  greeting:
    versions:
      "1": {status: active, messages: [{role: system, content: "Greet {{name}} warmly."}]}
"""


def config(upstream: str = "http://127.0.0.1:9/v1", ledger: str = "off", extra: str = "", routes: str = "") -> str:
    return f"""
server: {{admin_keys: ["{ADMIN}"]}}
ledger: {{path: "{ledger}"}}
cache: {{backend: memory}}
resilience: {{retries: 0}}
{extra}
providers:
  up: {{type: openai, base_url: "{upstream}", api_key: sk-up}}
pricing:
  up/small: {{input: 1, output: 2}}
  up/big: {{input: 5, output: 10}}
teams:
  t: {{keys: ["{KEY}"]}}
{PROMPTS}
routes:
{routes}
  - {{name: smart, match: {{model: smart}}, to: up/big}}
  - {{name: fast, match: {{model: fast}}, to: up/small}}
"""


# ---------------------------------------------------------------- templates


@pytest.mark.parametrize("text, literals, names", [
    ("plain text", ("plain text",), ()),
    ("Hello {{name}}!", ("Hello ", "!"), ("name",)),
    ("{{ a }}{{b}}", ("", "", ""), ("a", "b")),
    ("{{user.first-name_2}}", ("", ""), ("user.first-name_2",)),
    ("json {\"a\": 1} and {single}", ("json {\"a\": 1} and {single}",), ()),
    ("{{x}} and {{x}}", ("", " and ", ""), ("x", "x")),
])
def test_templates_parse_into_literals_and_names(text, literals, names):
    template = parse_template(text)
    assert template == Template(literals, names)


@pytest.mark.parametrize("text", ["{{}}", "{{1x}}", "a }} b", "{{name}", "{{ two words }}", "{{na me}}",
                                  "start {{", "{{{{x}}}}", "{{x}}}}"])
def test_malformed_placeholders_are_named(text):
    problem = parse_template(text)
    assert isinstance(problem, str) and "malformed placeholder" in problem


@pytest.mark.parametrize("text, values, out", [
    ("Hi {{n}}.", {"n": "Ann"}, "Hi Ann."),
    ("{{a}}{{b}}{{a}}", {"a": "1", "b": "2"}, "121"),
    ("no vars", {}, "no vars"),
    ("{{v}}", {"v": "{{not expanded}}"}, "{{not expanded}}"),  # values are never templates themselves
])
def test_rendering_fills_values_once(text, values, out):
    template = parse_template(text)
    assert isinstance(template, Template) and template.render(values) == out


# ---------------------------------------------------------------- the config check


def problems_of(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        snapshot_from_text(text)
    return caught.value.problems


def prompts_config(prompts: str, routes: str = "") -> str:
    return f"""
providers: {{up: {{type: mock}}}}
teams: {{t: {{keys: [k]}}}}
prompts:
{prompts}
routes:
{routes}
  - {{name: r, match: {{model: m}}, to: up/x}}
"""


@pytest.mark.parametrize("prompts, routes, path, reason", [
    ('  p: {active: "9", versions: {"1": {messages: [{role: system, content: hi}]}}}', "",
     "prompts.p.active", "unknown version '9'"),
    ('  p: {active: "1", versions: {"1": {status: deprecated, messages: [{role: system, content: hi}]}}}', "",
     "prompts.p.versions.1.status", "is deprecated, but active names this version"),
    ('  p: {versions: {"1": {status: testing, messages: [{role: system, content: hi}]}}}', "",
     "prompts.p.active", "no active version"),
    ('  p: {versions: {"1": {status: active, messages: [{role: system, content: a}]},'
     ' "2": {status: active, messages: [{role: system, content: b}]}}}', "",
     "prompts.p.versions", "several versions have status active"),
    ('  p: {active: "1", versions: {"1": {messages: [{role: system, content: a}]},'
     ' "2": {status: active, messages: [{role: system, content: b}]}}}', "",
     "prompts.p.versions.2.status", "only the version active names (1)"),
    ('  p: {active: "1", variables: [a], versions: {"1": {messages: [{role: system, content: "{{a}} {{b}}"}]}}}',
     "", "prompts.p.versions.1.messages[0].content", "uses {{b}}, which prompts.p.variables does not declare"),
    ('  p: {active: "1", versions: {"1": {messages: [{role: system, content: "oops {{ x"}]}}}', "",
     "prompts.p.versions.1.messages[0].content", "malformed placeholder"),
    ('  p: {active: "1", versions: {"1": {messages: []}}}', "",
     "prompts.p.versions.1.messages", "at least 1"),
    ('  p: {active: "1", versions: {"1": {messages: [{role: robot, content: hi}]}}}', "",
     "prompts.p.versions.1.messages[0].role", ""),
    ('  "a@b": {active: "1", versions: {"1": {messages: [{role: system, content: hi}]}}}', "",
     "prompts.a@b", "must not contain '@'"),
    ('  p: {active: "1", versions: {"1": {messages: [{role: system, content: hi}]}}}',
     "  - {name: e, match: {model: m, prompts: [p]}, experiment: {variants: {a: {prompt: p@1}, b: {prompt: p@7}}}}",
     "routes[0].experiment.variants.b.prompt", "prompt 'p' has no version '7'"),
    ('  p: {active: "1", versions: {"1": {messages: [{role: system, content: hi}]}}}',
     "  - {name: e, match: {model: m, prompts: [p]}, experiment: {variants: {a: {prompt: q@1}, b: {prompt: p@1}}}}",
     "routes[0].experiment.variants.a.prompt", "unknown prompt 'q'"),
    ('  p: {active: "1", versions: {"1": {messages: [{role: system, content: hi}]}}}',
     "  - {name: e, match: {model: m}, experiment: {variants: {a: {prompt: \"1\"}, b: {to: up/y}}}}",
     "routes[0].experiment.variants.a.prompt", "names a version of no prompt"),
    ('  p: {active: "1", versions: {"1": {messages: [{role: system, content: hi}]}}}',
     "  - {name: e, match: {model: m, prompts: [p]}, experiment: {variants: {a: {prompt: \"9\"}, b: {to: up/y}}}}",
     "routes[0].experiment.variants.a.prompt", "prompt 'p' has no version '9'"),
    ('  p: {active: "1", versions: {"1": {messages: [{role: system, content: hi}]}}}',
     "  - {name: e, match: {model: m, prompts: [nope]}, to: up/y}",
     "routes[0].match.prompts[0]", "unknown prompt 'nope'"),
    ('  p: {active: "1", versions: {"1": {messages: [{role: system, content: hi}]}}}',
     "  - {name: e, match: {model: m, prompts: [p]}, experiment: {variants: {a: {weight: 2}, b: {to: up/y}}}}",
     "routes[0].experiment.variants.a", "a variant needs a target (to), a prompt version (prompt) or both"),
])
def test_check_names_each_bad_prompt_by_its_path(prompts, routes, path, reason):
    found = problems_of(prompts_config(prompts, routes))
    assert any(p == path and reason in r for p, r in found), found


def test_the_shipped_example_and_a_good_registry_compile():
    snapshot = snapshot_from_text(config())
    prompt = snapshot.prompts["support-answer"]
    assert prompt.active == "3" and prompt.versions["5"].status == "draft"
    assert prompt.versions["4"].model == "smart" and prompt.versions["4"].uses == {"product"}
    assert snapshot.prompts["greeting"].active == "1"  # the one version whose status is active


def test_check_command_reports_a_bad_template(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(prompts_config('  p: {active: "1", versions: {"1": {messages: [{role: system, content: "{{"}]}}}'))
    done = subprocess.run([sys.executable, "-m", "proxy", "check", str(path)], capture_output=True, text=True)
    assert done.returncode != 0
    assert "prompts.p.versions.1.messages[0].content" in done.stdout + done.stderr


# ---------------------------------------------------------------- a request's reference


@pytest.fixture(scope="module")
def registry():
    return snapshot_from_text(config()).prompts


@pytest.mark.parametrize("value, foreign_ok, param, message", [
    ("support-answer", False, "prompt", "must be an object"),
    ({}, False, "prompt.id", "non-empty string"),
    ({"id": 7}, False, "prompt.id", "non-empty string"),
    ({"id": "nope"}, False, "prompt.id", "unknown prompt 'nope'"),
    ({"id": "pmpt_abc"}, False, "prompt.id", "unknown prompt 'pmpt_abc'"),
    ({"id": "support-answer", "version": "9"}, False, "prompt.version", "has no version '9' (versions: 2, 3, 4, 5)"),
    ({"id": "support-answer", "version": ["3"]}, False, "prompt.version", "must be a string"),
    ({"id": "support-answer", "version": True}, False, "prompt.version", "must be a string"),
    ({"id": "support-answer", "variables": "x"}, False, "prompt.variables", "must be an object"),
    ({"id": "support-answer", "variables": {"colour": "red"}}, False, "prompt.variables.colour",
     "unknown variable 'colour'"),
    ({"id": "support-answer", "variables": {"product": ["x"]}}, False, "prompt.variables.product",
     "must be a string, a number or an input_text part"),
    ({"id": "support-answer", "variables": {"product": {"type": "input_image", "image_url": "u"}}}, False,
     "prompt.variables.product", "images and files are not rendered"),
])
def test_bad_references_are_refused_naming_the_field(registry, value, foreign_ok, param, message):
    with pytest.raises(InvalidRequest) as caught:
        read_reference(registry, value, foreign_ok=foreign_ok)
    assert caught.value.param == param and message in caught.value.message


def test_an_openai_stored_prompt_passes_through_where_it_may(registry):
    assert read_reference(registry, {"id": "pmpt_abc", "version": "2"}, foreign_ok=True) is None


@pytest.mark.parametrize("value, version, pinned, rendered", [
    ({"id": "support-answer", "variables": {"product": "Switchyard"}}, "3", False,
     [{"role": "system", "content": "You are the Switchyard expert. Be brief."}]),
    ({"id": "support-answer", "variables": {"product": "X", "tone": "formal"}}, "3", False,
     [{"role": "system", "content": "You are the X expert. Be formal."}]),
    ({"id": "support-answer", "version": 4, "variables": {"product": "X"}}, "4", True,
     [{"role": "system", "content": "Expert on X."}, {"role": "user", "content": "Context: X docs."}]),
    ({"id": "support-answer", "version": "5", "variables": {"product": 2}}, "5", True,
     [{"role": "developer", "content": "Draft for 2."}]),
    ({"id": "support-answer", "version": "2", "variables": {"product": {"type": "input_text", "text": "Y"}}}, "2",
     True, [{"role": "system", "content": "You help with Y."}]),
    ({"id": "greeting", "variables": {"name": True}}, "1", False, [{"role": "system", "content": "Greet true warmly."}]),
])
def test_references_render_the_chosen_version(registry, value, version, pinned, rendered):
    use = read_reference(registry, value)
    assert use is not None and use.version.version == version and use.pinned is pinned
    assert render(use) == rendered


def test_a_missing_variable_is_named(registry):
    use = read_reference(registry, {"id": "support-answer"})
    assert use is not None
    with pytest.raises(InvalidRequest) as caught:
        render(use)
    assert caught.value.param == "prompt.variables.product"
    assert "support-answer@3 needs variable 'product'" in caught.value.message


# ---------------------------------------------------------------- routing on prompts


EXPERIMENT_ROUTES = """
  - name: support-test
    match: {model: fast, prompts: [support-answer]}
    experiment:
      name: support-v4
      sticky: user
      variants:
        current: {prompt: support-answer@3}
        candidate: {prompt: support-answer@4, to: up/big}
"""


def route(snapshot, *, user="u1", prompt=None, pinned=None, model="fast"):
    team = snapshot.teams["t"]
    return decide(snapshot, RouteRequest(model=model, team=team, user=user, stream=False, now=datetime.now(UTC),
                                         rand=0.5, prompt=prompt, prompt_pinned=pinned))


def test_an_experiment_splits_on_prompt_versions_and_prompt_only_variants_fall_through():
    snapshot = snapshot_from_text(config(routes=EXPERIMENT_ROUTES))
    seen = {}
    for n in range(200):
        d = route(snapshot, user=f"user{n}", prompt="support-answer")
        seen[d.variant] = (d.route, str(d.target), d.prompt, d.experiment)
    assert seen == {
        "current": ("fast", "up/small", "support-answer@3", "support-v4"),  # the later route picked the target
        "candidate": ("support-test", "up/big", "support-answer@4", "support-v4"),
    }
    again = {route(snapshot, user="user7", prompt="support-answer").variant for _ in range(5)}
    assert len(again) == 1  # sticky per user


def test_variants_may_name_bare_versions_and_named_prompts_scope_the_rule_by_themselves():
    bare = EXPERIMENT_ROUTES.replace("prompt: support-answer@3", 'prompt: "3"')
    implicit = EXPERIMENT_ROUTES.replace("prompts: [support-answer]", "")
    for routes in (bare, implicit):
        snapshot = snapshot_from_text(config(routes=routes))
        prompts = {route(snapshot, user=f"user{n}", prompt="support-answer").prompt for n in range(60)}
        assert prompts in ({"3", "support-answer@4"}, {"support-answer@3", "support-answer@4"})
        assert route(snapshot, prompt="greeting").experiment is None
        assert route(snapshot).experiment is None


def test_the_experiment_leaves_other_prompts_pinned_versions_and_plain_requests_alone():
    snapshot = snapshot_from_text(config(routes=EXPERIMENT_ROUTES))
    for decision in (route(snapshot), route(snapshot, prompt="greeting"),
                     route(snapshot, prompt="support-answer", pinned="support-answer@5")):
        assert decision.route == "fast" and decision.experiment is None and decision.prompt is None


# ---------------------------------------------------------------- statistics per version


def test_the_report_compares_active_and_testing_versions_only():
    snapshot = snapshot_from_text(config())
    prompt = snapshot.prompts["support-answer"]

    def arm(scores: list[float], n: int) -> Samples:
        return Samples(cost=[0.001] * n, latency_ms=[100.0] * n, feedback=scores, requests=n)

    samples = {"3": arm([0.0] * 60 + [1.0] * 60, 120), "4": arm([1.0] * 115 + [0.0] * 5, 120),
               "2": arm([0.0] * 3, 3), "old": arm([], 2)}
    report = analyse_prompt(prompt, samples)
    assert report["control"] == "3"
    by_version = {v["version"]: v for v in report["versions"]}
    assert [v for v in by_version if by_version[v]["compared"]] == ["3", "4"]
    assert by_version["old"]["status"] == "removed" and by_version["5"]["requests"] == 0
    assert [c["version"] for c in report["comparisons"]] == ["4"]
    assert report["verdict"]["winner"] == "4" and report["verdict"]["status"] == "significant"
    early = analyse_prompt(prompt, {"3": arm([1.0] * 5, 5), "4": arm([0.0] * 5, 5)})
    assert early["verdict"]["winner"] is None and "min_samples" in early["verdict"]["reason"]


# ---------------------------------------------------------------- through the gateway


@pytest.fixture
async def upstream():
    async with FakeUpstream() as up:
        up.post("/chat/completions").respond(json=completion("fine"))
        up.post("/responses").respond(json={
            "id": "resp_1", "object": "response", "status": "completed", "model": "small",
            "output": [{"type": "message", "id": "m1", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": "fine", "annotations": []}]}],
            "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}})
        yield up


async def test_chat_renders_the_active_version_ahead_of_the_requests_messages(app_client, upstream, tmp_path):
    client = await app_client(config(upstream.base_url, str(tmp_path / "ledger.db")))
    body = {"model": "fast", "messages": [{"role": "user", "content": "How do I reload?"}],
            "prompt": {"id": "support-answer", "variables": {"product": "Switchyard"}}}
    r = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["x-switchyard-prompt"] == "support-answer@3"
    sent = upstream.post("/chat/completions").calls.last.request.json()
    assert "prompt" not in sent
    assert sent["messages"] == [{"role": "system", "content": "You are the Switchyard expert. Be brief."},
                                {"role": "user", "content": "How do I reload?"}]
    pinned = await client.post("/v1/chat/completions", headers=AUTH, json={
        **body, "prompt": {"id": "support-answer", "version": "4", "variables": {"product": "S"}}})
    assert pinned.headers["x-switchyard-prompt"] == "support-answer@4"
    assert pinned.headers["x-switchyard-route"] == "smart"  # version 4 asks for model smart
    assert upstream.post("/chat/completions").calls.last.request.json()["model"] == "big"
    await client.aclose()
    client = await app_client(config(upstream.base_url, str(tmp_path / "ledger.db")))
    report = (await client.get("/admin/prompts/support-answer", headers=ADMIN_AUTH)).json()
    requests = {v["version"]: v["requests"] for v in report["versions"]}
    assert requests == {"3": 1, "4": 1, "2": 0, "5": 0}


async def test_the_access_log_names_the_prompt_version(app_client, upstream, caplog):
    import logging

    client = await app_client(config(upstream.base_url))
    with caplog.at_level(logging.INFO, logger="switchyard.access"):
        await client.post("/v1/chat/completions", headers=AUTH, json={
            "model": "fast", "prompt": {"id": "greeting", "variables": {"name": "Ann"}}})
        await client.post("/v1/chat/completions", headers=AUTH, json={
            "model": "fast", "messages": [{"role": "user", "content": "no prompt"}]})
    logged = [r.fields["prompt"] for r in caplog.records if r.name == "switchyard.access"]
    assert logged == ["greeting@1", None]


async def test_a_prompt_alone_needs_no_messages_and_responses_take_it_too(app_client, upstream):
    client = await app_client(config(upstream.base_url))
    r = await client.post("/v1/chat/completions", headers=AUTH, json={
        "model": "fast", "prompt": {"id": "greeting", "variables": {"name": "Ann"}}})
    assert r.status_code == 200, r.text
    assert upstream.post("/chat/completions").calls.last.request.json()["messages"] == [
        {"role": "system", "content": "Greet Ann warmly."}]
    r = await client.post("/v1/responses", headers=AUTH, json={
        "model": "fast", "input": "hello", "prompt": {"id": "greeting", "variables": {"name": "Bo"}}})
    assert r.status_code == 200, r.text and r.headers["x-switchyard-prompt"] == "greeting@1"
    sent = upstream.post("/responses").calls.last.request.json()
    assert "prompt" not in sent
    assert sent["input"] == [{"role": "system", "content": "Greet Bo warmly."}, {"role": "user", "content": "hello"}]


@pytest.mark.parametrize("prompt, param", [
    ({"id": "nope"}, "prompt.id"),
    ({"id": "support-answer"}, "prompt.variables.product"),
    ({"id": "support-answer", "version": "8", "variables": {"product": "x"}}, "prompt.version"),
    ({"id": "greeting", "variables": {"name": "a", "extra": "b"}}, "prompt.variables.extra"),
])
async def test_bad_prompts_are_a_400_in_the_surfaces_shape(app_client, upstream, prompt, param):
    client = await app_client(config(upstream.base_url))
    for path, body in (("/v1/chat/completions", {"model": "fast", "messages": [{"role": "user", "content": "x"}]}),
                       ("/v1/responses", {"model": "fast", "input": "x"})):
        r = await client.post(path, headers=AUTH, json={**body, "prompt": prompt})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
    assert not upstream.post("/chat/completions").called and not upstream.post("/responses").called


async def test_legacy_completions_keep_their_own_prompt_field(app_client, upstream):
    upstream.post("/completions").respond(json={"id": "c", "object": "text_completion", "choices": [
        {"index": 0, "text": "ok", "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                                                         "total_tokens": 2}})
    client = await app_client(config(upstream.base_url))
    r = await client.post("/v1/completions", headers=AUTH, json={"model": "fast", "prompt": "support-answer"})
    assert r.status_code == 200, r.text and "x-switchyard-prompt" not in r.headers
    assert upstream.post("/completions").calls.last.request.json()["prompt"] == "support-answer"


async def test_the_cache_follows_the_rendered_messages_across_a_rollback(app_client, upstream, tmp_path):
    path = tmp_path / "proxy.yaml"
    client = await app_client(config(upstream.base_url), path=path)
    body = {"model": "fast", "messages": [{"role": "user", "content": "q"}],
            "prompt": {"id": "support-answer", "variables": {"product": "P"}}}
    assert (await client.post("/v1/chat/completions", json=body, headers=AUTH)).headers["x-switchyard-cache"] == "miss"
    await drain()
    assert (await client.post("/v1/chat/completions", json=body, headers=AUTH)).headers["x-switchyard-cache"] == "hit"
    other = {**body, "prompt": {**body["prompt"], "variables": {"product": "Q"}}}
    assert (await client.post("/v1/chat/completions", json=other, headers=AUTH)).headers["x-switchyard-cache"] == "miss"
    # roll back: version 2 becomes active; the same request renders otherwise and misses
    path.write_text(config(upstream.base_url).replace('active: "3"', 'active: "2"')
                    .replace("{status: active, messages: [{role: system, content: \"You are",
                             "{status: deprecated, messages: [{role: system, content: \"You are")
                    .replace('"2": {status: deprecated', '"2": {status: active'))
    reloaded = await client.post("/admin/reload", headers=ADMIN_AUTH)
    assert reloaded.status_code == 200, reloaded.text
    r = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert r.headers["x-switchyard-prompt"] == "support-answer@2" and r.headers["x-switchyard-cache"] == "miss"
    assert upstream.post("/chat/completions").calls.last.request.json()["messages"][0]["content"] == \
        "You help with P."


async def test_an_experiment_on_versions_renders_each_users_variant_and_records_it(app_client, upstream, tmp_path):
    ledger = tmp_path / "ledger.db"
    client = await app_client(config(upstream.base_url, str(ledger), routes=EXPERIMENT_ROUTES))
    seen: dict[str, tuple[str, str]] = {}
    for n in range(40):
        r = await client.post("/v1/chat/completions", headers={**AUTH, "x-switchyard-user": f"user{n}"}, json={
            "model": "fast", "messages": [{"role": "user", "content": f"q{n}"}],
            "prompt": {"id": "support-answer", "variables": {"product": "P"}}})
        assert r.status_code == 200, r.text
        system = upstream.post("/chat/completions").calls.last.request.json()["messages"][0]["content"]
        seen[r.headers["x-switchyard-experiment"]] = (r.headers["x-switchyard-prompt"], system)
    assert seen == {"support-v4:current": ("support-answer@3", "You are the P expert. Be brief."),
                    "support-v4:candidate": ("support-answer@4", "Expert on P.")}
    assert upstream.post("/chat/completions").calls.last.request.json()["model"] in ("small", "big")
    await client.aclose()
    client = await app_client(config(upstream.base_url, str(ledger), routes=EXPERIMENT_ROUTES))
    experiment = (await client.get("/admin/experiments/support-v4", headers=ADMIN_AUTH)).json()
    prompt = (await client.get("/admin/prompts/support-answer", headers=ADMIN_AUTH)).json()
    by_variant = {v["variant"]: v["requests"] for v in experiment["variants"]}
    by_version = {v["version"]: v["requests"] for v in prompt["versions"]}
    assert by_variant["current"] == by_version["3"] and by_variant["candidate"] == by_version["4"]
    assert by_version["3"] + by_version["4"] == 40
    listed = (await client.get("/admin/prompts", headers=ADMIN_AUTH)).json()["data"]
    assert [p["id"] for p in listed] == ["support-answer", "greeting"]
    assert (await client.get("/admin/prompts/nope", headers=ADMIN_AUTH)).status_code == 404
    assert (await client.get("/admin/prompts/support-answer", headers=AUTH)).status_code in (401, 403)


async def test_a_variant_naming_only_a_version_with_a_model_asks_for_that_model(app_client, upstream):
    routes = """
  - name: versions
    match: {model: fast}
    experiment:
      name: versions
      variants:
        current: {prompt: support-answer@3}
        smart-one: {prompt: support-answer@4}
"""
    client = await app_client(config(upstream.base_url, routes=routes))
    seen = {}
    for n in range(40):
        r = await client.post("/v1/chat/completions", headers={**AUTH, "x-switchyard-user": f"u{n}"}, json={
            "model": "fast", "messages": [{"role": "user", "content": f"q{n}"}],
            "prompt": {"id": "support-answer", "variables": {"product": "P"}}})
        assert r.status_code == 200, r.text
        seen[r.headers["x-switchyard-experiment"]] = (r.headers["x-switchyard-prompt"], r.headers["x-switchyard-route"],
                                                      upstream.post("/chat/completions").calls.last.request.json()["model"])
    assert seen == {"versions:current": ("support-answer@3", "fast", "small"),
                    "versions:smart-one": ("support-answer@4", "smart", "big")}  # version 4 says model: smart
    plain = await client.post("/v1/chat/completions", headers=AUTH,
                              json={"model": "fast", "messages": [{"role": "user", "content": "q"}]})
    assert "x-switchyard-experiment" not in plain.headers and plain.headers["x-switchyard-route"] == "fast"


# ---------------------------------------------------------------- the served gateway and the SDK


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[ServerProcess, Path]]:
    home = tmp_path_factory.mktemp("prompts")
    path = home / "proxy.yaml"
    path.write_text(f"""
server: {{admin_keys: ["{ADMIN}"]}}
ledger: {{path: "{home / 'ledger.db'}", flush_interval_s: 0.05}}
providers: {{mock: {{type: mock}}}}
teams: {{t: {{keys: ["{KEY}"]}}}}
{PROMPTS}
routes:
  - {{name: smart, match: {{model: smart}}, to: mock/gpt-4o}}
  - {{name: fast, match: {{model: fast}}, to: mock/gpt-4o-mini}}
""")
    with ServerProcess(path) as server:
        yield server, path


@pytest.mark.integration
def test_the_openai_sdk_sends_prompts_on_both_surfaces_and_the_cli_reports(served):
    server, path = served
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0) as client:
        chat = client.chat.completions.with_raw_response.create(
            model="fast", messages=[{"role": "user", "content": "hi"}],
            extra_body={"prompt": {"id": "support-answer", "variables": {"product": "Switchyard"}}})
        assert chat.headers["x-switchyard-prompt"] == "support-answer@3"
        assert chat.parse().choices[0].message.content
        streamed = client.responses.create(
            model="fast", input="hi", stream=True,
            prompt={"id": "support-answer", "version": "4", "variables": {"product": "Switchyard"}})
        kinds = [event.type for event in streamed]
        assert kinds[-1] == "response.completed"
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="fast", input="hi", prompt={"id": "support-answer"})
        assert caught.value.body["param"] == "prompt.variables.product"  # type: ignore[index]
    done = subprocess.run([sys.executable, "-m", "proxy", "prompts", "report", "support-answer", "--config",
                           str(path), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    counts = {v["version"]: v["requests"] for v in json.loads(done.stdout)["versions"]}
    assert counts["3"] >= 1 and counts["4"] >= 1
    listing = subprocess.run([sys.executable, "-m", "proxy", "prompts", "list", "--config", str(path)],
                             capture_output=True, text=True)
    assert listing.returncode == 0 and "support-answer" in listing.stdout and "4 (testing, smart)" in listing.stdout


def test_the_readmes_prompt_examples_are_valid_config():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("### Prompt registry"):readme.index("### Spend: ledger")]
    blocks = [b.split("```", 1)[0] for b in section.split("```yaml\n")[1:]]
    registry, routes = blocks
    snapshot = snapshot_from_text(f"""
providers: {{openai: {{type: mock}}}}
teams: {{t: {{keys: [k]}}}}
{registry}
{routes}
  - {{name: fast, match: {{model: fast}}, to: openai/gpt-4o-mini}}
  - {{name: smart, match: {{model: smart}}, to: openai/gpt-4o}}
""")
    assert set(snapshot.prompts["support-answer"].versions) == {"2", "3", "4", "5"}
    assert snapshot.routes[0].experiment is not None and snapshot.routes[0].experiment.prompts


def test_experiments_list_names_prompt_variants(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(config(routes=EXPERIMENT_ROUTES))
    done = subprocess.run([sys.executable, "-m", "proxy", "experiments", "list", "--config", str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "current=(later routes) + prompt support-answer@3 (1)" in done.stdout
    assert "candidate=up/big + prompt support-answer@4 (1)" in done.stdout


def test_the_route_dry_run_takes_a_prompt(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(config(routes=EXPERIMENT_ROUTES))

    def dry(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "proxy", "route", "--config", str(path), "--team", "t",
                               *args], capture_output=True, text=True)

    seen = set()
    for n in range(16):  # both variants among 16 users: all but certain (2 in 65,536 miss one)
        done = dry("--model", "fast", "--user", f"u{n}", "--prompt-id", "support-answer")
        assert done.returncode == 0, done.stderr
        seen.add(done.stdout.strip().splitlines()[-1].split("prompt ")[-1])
    assert seen == {"support-answer@3", "support-answer@4"}
    pinned = dry("--prompt-id", "support-answer", "--prompt-version", "4")
    assert "=> route smart: up/big" in pinned.stdout and "model=smart" in pinned.stdout
    assert dry("--model", "fast", "--prompt-id", "nope").returncode == 2
