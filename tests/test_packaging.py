"""What `pip install` gives a user: the wheel carries its data (the price list) and the
LICENSE, and an installed switchyard run outside the source tree prices requests."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support import REPO, chat_body, eventually, free_port

pytestmark = pytest.mark.integration  # pip builds and installs the wheel; the installed proxy serves

KEY = "sk-packaging-test"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("switchyard-*.whl")
    return built


def test_the_wheel_carries_the_price_list_and_the_license(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    data_dir = Path(__file__).resolve().parent.parent / "proxy" / "data"
    for data in sorted(p.name for p in data_dir.iterdir() if p.suffix in (".yaml", ".lua", ".html")):
        assert f"proxy/data/{data}" in names, data
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: MIT" in text


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return site


@pytest.fixture
def served(installed: Path, tmp_path: Path) -> Iterator[str]:
    """The installed package (not the source tree: another directory, PYTHONPATH first) serving a mock route."""
    (tmp_path / "proxy.yaml").write_text(f"""
providers: {{mock: {{type: mock}}}}
teams: {{t: {{keys: ["{KEY}"], budget: {{daily_usd: 10}}}}}}
routes: [{{name: fast, match: {{model: fast}}, to: mock/gpt-4o-mini}}]
""")
    env = {k: v for k, v in os.environ.items() if k != "SWITCHYARD_PRICING"}
    env["PYTHONPATH"] = str(installed)
    where = subprocess.run([sys.executable, "-c", "import proxy; print(proxy.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(installed)), where
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", "proxy.yaml", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            return _healthy(base)

        eventually(up, timeout=20, interval=0.05, what=lambda: (tmp_path / "server.log").read_text())
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_installed_switchyard_prices_requests_outside_the_source_tree(served: str):
    r = httpx.post(served + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                   json=chat_body())
    assert r.status_code == 200
    assert float(r.headers["x-switchyard-cost-usd"]) > 0  # gpt-4o-mini's list price, from the wheel
