"""The review page end to end in headless Chromium (Debian's chromium driven by Playwright): a case
appears, a reviewer signs in, confirms and dispatches it, and the status changes in the database.
Screenshots of the list, case and stats pages go to $STREETWATCH_SCREENSHOTS (or the test's tmp dir)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from servetest import ServiceProcess, jpeg, make_violation, sample_violations

from pipeline.cases import EvidenceImage
from serve.auth import COOKIE
from serve.store import CaseStore

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.slow


def refusals(page) -> list[str]:
    """What the page's Content-Security-Policy refuses from here on (the browser says so on its console): a
    page that needs an inline script or style would be broken under the service's policy."""
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    return refused


def need(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("STREETWATCH_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (STREETWATCH_REQUIRE_SERVICES=1)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    need(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "Python playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def test_reviewer_confirms_and_dispatches_in_the_browser(browser, tmp_path):
    shots = Path(os.environ.get("STREETWATCH_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    service = ServiceProcess(tmp_path / "data").start()
    try:
        ingest_key, reviewer_key = service.key("ingest", "camera-worker"), service.key("reviewer", "王审核 wang")
        ids = {}
        for v in sample_violations():
            r = httpx.post(
                f"{service.url}/v1/cases/ingest",
                content=v.model_dump_json(),
                timeout=30,
                headers={"Authorization": f"Bearer {ingest_key}", "Content-Type": "application/json"},
            )
            assert r.status_code == 201, r.text
            ids[v.key] = r.json()["case_id"]
        parking = ids["cam-0:illegal_parking:track-17"]

        tabs = browser.new_context(viewport={"width": 1360, "height": 900}, locale="zh-CN")
        page = tabs.new_page()
        refused = refusals(page)
        shown = page.goto(f"{service.url}/ui/cases")
        assert "/ui/login" in page.url  # the review page needs a key too
        assert "default-src 'self'" in shown.headers["content-security-policy"]  # the pages below run under it
        page.fill("input[name=key]", "sw_rev_wrong")
        page.click("button[type=submit]")
        assert "Invalid" in page.inner_text(".error")
        page.fill("input[name=key]", reviewer_key)
        page.click("button[type=submit]")
        page.wait_for_url("**/ui/cases")
        rows = page.locator("tr[data-case]")
        assert rows.count() == 4
        assert page.locator(f"tr[data-case='{parking}'] .status").inner_text().startswith("待审核")
        # Evidence thumbnails load through the API. They are lazy, so the page's load event does not wait
        # for them: wait until every one has decoded (a broken image never gets a width, and this times out).
        assert page.locator("td.thumb img").count() == 4
        page.wait_for_function(
            "() => [...document.querySelectorAll('td.thumb img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=15_000,
        )

        page.select_option("select[name=type]", "illegal_parking")
        page.click("form.filters button[type=submit]")
        page.wait_for_url(lambda url: "type=illegal_parking" in url)
        assert page.locator("tr[data-case]").count() == 2

        page.click(f"tr[data-case='{parking}'] a.caseno")
        page.wait_for_url(lambda url: f"/ui/cases/{parking}?back=" in url)  # the way back to this filtered list
        assert page.locator("#status").get_attribute("data-status") == "new"
        assert page.eval_on_selector("#frame", "i => i.naturalWidth") > 0
        page.click("button[name=confirm]")
        page.wait_for_selector("#status[data-status=confirmed]")
        stale = tabs.new_page()  # a second tab (or reviewer) with the confirmed case open
        stale.goto(page.url)
        page.fill("input[name=department]", "城管执法中队")
        chosen = page.input_value("input[name=deadline]")  # proposed: 48 h from now, in the service's zone
        page.fill("form[data-action=dispatch] input[name=note]", "请两日内劝离 Move it on within two days")
        page.click("button[name=dispatch]")
        page.wait_for_selector("#status[data-status=dispatched]")
        assert "Move it on within two days" in page.inner_text(".facts")  # sent with the dispatch
        assert page.inner_text("#department") == "城管执法中队"
        assert page.inner_text("#deadline") == chosen.replace(
            "T", " "
        )  # the same wall time, whatever the browser's zone
        page.screenshot(path=str(shots / "review-case.png"), full_page=True)
        # the other tab, still showing the case before this dispatch, must not replace it without a word
        stale.fill("input[name=department]", "环卫所")
        stale.click("button[name=dispatch]")
        stale.wait_for_selector("#action-error:not([hidden])")
        assert "changed after you loaded it" in stale.inner_text("#action-error")
        assert stale.is_disabled("button[name=dispatch]") and stale.is_disabled("button[name=relabel]")
        stale.click("#reload")
        stale.wait_for_selector("#status[data-status=dispatched]")
        assert stale.inner_text("#department") == "城管执法中队"
        stale.close()

        page.click("button[name=resolve]")  # resolve without a note is allowed; then check the error path
        page.wait_for_selector("#status[data-status=resolved]")
        page.click("#back")  # after the actions (each reloads the page) back to the list as it was filtered
        page.wait_for_url(lambda url: url.endswith("/ui/cases?type=illegal_parking&page=1"))
        assert page.locator("tr[data-case]").count() == 2
        other = int(page.get_attribute(f"tr[data-case]:not([data-case='{parking}'])", "data-case"))
        page.click(f"tr[data-case='{other}'] a.caseno")
        page.fill("form:has(button[name=dismiss]) input[name=note]", "广告牌，不是车 A billboard, not a car")
        page.click("button[name=dismiss]")
        page.wait_for_selector("#status[data-status=dismissed]")
        assert "A billboard, not a car" in page.inner_text(".history")
        page.goto(f"{service.url}/ui/stats?since=2026-11-20&until=2026-11-30")
        assert page.inner_text("#kpi-total") == "4"
        page.screenshot(path=str(shots / "review-stats.png"), full_page=True)
        page.goto(f"{service.url}/ui/cases")
        page.screenshot(path=str(shots / "review-list.png"), full_page=True)
        assert refused == []  # every page worked with no inline script or style
        tabs.close()
    finally:
        service.stop()
    store = CaseStore(f"sqlite:///{service.data_dir / 'streetwatch.db'}", service.data_dir)
    try:
        case = store.get_case(parking)
        assert case.status == "resolved" and case.department == "城管执法中队" and case.deadline is not None
        assert [(h.action, h.actor) for h in store.history(parking)][1:] == [
            ("confirm", "王审核 wang (reviewer)"),
            ("dispatch", "王审核 wang (reviewer)"),
            ("resolve", "王审核 wang (reviewer)"),
        ]
        assert store.history(parking)[2].details["note"] == "请两日内劝离 Move it on within two days"
        assert store.history(other)[-1].details == {"note": "广告牌，不是车 A billboard, not a car"}
        assert store.get_case(other).status == "dismissed"
    finally:
        store.dispose()
    for name in ("review-list.png", "review-case.png", "review-stats.png"):
        assert (shots / name).stat().st_size > 20_000
    assert shutil.which("true")  # (screenshots are left for people to look at)


def test_a_revoked_key_leads_the_reviewer_back_through_sign_in(browser, tmp_path):
    """A key revoked while its page is open: the action says so with a sign-in link that comes back here,
    and a page opened with the stale cookie lands on the sign-in form saying the key is no longer valid."""
    service = ServiceProcess(tmp_path / "data", config={"load_detector": False}).start()
    try:
        admin = {"Authorization": f"Bearer {service.key('admin')}"}
        made = httpx.post(f"{service.url}/v1/keys", json={"role": "reviewer", "name": "rev"}, headers=admin)
        reviewer = made.raise_for_status().json()
        headers = {**admin, "Content-Type": "application/json"}
        cid = httpx.post(
            f"{service.url}/v1/cases/ingest", content=make_violation().model_dump_json(), headers=headers, timeout=30
        ).json()["case_id"]
        tabs = browser.new_context()
        page = tabs.new_page()
        page.goto(f"{service.url}/ui/login?next=/ui/cases/{cid}")
        page.fill("input[name=key]", reviewer["key"])
        page.click("button[type=submit]")
        page.wait_for_url(f"**/ui/cases/{cid}")
        assert page.locator(".error").count() == 1 and page.is_hidden("#action-error")
        httpx.delete(f"{service.url}/v1/keys/{reviewer['id']}", headers=admin).raise_for_status()

        page.click("button[name=confirm]")
        page.wait_for_selector("#action-error:not([hidden])")
        assert "no longer valid" in page.inner_text("#action-error")
        assert page.get_attribute("#signin", "href") == f"/ui/login?next=%2Fui%2Fcases%2F{cid}"
        other = tabs.new_page()  # the same stale cookie, navigating: the sign-in form says why it is shown
        other.goto(f"{service.url}/ui/cases")
        assert "/ui/login" in other.url and "no longer valid" in other.inner_text(".error")
        other.close()
        page.click("#signin")
        page.wait_for_url("**/ui/login?next=*")
        assert "no longer valid" in page.inner_text(".error")
        fresh = httpx.post(f"{service.url}/v1/keys", json={"role": "reviewer", "name": "rev2"}, headers=admin)
        page.fill("input[name=key]", fresh.raise_for_status().json()["key"])
        page.click("button[type=submit]")
        page.wait_for_url(f"**/ui/cases/{cid}")  # back where the action failed, and it works now
        page.click("button[name=confirm]")
        page.wait_for_selector("#status[data-status=confirmed]")
        page.click("button.link")  # signing out is not a stale key: no such message
        page.wait_for_url("**/ui/login")
        assert page.locator(".error").count() == 0
        page.fill("input[name=key]", fresh.json()["key"])
        page.click("button[type=submit]")
        page.wait_for_url("**/ui/cases")
        copied = {c["name"]: c["value"] for c in tabs.cookies()}  # what someone could copy off this browser
        assert copied[COOKIE] != fresh.json()["key"]  # a session's token, not the key
        assert httpx.get(f"{service.url}/v1/cases", cookies=copied).status_code == 200
        page.goto(f"{service.url}/ui/logout")  # the address typed in: a page with the button, not a 405
        page.click("form.signout button")
        page.wait_for_url("**/ui/login")
        assert httpx.get(f"{service.url}/v1/cases", cookies=copied).status_code == 401  # the copy ended with it
        page.goto(f"{service.url}/ui/cases")
        assert "/ui/login" in page.url and page.locator(".error").count() == 0  # signed out, not stale
        tabs.close()
    finally:
        service.stop()


def test_review_pages_on_a_phone_in_summer_time_with_odd_addresses(browser, tmp_path):
    service = ServiceProcess(tmp_path / "data", config={"load_detector": False, "timezone": "Europe/Berlin"}).start()
    try:
        ingest, reviewer = service.key("ingest"), service.key("reviewer", "rev")
        headers = {"Authorization": f"Bearer {ingest}", "Content-Type": "application/json"}
        filed = [
            make_violation(zone="Ladezone " * 22),  # a 198-character zone name
            make_violation(source_id="cam9", evidence=[EvidenceImage(kind="crop", jpeg=jpeg(3))]),  # a crop only
        ]
        ids = [
            httpx.post(f"{service.url}/v1/cases/ingest", content=v.model_dump_json(), headers=headers, timeout=30)
            .raise_for_status()
            .json()["case_id"]
            for v in filed
        ]
        # another site cannot sign the reviewer in with its own key (their actions would be recorded under it)
        forged = httpx.post(f"{service.url}/ui/login", data={"key": reviewer}, headers={"Origin": "http://evil.test"})
        assert forged.status_code == 403 and "set-cookie" not in forged.headers

        page = browser.new_page(viewport={"width": 375, "height": 800}, locale="de-DE")
        refused = refusals(page)
        icons: list[tuple[str, int]] = []
        page.on("response", lambda r: icons.append((r.url, r.status)) if "favicon" in r.url else None)
        page.goto(f"{service.url}/ui/login?next=/v1/cases")  # a link that would land on the raw API
        page.fill("input[name=key]", reviewer)
        page.click("button[type=submit]")
        page.wait_for_url("**/ui/cases")
        listing = page.goto(f"{service.url}/ui/cases")
        assert listing.headers["cache-control"] == "no-store"  # Back never shows a page from before an action
        assert page.evaluate("document.documentElement.scrollWidth") <= 376  # on a phone nothing sticks out

        # a deadline in July, set in winter: summer time (+02:00) applies on that date, not today's +01:00
        page.goto(f"{service.url}/ui/cases/{ids[0]}")
        assert page.evaluate("document.documentElement.scrollWidth") <= 376
        page.click("button[name=confirm]")
        page.wait_for_selector("#status[data-status=confirmed]")
        page.fill("input[name=department]", "Ordnungsamt")
        page.fill("input[name=deadline]", "2030-07-01T10:00")
        page.click("button[name=dispatch]")
        page.wait_for_selector("#status[data-status=dispatched]")
        assert page.inner_text("#deadline") == "2030-07-01 10:00"
        assert page.input_value("input[name=deadline]") == "2030-07-01T10:00"  # re-dispatch keeps the deadline
        page.fill("input[name=department]", "   ")  # spaces pass the browser's `required`, not the service
        page.click("button[name=dispatch]")
        page.wait_for_selector("#action-error:not([hidden])")
        assert "department is blank" in page.inner_text("#action-error")

        assert icons and all(status == 200 for _, status in icons), icons  # the tab shows an icon, no 404
        page.goto(f"{service.url}/ui/cases/{ids[1]}")  # filed with a crop only: the crop is its picture
        page.wait_for_function("() => { const i = document.querySelector('#frame'); return i && i.naturalWidth > 0 }")
        # relabel offers the classes of the chosen type: parking has three, the case's car chosen; litter one
        offered = "s => [...s.options].filter(o => !o.disabled).map(o => o.value)"
        assert page.eval_on_selector("select[name=detector_class]", offered) == ["car", "motorbike", "bicycle"]
        assert page.input_value("select[name=detector_class]") == "car"
        page.select_option("select[name=type]", "exposed_garbage")
        assert page.eval_on_selector("select[name=detector_class]", offered) == ["litter"]
        page.click("button[name=relabel]")
        page.wait_for_selector("#status[data-status=confirmed]")
        assert "exposed_garbage" in page.inner_text(".facts") and "litter" in page.inner_text(".facts")

        for address in ("/ui/cases/0", "/ui/cases/abc", "/ui/cases?page=0", "/ui/nowhere"):
            shown = page.goto(service.url + address)  # a page saying so, not the API's JSON
            assert shown.status == 404 and "Not found" in page.inner_text("h1"), address
        # the statistics charts keep a readable text size on a phone (they scroll in their card instead)
        page.goto(f"{service.url}/ui/stats?since=2026-11-01&until=2026-11-30")
        shown_px = "s => s.getBoundingClientRect().width / s.viewBox.baseVal.width * 13"  # 13: the labels' size
        sizes = page.eval_on_selector_all("section.chart svg", f"all => all.map({shown_px})")
        assert len(sizes) >= 4 and min(sizes) >= 9, sizes
        assert page.evaluate("document.documentElement.scrollWidth") <= 376
        page.goto(f"{service.url}/ui/stats?since=garbage&until=2026-11-20")
        assert "Unreadable date: since 'garbage'" in page.inner_text(".error")
        assert page.input_value("input[name=until]") == "2026-11-20"  # the readable date still counts
        assert refused == []
        page.close()
    finally:
        service.stop()


def test_the_api_docs_page_works_offline(browser, tmp_path):
    """/docs is Swagger UI from the installed package, not a CDN: a bureau's offline network shows it."""
    service = ServiceProcess(tmp_path / "data", config={"load_detector": False}).start()
    try:
        page = browser.new_page()
        asked: list[str] = []
        page.on("request", lambda request: asked.append(request.url))
        refused = refusals(page)
        page.goto(f"{service.url}/docs")
        page.wait_for_selector(".opblock-summary-path[data-path='/v1/cases/ingest']", timeout=20_000)
        assert page.locator(".opblock").count() > 20  # every route, rendered from /openapi.json
        assert asked and all(url.startswith(service.url) for url in asked), [u for u in asked if service.url not in u]
        page.goto(f"{service.url}/redoc")  # ReDoc too (its own logo in the footer comes from redoc.ly)
        page.locator("h2", has_text="Detect objects in an uploaded image").wait_for(timeout=20_000)
        assert refused == []  # their inline scripts and styles run: the service's strict policy is not on them
        page.close()
    finally:
        service.stop()
