"""What the browser tests and the soak test share: Debian's chromium driven by Playwright, and the
app served as `make run` serves it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]


def browser_or_skip() -> str:
    if Path(CHROMIUM).exists() or shutil.which(CHROMIUM):
        return CHROMIUM
    message = f"no chromium at {CHROMIUM}: install it (apt-get install -y chromium) or set CHROMIUM"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve(runs: Path, log_dir: Path, model: str = "tiny"):
    """The app, started as `make run` starts it (streamlit run from the project folder, which reads
    .streamlit/config.toml), on `model` and the runs folder `runs`. Yields the app's URL and the server."""
    browser_or_skip()
    port = _free_port()
    env = {**os.environ, "VALUATION_MODEL": model, "VALUATION_RUNS_DIR": str(runs), "PYTHONUNBUFFERED": "1"}
    log = open(log_dir / "streamlit.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.address", "127.0.0.1",
         "--server.port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail(f"the app did not start within 60 s; see {log.name}")
    try:
        yield url, server
    finally:
        server.terminate()
        server.wait(timeout=20)


PAGES = ["Sources", "Training", "Playground", "Evaluate", "Shapley", "Validate", "Learn"]
NAV_LINKS = "[data-testid='stSidebarNav'] a"


def nav_titles(page) -> list[str]:
    """The sidebar's page links, by title (each link's text is its icon's name, then its title)."""
    return [text.split("\n")[-1] for text in page.locator(NAV_LINKS).all_inner_texts()]


def expect_the_real_app(page, title: str) -> None:
    """app.py's navigation (never the legacy listing of pages/, helpers included), its run picker, and the page."""
    expect(page.get_by_role("heading", name=title).first).to_be_visible(timeout=120_000)
    expect(page.locator(NAV_LINKS)).to_have_count(len(PAGES), timeout=120_000)
    wait_for_app(page)
    assert nav_titles(page) == PAGES
    expect(page.get_by_text("Current run")).to_be_visible()
    assert not page.get_by_text("Pick or create a run").count()
    assert not page.locator("[data-testid='stException']").count()


def wait_for_app(page) -> None:
    """A Streamlit page has rendered once stApp is present and no script is running."""
    page.wait_for_selector("[data-testid='stApp']")
    page.wait_for_function("!document.querySelector(\"[data-testid='stStatusWidget']\")", timeout=120_000)
    page.wait_for_timeout(500)


def open_expander(page, label: str) -> None:
    page.locator("[data-testid='stExpander'] summary", has_text=label).first.click()
    page.wait_for_timeout(300)


def set_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    wait_for_app(page)
