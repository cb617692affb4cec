"""Complexity as a routing condition: the served decision, the config knobs, the CLI's explanation."""

from __future__ import annotations

import subprocess
import sys

import pytest

from proxy.config import ConfigError
from proxy.snapshot import snapshot_from_text
from support import REPO, chat_body

KEY = "sk-complexity-1"
CONFIG = f"""
ledger: {{path: off}}
providers: {{mock: {{type: mock}}}}
teams: {{t: {{keys: ["{KEY}"]}}}}
routes:
  - {{name: cheap, match: {{model: auto, complexity: [simple]}}, to: mock/small}}
  - {{name: middle, match: {{model: auto, complexity: [medium]}}, to: mock/mid}}
  - {{name: strong, match: {{model: auto}}, to: mock/large}}
"""
SIMPLE = "hi, what's the capital of France?"
COMPLEX = ("Prove that the halting problem is undecidable, then design a distributed consensus protocol that "
           "tolerates Byzantine faults, derive its message complexity step by step and compare the trade-offs "
           "with Raft and PBFT under network partitions.")


@pytest.mark.parametrize("prompt, route", [(SIMPLE, "cheap"), (COMPLEX, "strong")])
async def test_prompts_route_by_complexity(app_client, prompt, route):
    client = await app_client(CONFIG)
    r = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json=chat_body("auto", prompt))
    assert r.status_code == 200 and r.headers["x-switchyard-route"] == route


def test_thresholds_and_weights_come_from_proxy_yaml():
    strict = snapshot_from_text(CONFIG + "complexity: {medium: 0.0, complex: 0.01}\n")
    assert strict.complexity.medium == 0.0 and strict.complexity.complex == 0.01
    weighted = snapshot_from_text(CONFIG + "complexity: {weights: {math: 2.0}}\n")
    assert weighted.complexity.weights["math"] == 2.0
    with pytest.raises(ConfigError) as info:
        snapshot_from_text(CONFIG + "complexity: {weights: {colour: 1}}\n")
    assert info.value.problems[0][0] == "complexity.weights.colour"
    with pytest.raises(ConfigError):
        snapshot_from_text(CONFIG + "complexity: {medium: 0.8, complex: 0.2}\n")


@pytest.mark.integration  # the CLI, in a process of its own
def test_route_explains_the_prompt(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG)
    done = subprocess.run([sys.executable, "-m", "proxy", "route", "--config", str(path), "--model", "auto",
                           "--prompt", SIMPLE], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "prompt complexity: simple" in done.stdout and "reasoning" in done.stdout
    assert "=> route cheap: mock/small" in done.stdout
