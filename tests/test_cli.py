"""The `switchyard` commands as an operator runs them: a real process, its stdout, stderr
and exit status. (In-process calls would replace pytest's logging set-up.)"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import proxy
from support import REPO, ServerProcess

pytestmark = pytest.mark.integration  # every test runs the CLI in a process of its own

KEY = "sk-cli-team-key"
CONFIG = f"""
providers:
  mock: {{type: mock}}
  gone: {{type: openai, base_url: "http://127.0.0.1:9", api_key: "${{CLI_TEST_UNSET_KEY}}"}}
teams:
  search:
    keys: ["sha256:{hashlib.sha256(KEY.encode()).hexdigest()}", "${{CLI_TEST_TEAM_KEY}}", "plain-key-in-file"]
  research:
    keys: ["${{CLI_TEST_UNSET_KEY}}"]
routes:
  - {{name: vip, match: {{model: smart, users: [alice]}}, to: mock/big}}
  - name: ab
    match: {{model: ab}}
    experiment:
      variants: {{control: mock/a, challenger: {{to: mock/b, weight: 3}}}}
      objective: latency
      min_samples: 20
  - {{name: smart, match: {{model: smart}}, to: mock/small}}
"""


def run(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "CLI_TEST_TEAM_KEY": "sk-from-env", **(env or {})}
    environment.pop("CLI_TEST_UNSET_KEY", None)
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, cwd=cwd,
                          env=environment, timeout=60)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG)
    return path


def test_version():
    done = run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"switchyard {proxy.__version__}"


def test_keys_new_refuses_an_unknown_team(config):
    done = run("keys", "new", "--team", "nobody", "--config", str(config))
    assert done.returncode == 2
    assert "no team 'nobody'" in done.stderr and "search, research" in done.stderr
    assert "sk-sy-" not in done.stdout  # no key is minted for a team that cannot use it


def test_keys_new_prints_a_key_and_the_line_to_append(config):
    done = run("keys", "new", "--team", "search", "--config", str(config))
    assert done.returncode == 0, done.stderr
    key = next(line.strip() for line in done.stdout.splitlines() if line.strip().startswith("sk-sy-"))
    assert f'"sha256:{hashlib.sha256(key.encode()).hexdigest()}"' in done.stdout
    assert "append this item to teams.search.keys" in done.stdout


def test_keys_list_shows_fingerprints_and_origins_never_keys(config):
    done = run("keys", "list", "--config", str(config))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for secret in (KEY, "sk-from-env", "plain-key-in-file"):
        assert secret not in out
    rows = [line.split(None, 3) for line in out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["search", "search", "search", "research"]
    assert rows[0][2] == "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()[:12]
    assert "sha256 in the file" in rows[0][3]
    assert rows[1][2] == "sha256:" + hashlib.sha256(b"sk-from-env").hexdigest()[:12]
    assert rows[1][3] == "${CLI_TEST_TEAM_KEY}"
    assert "plain text in the file" in rows[2][3]
    assert rows[3][2] == "-" and "unset" in rows[3][3]


def test_experiments_list(config, tmp_path):
    done = run("experiments", "list", "--config", str(config))
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split()[:2] == ["experiment", "route"]
    assert row.split()[:2] == ["ab", "ab"]
    assert "control=mock/a (1)" in row and "challenger=mock/b (3)" in row and "latency" in row
    plain = tmp_path / "plain.yaml"
    plain.write_text("providers: {mock: {type: mock}}\nroutes: [{name: a, to: mock/x}]\n")
    assert "no experiments" in run("experiments", "list", "--config", str(plain)).stdout


def test_route_shows_a_missing_user_as_a_dash(config):
    done = run("route", "--config", str(config), "--model", "smart", "--team", "search")
    assert done.returncode == 0, done.stderr
    assert "None" not in done.stdout
    assert "user=-" in done.stdout and "user - not in users" in done.stdout
    assert "=> route smart: mock/small" in done.stdout


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n"])
def test_check_refuses_an_empty_file_like_the_server(tmp_path, text):
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    done = run("check", str(path))
    assert done.returncode == 1
    assert "empty" in done.stderr
    served = run("serve", "--config", str(path), "--port", "9")  # refused before it binds
    assert served.returncode == 1 and "empty" in served.stderr


def test_usage_on_a_missing_ledger_says_so(config):
    done = run("usage", "--config", str(config))
    assert done.returncode == 1
    assert "no ledger at" in done.stderr and str(config.parent / "switchyard.db") in done.stderr
    assert not (config.parent / "switchyard.db").exists()  # looking must not create it


def test_serve_logs_one_startup_line_and_only_json_when_not_on_a_terminal(tmp_path):
    """Warnings printed while loading (here: a disabled provider) are log lines of the one format."""
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG)
    with ServerProcess(path, env={"CLI_TEST_TEAM_KEY": "sk-from-env"}) as server:
        pass
    lines = [line for line in server.log().splitlines() if line.strip()]
    for line in lines:
        json.loads(line)  # every line, whoever wrote it
    messages = [json.loads(line).get("message", "") for line in lines]
    startup = [m for m in messages if m.startswith(f"switchyard {proxy.__version__} serving")]
    assert len(startup) == 1
    for part in (server.base_url, str(path), "providers: mock (mock)", "disabled: gone: CLI_TEST_UNSET_KEY",
                 "cache: off", "accounting: memory", "ledger: " + str(tmp_path / "switchyard.db"),
                 "admin API: off"):
        assert part in startup[0], part
    # said once by `serve`, not again by the worker that loads the same file
    assert sum("provider gone disabled" in m for m in messages) == 1


def test_log_format_can_be_chosen_by_the_environment(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG)
    with ServerProcess(path, env={"SWITCHYARD_LOG_FORMAT": "text"}) as server:
        pass
    first = server.log().splitlines()[0]
    assert not first.startswith("{") and " INFO switchyard: switchyard " in first


def test_make_test_says_what_it_cannot_install(tmp_path):
    """tests/install-tools.sh without prometheus, redis-server or a package manager on PATH:
    it names what is missing and how to get it, and lets the suite run (exit 0)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").symlink_to("/usr/bin/id")
    done = subprocess.run(["/bin/bash", str(REPO / "tests" / "install-tools.sh")], capture_output=True, text=True,
                          env={"PATH": str(bin_dir)}, timeout=30)
    assert done.returncode == 0
    assert "prometheus redis-server not installed" in done.stderr
    assert "sudo apt-get install prometheus redis-server" in done.stderr
