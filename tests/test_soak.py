"""Soak: five browser sessions on the shipped demo run for a few minutes, switching pages, two of them
streaming in the Playground at once. Deselected by default (pytest.ini); `make soak` runs it, and so
does CI. The figures it prints are in bench/README.md."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from browser import (CHROMIUM_FLAGS, PAGES, browser_or_skip, expect_the_real_app, open_expander, serve, set_number,
                     wait_for_app)

pytestmark = [pytest.mark.soak, pytest.mark.slow]

SESSIONS = 5
MINUTES = 3  # rounds stop starting after this
MAX_ROUNDS = 60  # and after this many
STREAM_EVERY = 4  # rounds between two sessions streaming in the Playground at once
RSS_FACTOR = 1.3  # the server's RSS at the end, at most this times its RSS after the first round
FINISHED = re.compile(r"tokens · [\d.]+ s · (end of text|token limit)")
COLUMNS, MAX_TOKENS = 1, 24  # the base model and one coalition, short answers: a stream takes seconds


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def go(page, title: str) -> None:
    """Click the page's link; the run is awaited by `check`, so several sessions can run at once."""
    page.get_by_role("link", name=title).first.click()


def check(page, title: str, errors: list[str]) -> None:
    """The page rendered: its heading, app.py's navigation, no exception."""
    try:
        expect_the_real_app(page, title)
    except AssertionError as error:
        errors.append(f"{title}: {error}")


def prepare_stream(page) -> None:
    """On the Playground: the default prompt and seed, COLUMNS coalition columns, MAX_TOKENS tokens."""
    set_number(page, "Coalition columns", COLUMNS)
    if not page.get_by_label("Max tokens", exact=True).is_visible():
        open_expander(page, "Sampling settings")
    set_number(page, "Max tokens", MAX_TOKENS)


def generate(page) -> None:
    page.get_by_role("button", name="Generate").click()


def stream_texts(page) -> list[str]:
    """Every column's text once all of them have finished. The previous generation's outputs stay on the
    page (stale) until this one replaces them, so count only captions outside stale elements."""
    stop = page.locator("[data-testid='stMain']").get_by_role("button", name="Stop", exact=True)
    expect(stop).to_be_enabled(timeout=120_000)  # enabled only by a run that Generate started
    deadline = time.time() + 300
    while page.evaluate("""pattern => [...document.querySelectorAll("[data-testid='stCaptionContainer']")]
            .filter(c => new RegExp(pattern).test(c.innerText) && !c.closest("[data-stale='true']")).length""",
                        FINISHED.pattern) < COLUMNS + 1:
        assert time.time() < deadline, "the Playground stream did not finish within 300 s"
        page.wait_for_timeout(500)
    wait_for_app(page)
    return page.locator("[data-testid='stMain'] [data-testid='stText']").all_inner_texts()


def test_five_sessions_for_a_few_minutes(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    errors: list[str] = []
    views = 0
    with serve(runs, tmp_path, model="embedded") as (url, server), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_or_skip(), headless=True, args=CHROMIUM_FLAGS)
        pages = [browser.new_context(viewport={"width": 1400, "height": 1000}).new_page() for _ in range(SESSIONS)]
        for page in pages:
            page.set_default_timeout(120_000)
            page.goto(url)
        for page in pages:
            check(page, "Sources", errors)
        start = time.time()

        # First round: every session opens every page at once; then one stream alone, the reference.
        for title in PAGES:
            for page in pages:
                go(page, title)
            for page in pages:
                check(page, title, errors)
                views += 1
        go(pages[0], "Playground")
        check(pages[0], "Playground", errors)
        prepare_stream(pages[0])
        generate(pages[0])
        alone = stream_texts(pages[0])
        rss_first = rss_mb(server.pid)

        rounds = streams = 1
        while rounds < MAX_ROUNDS and time.time() - start < MINUTES * 60:
            streaming = rounds % STREAM_EVERY == 0
            titles = [PAGES[(rounds + k) % len(PAGES)] for k in range(SESSIONS)]
            if streaming:
                titles[:2] = ["Playground", "Playground"]
            for page, title in zip(pages, titles):
                go(page, title)
            for page, title in zip(pages, titles):
                check(page, title, errors)
                views += 1
            if streaming:  # two sessions at once, same seed: each must give the text it gives alone
                for page in pages[:2]:
                    prepare_stream(page)
                for page in pages[:2]:
                    generate(page)
                for k, page in enumerate(pages[:2]):
                    texts = stream_texts(page)
                    if texts != alone:
                        errors.append(f"stream of session {k} in round {rounds}: {texts} != {alone}")
                streams += 2
            rounds += 1
        minutes = (time.time() - start) / 60
        rss_end = rss_mb(server.pid)
        browser.close()
    log = (tmp_path / "streamlit.log").read_text()
    errors += [line for line in log.splitlines() if "Traceback" in line or "Inotify" in line]
    print(f"\nsoak: {SESSIONS} sessions, {minutes:.1f} min, {rounds} rounds, {views} page views, {streams} Playground "
          f"streams ({streams - 1} two at once), {len(errors)} errors, server RSS {rss_first:.0f} MB after the first "
          f"round, {rss_end:.0f} MB at the end ({rss_end / rss_first:.2f}x)")
    assert not errors, errors
    assert rss_end <= RSS_FACTOR * rss_first
