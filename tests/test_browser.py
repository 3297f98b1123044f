"""End-to-end tests in a real browser (a user's flow: sources, training, playground, Shapley): Debian's chromium driven by Playwright, against the app
served on localhost with the tiny random model.

On a user's machine without chromium these tests skip with a message; under CI=true they fail.
Screenshots land in test-artifacts/ (ignored by git).
"""

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


def _browser_or_skip() -> str:
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
    """The app, started as a user would (streamlit run), on `model` and the runs folder `runs`."""
    _browser_or_skip()
    port = _free_port()
    env = {**os.environ, "VALUATION_MODEL": model, "VALUATION_RUNS_DIR": str(runs), "PYTHONUNBUFFERED": "1"}
    log = open(log_dir / "streamlit.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
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
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    """The app on the tiny model and a runs folder with one run already in it (so the shipped demo
    is not installed and the flow below starts from the user's own runs)."""
    runs = tmp_path_factory.mktemp("runs")
    from valuation.runs import create_run

    create_run("existing", root=runs)
    with serve(runs, tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.fixture(scope="session")
def browser(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_browser_or_skip(), headless=True,
            args=CHROMIUM_FLAGS)  # Playwright gives every launch a fresh, empty user-data dir
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def wait_for_app(page) -> None:
    """A Streamlit page has rendered once stApp is present and no script is running."""
    page.wait_for_selector("[data-testid='stApp']")
    page.wait_for_function("!document.querySelector(\"[data-testid='stStatusWidget']\")", timeout=120_000)
    page.wait_for_timeout(500)


def create_run(page, app_url: str, name: str) -> None:
    page.goto(app_url)
    wait_for_app(page)
    page.get_by_text("New run").click()
    page.get_by_placeholder("my-run").fill(name)
    page.get_by_role("button", name="Create").click()
    wait_for_app(page)


def open_page(page, title: str) -> None:
    page.get_by_role("link", name=title).first.click()
    wait_for_app(page)


def open_expander(page, label: str) -> None:
    page.locator("[data-testid='stExpander'] summary", has_text=label).first.click()
    page.wait_for_timeout(300)


def set_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    wait_for_app(page)


def snapshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def wait_for_job(page, kind: str, timeout_s: int = 600) -> None:
    """The page polls its job; wait for the badge to say done (and fail fast on failed)."""
    badge = page.get_by_text(f"{kind} job: done")
    failed = page.get_by_text(f"{kind} job: failed")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if badge.count():
            return
        assert not failed.count(), page.locator("[data-testid='stExpander']").last.inner_text()
        page.wait_for_timeout(2000)
    pytest.fail(f"the {kind} job did not finish within {timeout_s} s")


def test_choose_sources(page, app_url):
    create_run(page, app_url, "browser-sources")
    expect(page.get_by_role("heading", name="Sources")).to_be_visible()
    expect(page.get_by_text("helpful-rejection-sampled").first).to_be_visible()
    page.get_by_role("button", name="Save these sources to the run").click()
    wait_for_app(page)
    expect(page.get_by_text("Saved to run 'browser-sources'")).to_be_visible()


def test_train_generate_evaluate_and_read_values(page, app_url):
    """The whole product on the tiny model: sources, a background training watched live, two
    coalitions streaming side by side, an evaluation, and the Shapley charts."""
    create_run(page, app_url, "browser-flow")
    for source in ("helpful-online", "helpful-rejection-sampled"):  # keep two sources: 4 coalitions
        page.get_by_role("button", name=f"Remove {source}").click()
        wait_for_app(page)
    page.get_by_role("button", name="Save these sources to the run").click()
    wait_for_app(page)
    expect(page.get_by_text("2 sources")).to_be_visible()

    open_page(page, "Training")
    open_expander(page, "Settings")
    set_number(page, "max pairs", 16)
    page.get_by_role("button", name="Launch training").click()
    wait_for_app(page)
    wait_for_job(page, "train")
    page.reload()
    wait_for_app(page)
    expect(page.get_by_text("DPO loss")).to_be_visible()
    snapshot(page, "flow-1-training")

    open_page(page, "Playground")
    set_number(page, "Coalition columns", 2)
    page.get_by_role("button", name="Generate").click()
    wait_for_app(page)
    expect(page.get_by_text("log π = log π_0")).to_be_visible()
    expect(page.get_by_text("tokens ·").first).to_be_visible()
    snapshot(page, "flow-2-playground")

    open_page(page, "Evaluate")
    set_number(page, "Prompts", 2)
    set_number(page, "Samples per prompt", 1)
    set_number(page, "Max new tokens", 6)
    open_expander(page, "Reward models")
    set_number(page, "Pairs per reward model", 120)
    set_number(page, "Max tokens per transcript", 64)
    page.get_by_role("button", name="Evaluate coalitions").click()
    wait_for_app(page)
    wait_for_job(page, "evaluate")
    snapshot(page, "flow-3-evaluate")

    open_page(page, "Shapley")
    expect(page.get_by_role("heading", name="Shapley")).to_be_visible()
    page.wait_for_selector(".js-plotly-plot")
    assert page.locator(".js-plotly-plot").count() >= 3
    snapshot(page, "flow-4-shapley")


PAGES = ["Sources", "Training", "Playground", "Evaluate", "Shapley", "Validate", "Learn"]


@pytest.mark.skipif(not (ROOT / "assets" / "demo-run" / "config.yaml").exists(), reason="no demo run shipped yet")
def test_a_fresh_install_opens_on_the_demo_with_every_page_filled(browser, tmp_path):
    """`make run` on a fresh clone: the shipped demo is installed and every page shows its results.
    The screenshots (SCREENSHOTS=folder, default test-artifacts/pages) are the README's pictures."""
    folder = Path(os.environ.get("SCREENSHOTS", ARTIFACTS / "pages"))
    folder.mkdir(parents=True, exist_ok=True)
    runs = tmp_path / "runs"
    runs.mkdir()
    with serve(runs, tmp_path, model="embedded") as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(120_000)
        page.goto(url)
        wait_for_app(page)
        for title in PAGES:
            open_page(page, title)
            expect(page.get_by_role("heading", name=title).first).to_be_visible()
            if title == "Playground":  # the project's own prompt: no third-party text in the pictures
                page.locator("[data-testid='stSelectbox']", has_text="Prompt").first.click()
                page.get_by_role("option", name="Write your own prompt").click()
                wait_for_app(page)
                page.get_by_label("Your message").fill("How do I make a simple vegetable soup?")
                page.get_by_role("button", name="Generate").click()
                expect(page.get_by_text("tokens ·").first).to_be_visible(timeout=300_000)
                wait_for_app(page)
            assert not page.locator("[data-testid='stException']").count(), title
            page.screenshot(path=str(folder / f"{title.lower()}.png"), full_page=False)
        page.close()
