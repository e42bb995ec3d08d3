"""The web pages in a real browser: Debian's headless Chromium driven by Playwright, against the real
stack (gateway + model server with an exported ranker + Redis with a real P1 publish + the Flink
stream job). A person's path: sign up, pick interests, see a cold-start list, search, page, open a
movie, rate and tag it, see the personal list change once the stream has the rating; sign out and
in, the demo mode. axe-core (vendored, tests/assets/axe.min.js) audits every page: no serious or
critical violation. Screenshots of each page go to a temp folder (and to $RECSYS_SCREENSHOTS when
set; docs/screenshots holds a few).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from pipeline.store import RedisStore
from serving.app import start_gateway
from tests.test_gateway import copy_version, gateway_config, spawn

pytestmark = [pytest.mark.spark, pytest.mark.tf, pytest.mark.redis, pytest.mark.flink, pytest.mark.browser]
CHROMIUM = "/usr/bin/chromium"
AXE = Path(__file__).parent / "assets" / "axe.min.js"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def stack(exported_model: Path, p1_batch: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from flink_jobs.control import start_stream

    tmp = tmp_path_factory.mktemp("web")
    base = tmp / "models" / "ranker"
    copy_version(exported_model / "1", base, 1)
    server = spawn(base)
    cfg = gateway_config(p1_batch, tmp).replace(
        "stream", checkpoint_dir=str(tmp / "checkpoints"), monitor_interval_ms=100, checkpoint_interval_ms=2000)
    cfg = cfg.replace("events", dead_letter_dir=str(tmp / "dead")).replace("web", login_attempts=3)
    running = start_gateway(cfg, cfg.redis.url, f"127.0.0.1:{server.port}")
    client = redis.Redis.from_url(cfg.redis.url)
    RedisStore(client, cfg.redis.key_prefix).clear_online()
    job = start_stream(cfg, restore=False)
    try:
        yield {"url": f"http://127.0.0.1:{running.http_port}", "job": job, "cfg": cfg, "running": running}
    finally:
        job.stop()
        running.stop()
        server.stop()
        RedisStore(client, cfg.redis.key_prefix).clear_online()
        client.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def snap(page: Any, shots: Path, name: str) -> None:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    extra = os.environ.get("RECSYS_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)


def audit(page: Any) -> None:
    """axe-core on the page as it is: no serious or critical violation (with the offending nodes named)."""
    page.add_script_tag(content=AXE.read_text(encoding="utf-8"))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    bad = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, "\n".join(f"{v['id']} ({v['impact']}): {v['help']} at "
                              f"{[n['target'] for n in v['nodes'][:3]]}" for v in bad)


def rec_ids(page: Any) -> list[str]:
    return page.eval_on_selector_all("#recs .card-link", "els => els.map(e => e.getAttribute('href'))")


def test_a_new_user_signs_up_searches_rates_and_sees_the_list_change(stack: dict, browser: Any, shots: Path) -> None:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    url = stack["url"]

    page.goto(url + "/")
    assert page.locator("h2", has_text="Top rated").count() >= 1 and page.locator("h2", has_text="Popular").count() >= 1
    assert page.locator(".card img").first.get_attribute("src").endswith(".svg")
    audit(page)
    snap(page, shots, "home")

    # keyboard: the first Tab reaches the skip link, Enter moves focus to the main content
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"

    page.goto(url + "/signup")
    audit(page)
    snap(page, shots, "signup")
    page.fill("#username", "ada_web")
    page.fill("#password", "correct horse battery")
    page.select_option("#age_bucket", "25")
    page.select_option("#gender", "F")
    page.click("button:has-text('Create account')")
    page.wait_for_url(url + "/interests")
    audit(page)
    snap(page, shots, "interests")
    page.check("label:has-text('Sci-Fi')")
    page.check("label:has-text('Comedy')")
    page.click("button:has-text('Save interests')")
    page.wait_for_url(url + "/me")
    assert page.locator("text=A starting list from your profile").count() == 1      # cold start
    cold = rec_ids(page)
    assert len(cold) >= 5
    audit(page)
    snap(page, shots, "me-cold-start")
    cookie = next(c for c in ctx.cookies() if c["name"] == "recsys_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    page.goto(url + "/search")
    page.select_option("#genre", "Drama")
    page.click("form.search button")
    page.wait_for_url("**/search?*genre=Drama*")
    status = page.locator("p[role=status]").inner_text()
    assert "found" in status and not status.startswith("0 ")
    audit(page)
    snap(page, shots, "search")
    if page.locator("a[rel=next]").count():
        page.click("a[rel=next]")
        assert "page 2 of" in page.locator("p[role=status]").inner_text()
    title = page.locator(".card-title").first.inner_text()
    word = max(title.split("(")[0].split(), key=len)
    page.goto(url + "/search?q=" + word)
    assert page.locator(".card-title", has_text=word).count() >= 1

    # open a recommended movie (from the cold-start list), rate it 5 stars and tag it
    target = cold[0]
    page.goto(url + target)
    assert page.locator("dt", has_text="Average rating").count() == 1
    assert page.locator("#predicted").count() == 1
    assert page.locator("h2", has_text="Similar movies").count() == 1
    audit(page)
    snap(page, shots, "movie")
    page.check("#star5")
    page.click("form.rate button")
    page.locator("#rated", has_text="Saved your rating of 5 stars").wait_for()
    page.fill("#tag", "Space opera")
    page.click("form.tag button")
    page.locator(".tags li", has_text="space opera").wait_for()

    # RecordRating -> spool -> Flink -> Redis: the personal page shows a new list within seconds
    stack["job"].wait_until_consumed(timeout=240, checkpoint=False)
    end = time.monotonic() + 60
    after = cold
    while time.monotonic() < end:
        page.goto(url + "/me")
        after = rec_ids(page)
        if target not in after:
            break
        time.sleep(1)
    assert target not in after and after != cold, "the personal list did not change after the rating"
    assert page.locator("text=A starting list from your profile").count() == 0
    assert page.locator(".history tbody tr").count() == 1
    assert page.locator(".tags li", has_text="Sci-Fi").count() >= 1 and page.locator("a", has_text="space opera").count()
    audit(page)
    snap(page, shots, "me")

    # sign out; a wrong password is refused, the right one signs in again
    page.click("button:has-text('Sign out')")
    page.goto(url + "/signin")
    audit(page)
    snap(page, shots, "signin")
    page.fill("#username", "ada_web")
    page.fill("#password", "wrong password!")
    page.click("main button:has-text('Sign in')")
    assert page.locator("[role=alert]", has_text="wrong username or password").count() == 1
    page.fill("#password", "correct horse battery")
    page.click("main button:has-text('Sign in')")
    page.wait_for_url(url + "/me")
    ctx.close()


def test_demo_mode_signs_in_as_a_dataset_user(stack: dict, browser: Any, shots: Path) -> None:
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)   # a phone
    page = ctx.new_page()
    page.goto(stack["url"] + "/")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")  # no sideways scroll
    snap(page, shots, "home-phone")
    page.click("main button:has-text('try the demo')")
    page.wait_for_url(stack["url"] + "/me")
    assert page.locator(".history tbody tr").count() >= 1          # a dataset user's rating history
    assert len(rec_ids(page)) >= 5 and page.locator("#recs .reason").count() >= 5
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    audit(page)
    snap(page, shots, "me-demo-phone")
    ctx.close()


def test_forms_need_the_csrf_token_and_sign_in_is_rate_limited(stack: dict, browser: Any) -> None:
    ctx = browser.new_context()
    page = ctx.new_page()
    url = stack["url"]
    page.goto(url + "/signin")
    # a cross-site style POST without the token is refused
    resp = page.request.post(url + "/signup", form={"username": "mallory", "password": "12345678901"})
    assert resp.status == 403
    for _ in range(3):
        page.fill("#username", "nobody_here")
        page.fill("#password", "bad password")
        page.click("main button:has-text('Sign in')")
    page.fill("#username", "nobody_here")
    page.fill("#password", "bad password")
    page.click("main button:has-text('Sign in')")
    assert page.locator("[role=alert]", has_text="too many failed sign-ins").count() == 1
    # a page error is a page, naming the problem
    page.goto(url + "/search?year=abc")
    assert "year" in page.locator("[role=alert]").inner_text()
    ctx.close()
