"""The iframe page and the operators' dashboard as a person sees them in a real browser (headless Chromium, Playwright)."""

# `source scripts/browser.sh` installs both (Debian's chromium with apt-get, Playwright from requirements-browser.txt).
# Every test saves a screenshot under test-artifacts/screenshots/.

from __future__ import annotations

import html
import http.server
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import psycopg
import pytest
import requests

from multibackend.services.lookup_cache import INVALIDATION_CHANNEL
from tests.helpers import ROOT, WEBHOOK, LiveServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
WAIT_SECONDS = 3
SECRET = "browser-secret-Qp71"
IFRAME_SIZE = {"width": 320, "height": 560}
CHATWOOT_SIZE = {"width": 960, "height": 600}
LOOKUP_PATH = "/api/chatwoot/webhooks/company/"
DASHBOARD_PATH = "/api/chatwoot/webhooks/dashboard"


# ---- a stand-in for Chatwoot: a page that embeds the Dashboard App and answers fetch-info like Chatwoot does ----

PARENT_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Chatwoot (test double)</title>
<style>
body {{ margin: 0; display: flex; font: 14px sans-serif; background: #f4f6fb; }}
main {{ flex: 1; padding: 16px; }}
iframe {{ width: 320px; height: 560px; border: 0; border-left: 1px solid #d0d7e2; background: #fff; }}
</style>
</head>
<body>
<main><h1>Conversation #7</h1><p>Ana: Hola, necesito ayuda con mi pedido.</p></main>
<iframe id="dashboard-app" title="Dashboard app" src="{embed_url}"></iframe>
<script>
const accountId = {account_id};
const appContext = {{
  event: "appContext",
  data: {{
    conversation: {{ id: 7, account_id: accountId, inbox_id: 1, status: "open" }},
    contact: {{ id: 3, name: "Ana" }},
    currentAgent: {{ id: 1, name: "Agent Smith", email: "agent@example.com" }},
  }},
}};
// Other apps and extensions post messages too: the Dashboard App must ignore these before the real one.
const noise = ["not json", JSON.stringify({{ event: "other" }}), {{ event: "appContext" }},
  JSON.stringify({{ event: "appContext", data: {{}} }})];
window.addEventListener("message", (event) => {{
  if (event.data !== "chatwoot-dashboard-app:fetch-info" || accountId === null) {{
    return;
  }}
  for (const message of noise) {{
    event.source.postMessage(message, "*");
  }}
  event.source.postMessage(JSON.stringify(appContext), "*");
}});
</script>
</body>
</html>
"""


class ParentPages:
    """A local HTTP server whose page frames `?embed=<url>` and answers fetch-info for `?account=<id>` (if any)."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, embed_url: str, account_id: int | None) -> str:
        query = {"embed": embed_url} | ({"account": str(account_id)} if account_id is not None else {})
        return f"{self.origin}/?{urlencode(query)}"

    @staticmethod
    def _handler() -> type[http.server.BaseHTTPRequestHandler]:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                account = query.get("account", [None])[0]
                body = PARENT_PAGE.format(
                    embed_url=html.escape(query["embed"][0]),
                    account_id=json.dumps(int(account)) if account else "null",
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- fixtures --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chatwoot() -> Iterator[ParentPages]:
    """The Chatwoot the backend trusts (CHATWOOT_URL): its origin may frame the iframe page."""
    pages = ParentPages()
    yield pages
    pages.stop()


@pytest.fixture(scope="module")
def stranger() -> Iterator[ParentPages]:
    """Another origin, which the page's CSP frame-ancestors must refuse."""
    pages = ParentPages()
    yield pages
    pages.stop()


@pytest.fixture(scope="module")
def server(
    database_url: str, redis_url: str, chatwoot: ParentPages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "EMBED_WAIT_SECONDS": str(WAIT_SECONDS),
        "CHATWOOT_URL": chatwoot.origin,
        "CHATWOOT_WEBHOOK_SECRET": SECRET,
        "CHATWOOT_EMBED_SECRET": "",
        "CHATWOOT_DATABASE_URL": "",
        "CHATWOOT_API_URL": "",
        "WEB_CONCURRENCY": "2",
    }
    live = LiveServer(env, tmp_path_factory.mktemp("browser") / "gunicorn.log")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium under Playwright; a clear failure (never a skip) when either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: run `source scripts/browser.sh` (installs requirements-browser.txt)")
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: run `source scripts/browser.sh` (installs Debian's chromium)")
    playwright = sync_playwright().start()
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()
    playwright.stop()


@pytest.fixture(autouse=True)
def empty_stores(clean_database: str, redis_client: Any) -> None:
    """No companies, sync events or cached lookups left by an earlier test."""


@pytest.fixture
def open_tab(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Opens tabs, each in a context of its own (Spanish, as wide as Chatwoot's iframe unless told otherwise).
    The test fails on any script error or CSP report, except in tabs opened with csp_refusal_expected."""
    contexts: list[BrowserContext] = []
    problems: list[str] = []

    def report_csp(message: Any) -> None:
        if "Content Security Policy" in message.text:
            problems.append(message.text)

    def open_one(
        locale: str = "es-ES", viewport: dict[str, int] = IFRAME_SIZE, csp_refusal_expected: bool = False
    ) -> Page:
        context = browser.new_context(locale=locale, viewport=viewport)
        contexts.append(context)
        tab = context.new_page()
        tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
        if not csp_refusal_expected:
            tab.on("console", report_csp)
        return tab

    yield open_one
    for context in contexts:
        context.close()
    assert problems == []


@pytest.fixture
def page(open_tab: Callable[..., Page]) -> Page:
    return open_tab()


# ---- helpers ---------------------------------------------------------------------------------------------------


def create_company(server: LiveServer, account_id: int, name: str) -> None:
    """What Chatwoot does on signup: the installation webhook."""
    body = {"id": account_id, "name": name, "event": "account_created", "users": []}
    response = requests.post(f"{server.url}{WEBHOOK}?token={SECRET}", json=body, timeout=10)
    assert response.status_code == 200, response.text


def embed_url(server: LiveServer, **params: Any) -> str:
    return f"{server.url}/?{urlencode(params)}" if params else f"{server.url}/"


def screenshot(tab: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def requests_to(tab: Page, fragment: str) -> list[tuple[float, str]]:
    """Filled with (time, url) of every request the tab makes from now on to a URL containing `fragment`."""
    seen: list[tuple[float, str]] = []

    def record(request: Any) -> None:
        if fragment in request.url:
            seen.append((time.monotonic(), request.url))

    tab.on("request", record)
    return seen


def fits_width(tab: Page) -> bool:
    return tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def expect(target: Any) -> Any:
    # imported here, not at the top, so that a missing Playwright fails the tests (see `browser`) instead of
    # stopping the collection of the whole suite
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def expect_company(view: Any, account_id: int, name: str, state: str = "Listo") -> None:
    expect(view.locator("#company-name")).to_have_text(name, timeout=10_000)
    expect(view.locator("#company-id")).to_have_text(f"chatwoot_{account_id}")
    expect(view.locator("#provisioning-status")).to_have_text(state)
    expect(view.locator("#redis-prefix")).to_have_text(f"chatwoot_{account_id}:")
    expect(view.locator("#vector-index")).to_have_text(f"chatwoot_{account_id}_documents")
    expect(view.locator("#spinner")).to_be_hidden()


# ---- the iframe page -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/api/chatwoot/webhooks/embed"], ids=["standalone", "host-owns-root"])
def test_existing_company_is_shown_at_320_px(server, page, path):
    create_company(server, 4201, "Acme Corp")
    page.goto(f"{server.url}{path}?accountId=4201")
    expect_company(page, 4201, "Acme Corp")
    expect(page.locator("#chatwoot-account-id")).to_have_text("4201")
    expect(page.locator("#chatwoot-status")).to_be_hidden()
    assert page.evaluate("document.documentElement.lang") == "es"
    assert fits_width(page)
    if path == "/":
        screenshot(page, "company-ready")


def test_waits_for_the_webhook_then_shows_the_company_without_reloading(server, page):
    page.goto(embed_url(server, accountId=4202))
    expect(page.locator("#status")).to_have_text("Configurando...")
    expect(page.locator("#status")).to_have_attribute("role", "status")
    expect(page.locator("#spinner")).to_be_visible()
    assert page.eval_on_selector("#spinner", "node => getComputedStyle(node).animationName") == "spin"
    page.evaluate("window.sameDocument = true")
    screenshot(page, "waiting")

    create_company(server, 4202, "Beta Servicios SL")

    expect_company(page, 4202, "Beta Servicios SL")
    assert page.evaluate("window.sameDocument") is True
    assert fits_width(page)
    screenshot(page, "waiting-then-company")


def test_stops_after_the_wait_and_retry_starts_again(server, page):
    lookups = requests_to(page, LOOKUP_PATH)
    started = time.monotonic()
    page.goto(embed_url(server, accountId=4203))
    retry = page.locator("#retry")
    expect(retry).to_be_visible(timeout=(WAIT_SECONDS + 7) * 1000)
    assert time.monotonic() - started >= WAIT_SECONDS - 0.2
    expect(page.locator("#status")).to_have_text("La configuración está tardando más de lo normal.")
    expect(retry).to_have_text("Reintentar")
    assert retry.evaluate("node => node.tagName") == "BUTTON"
    expect(page.locator("#spinner")).to_be_hidden()
    gaps = [later - earlier for (earlier, _), (later, _) in zip(lookups, lookups[1:])]
    # 1 s, 1.5 s, ... apart; the last gap is shorter: that lookup happens when the wait period ends
    assert 2 <= len(lookups) <= 6 and all(gap >= 0.8 for gap in gaps[:-1]), gaps
    screenshot(page, "timeout-retry")

    polled = len(lookups)
    page.wait_for_timeout(2000)
    assert len(lookups) == polled, "polling goes on after the wait period"

    create_company(server, 4203, "Gamma Retry SA")
    retry.click()
    expect_company(page, 4203, "Gamma Retry SA")
    screenshot(page, "retry-then-company")


def test_account_id_from_chatwoot_app_context(server, chatwoot, open_tab):
    create_company(server, 4204, "Delta desde Chatwoot")
    tab = open_tab(viewport=CHATWOOT_SIZE)
    tab.goto(chatwoot.url(embed_url(server), 4204))
    expect_company(tab.frame_locator("#dashboard-app"), 4204, "Delta desde Chatwoot")
    screenshot(tab, "app-context-in-chatwoot")


def test_a_foreign_site_cannot_frame_the_page(server, chatwoot, stranger, open_tab):
    create_company(server, 4205, "Epsilon Private")
    tab = open_tab(viewport=CHATWOOT_SIZE, csp_refusal_expected=True)
    with tab.expect_console_message(lambda message: "frame-ancestors" in message.text) as refusal:
        tab.goto(stranger.url(embed_url(server), 4205))
    assert f"frame-ancestors 'self' {chatwoot.origin}" in refusal.value.text
    frame = tab.frames[1]
    assert frame.url.startswith("chrome-error://"), frame.url
    assert frame.locator("#company-name").count() == 0
    screenshot(tab, "foreign-parent-refused")


def insert_company(database_url: str, account_id: int, name: str, provisioning: str, chatwoot_status: str) -> None:
    with psycopg.connect(database_url) as connection:
        connection.execute(
            "INSERT INTO companies (company_id, company_name, chatwoot_account_id, redis_prefix, vectorstore_index,"
            " provisioning_status, chatwoot_status) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (f"chatwoot_{account_id}", name, str(account_id), f"chatwoot_{account_id}:",
             f"chatwoot_{account_id}_documents", provisioning, chatwoot_status),
        )


def test_pending_company_of_a_suspended_account_updates_itself(server, page, database_url, redis_client):
    insert_company(database_url, 4208, "Eta Suspendida", "pending", "suspended")
    page.goto(embed_url(server, accountId=4208))
    expect_company(page, 4208, "Eta Suspendida", state="Pendiente")
    expect(page.locator("#provisioning-note")).to_be_visible()
    expect(page.locator("#chatwoot-status")).to_have_text("La cuenta de Chatwoot está suspendida.")
    screenshot(page, "company-pending-suspended")

    with psycopg.connect(database_url) as connection:
        connection.execute("UPDATE companies SET provisioning_status = 'ready' WHERE chatwoot_account_id = '4208'")
    # what company_write() does after every commit; this direct UPDATE bypasses it, so the test says it itself
    redis_client.publish(INVALIDATION_CHANNEL, "4208")

    expect(page.locator("#provisioning-status")).to_have_text("Listo", timeout=10_000)
    expect(page.locator("#provisioning-note")).to_be_hidden()


def test_no_account_id_and_no_app_context_is_a_clear_error(server, chatwoot, open_tab):
    tab = open_tab(viewport=CHATWOOT_SIZE)
    tab.goto(chatwoot.url(embed_url(server), None))
    app = tab.frame_locator("#dashboard-app")
    expect(app.locator("#status")).to_have_text("Conectando con Chatwoot...")
    expect(app.locator("#status")).to_have_text("No se pudo identificar la cuenta de Chatwoot.", timeout=8000)
    expect(app.locator("#spinner")).to_be_hidden()
    expect(app.locator("#retry")).to_be_hidden()
    screenshot(tab, "missing-account")


def test_invalid_account_id_is_a_clear_error(server, page):
    page.goto(embed_url(server, accountId="abc"))
    expect(page.locator("#status")).to_have_text("El número de cuenta de Chatwoot no es válido.")
    expect(page.locator("#spinner")).to_be_hidden()
    screenshot(page, "invalid-account")


def test_honors_retry_after_and_forwards_sig_on_signed_pages(server, page):
    """With signed lookups on, the page passes ?sig= through; a 429's Retry-After holds the next lookup back."""
    create_company(server, 4206, "Zeta Signed")
    lookups: list[tuple[float, str]] = []

    def signed_page(route: Any) -> None:
        response = route.fetch()
        route.fulfill(response=response, body=response.text().replace('data-signed="false"', 'data-signed="true"'))

    def rate_limit_first_lookup(route: Any) -> None:
        lookups.append((time.monotonic(), route.request.url))
        if len(lookups) == 1:
            route.fulfill(status=429, headers={"Retry-After": "2"}, json={"success": False, "code": "rate_limited"})
        else:
            route.continue_()

    page.route(lambda url: urlsplit(url).path == "/", signed_page)
    page.route(lambda url: LOOKUP_PATH in url, rate_limit_first_lookup)
    page.goto(embed_url(server, accountId=4206, sig="c0ffee42"))
    expect_company(page, 4206, "Zeta Signed")
    assert [urlsplit(url).query for _, url in lookups] == ["sig=c0ffee42", "sig=c0ffee42"]
    assert lookups[1][0] - lookups[0][0] >= 1.9


@pytest.mark.parametrize(
    ("locale", "params", "status", "language"),
    [
        ("es-ES", {}, "Configurando...", "es"),
        ("es-ES", {"lang": "en"}, "Setting up...", "en"),
        ("en-US", {}, "Setting up...", "en"),
        ("en-US", {"lang": "es"}, "Configurando...", "es"),
    ],
    ids=["spanish-default", "lang-en", "english-browser", "lang-es-wins"],
)
def test_language(server, open_tab, locale, params, status, language):
    tab = open_tab(locale=locale)
    tab.goto(embed_url(server, accountId=4207, **params))
    expect(tab.locator("#status")).to_have_text(status)
    assert tab.evaluate("document.documentElement.lang") == language
    if params == {"lang": "en"}:
        screenshot(tab, "waiting-en")


# ---- the operators' dashboard ----------------------------------------------------------------------------------


def seed_earlier_hours(database_url: str) -> None:
    """Two deliveries in each of the five hours before this one (one failed), so the charts have a series over
    several hours and the average and max latency differ."""
    with psycopg.connect(database_url) as connection:
        connection.execute(
            """
            INSERT INTO chatwoot_sync_events (chatwoot_account_id, company_id, outcome, created, latency_ms, error,
                                              created_at)
            SELECT (5000 + 10 * hour + n)::text,
                   CASE WHEN failed THEN NULL ELSE 'chatwoot_' || (5000 + 10 * hour + n) END,
                   CASE WHEN failed THEN 'failed' ELSE 'success' END, true, 6 * hour + 20 * n,
                   CASE WHEN failed THEN 'OperationalError: database unreachable' END,
                   date_trunc('hour', now()) - make_interval(hours => hour) + make_interval(mins => 10 + 20 * n)
            FROM generate_series(1, 5) AS hour, generate_series(0, 1) AS n,
                 LATERAL (SELECT hour = 3 AND n = 1) AS f(failed)
            """
        )


def test_operator_dashboard_shows_cards_chart_and_deliveries(server, page, database_url):
    for account_id, name in [(4301, "Uno SA"), (4302, "Dos SL"), (4303, "Tres SC"), (4301, "Uno SA")]:
        create_company(server, account_id, name)
    requests.post(f"{server.url}{WEBHOOK}?token={SECRET}", data="not json", timeout=10)
    seed_earlier_hours(database_url)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.clock.install()  # lets the test jump over the 10 s auto-refresh instead of waiting for it
    data_requests = requests_to(page, "/dashboard/data")

    page.goto(f"{server.url}{DASHBOARD_PATH}?token={SECRET}")

    expect(page.locator("#card-total-syncs .card-value")).to_have_text("14")
    expect(page.locator("#card-failed .card-value")).to_have_text("1")
    expect(page.locator("#card-rejected .card-value")).to_have_text("1")
    expect(page.locator("#card-success-rate .card-value")).to_have_text("92.9 %")
    expect(page.locator("#card-avg-latency .card-value")).to_contain_text("ms")
    expect(page.locator("#card-last-sync .card-value")).not_to_have_text("—")
    chart = page.locator("#latency-chart svg")
    expect(chart).to_be_visible()
    assert chart.locator("circle.point").count() == 2 * 6  # average and max for each of the six hours
    assert chart.locator("path.line").count() >= 2
    assert chart.locator("text.axis-label").all_text_contents() == ["Hour (local time)", "Latency (ms)"]
    assert page.locator("#volume-chart svg g.bar").count() == 6
    assert page.locator("#volume-chart svg rect.bar-failed[height='0']").count() == 5
    expect(page.locator("#recent-errors li")).to_have_count(1)
    expect(page.locator("#recent-errors")).to_contain_text("OperationalError: database unreachable")
    expect(page.locator("#companies-provisioning [data-state=ready] dd")).to_have_text("3")
    expect(page.locator("#companies-chatwoot [data-state=active] dd")).to_have_text("3")
    expect(page.locator("#deliveries tbody tr")).to_have_count(14)
    assert data_requests and all(f"token={SECRET}" in url for _, url in data_requests)
    screenshot(page, "operator-dashboard")

    create_company(server, 4304, "Cuatro SA")
    page.clock.fast_forward(10_000)
    expect(page.locator("#card-total-syncs .card-value")).to_have_text("15")
    expect(page.locator("#deliveries tbody tr")).to_have_count(15)


def test_operator_dashboard_empty_state(server, page):
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{server.url}{DASHBOARD_PATH}?token={SECRET}")
    expect(page.locator("#card-total-syncs .card-value")).to_have_text("0")
    expect(page.locator("#card-success-rate .card-value")).to_have_text("—")
    expect(page.locator("#latency-chart")).to_have_text("No deliveries in the last 24 hours yet.")
    expect(page.locator("#recent-errors")).to_have_text("No errors recorded.")
    expect(page.locator("#load-error")).to_be_hidden()
    screenshot(page, "operator-dashboard-empty")


# ---- the company tab that the backend puts in every Chatwoot account --------------------------------------------


def test_the_automatic_tab_opens_the_company_with_signed_lookups(
    database_url, redis_url, chatwoot, chatwoot_db, open_tab, tmp_path
):
    chatwoot_db.add_accounts([(4301, "Acme Corp")])
    chatwoot_db.add_administrators([(4301, 7)])
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CHATWOOT_URL": chatwoot.origin,
        "CHATWOOT_WEBHOOK_SECRET": SECRET,
        "CHATWOOT_EMBED_SECRET": "tab-embed-secret",
        "CHATWOOT_DATABASE_URL": chatwoot_db.role_url(),
        "PUBLIC_URL": "{server_url}",
        "CHATWOOT_API_URL": "",
        "WEB_CONCURRENCY": "1",
    }
    tab_server = LiveServer(env, tmp_path / "gunicorn.log")
    try:
        create_company(tab_server, 4301, "Acme Corp")
        deadline = time.monotonic() + 10
        while not (rows := chatwoot_db.dashboard_apps(4301)) and time.monotonic() < deadline:
            time.sleep(0.1)
        [(_, _, title, content, _, _)] = rows
        url = content[0]["url"]
        assert title == "Empresa" and url.startswith(f"{tab_server.url}/api/chatwoot/webhooks/embed?accountId=4301&sig=")
        tab = open_tab(viewport=CHATWOOT_SIZE)
        tab.goto(chatwoot.url(url, 4301))  # framed by "Chatwoot", exactly as the row says
        expect_company(tab.frame_locator("#dashboard-app"), 4301, "Acme Corp")
        screenshot(tab, "automatic-tab-in-chatwoot")
        unsigned = requests.get(f"{tab_server.url}{LOOKUP_PATH}4301", timeout=5)
        assert (unsigned.status_code, unsigned.json()["code"]) == (403, "invalid_signature")
    finally:
        tab_server.stop()
