"""The operator's dashboard at /admin, in a real browser: headless Chromium from Debian.

Playwright drives the system's `/usr/bin/chromium` (`make test-tools` installs it from
Debian; no browser is ever downloaded). A real node and mint serve the page; a funded key
makes real paid requests first, so every figure the page shows is checked against the
charges those requests made and against the admin API the page reads.

Screenshots of each step go to tests/artifacts/dashboard/ (dashboard-postgres/ on a Postgres
run, which `make test` runs alongside; kept out of git). Marked
`browser`: `pytest -m "not browser"` leaves it out locally; `make test` runs it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import databases
import httpx
import pytest
import pytest_asyncio
from conftest import ADMIN_PASSWORD, RunningNode, admin_client
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    Request,
    async_playwright,
    expect,
)
from satsrouter_dev.mint import TestWallet

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
# Both halves of `make test` run at once: each writes its own screenshots.
_RUN = "-postgres" if databases.ON_POSTGRES else ""
ARTIFACTS = Path(__file__).parent / "artifacts" / f"dashboard{_RUN}"
WAIT_MS = 15_000
PAID_REQUESTS = 3
# Long enough that the requests earn whole sats (10.5 msat per prompt token on test/priced).
PROMPT = " ".join(f"word{i}" for i in range(300))


def sat_text(msat: int) -> str:
    """An amount as the dashboard writes it: exact sats, trailing zeros dropped."""
    whole, frac = divmod(msat, 1000)
    decimals = f"{frac:03d}".rstrip("0")
    return f"{whole:,}" + (f".{decimals}" if decimals else "") + " sat"


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium; screenshots' folder made."""
    assert CHROMIUM.exists(), "no /usr/bin/chromium: `make test-tools` installs it from Debian"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return CHROMIUM


@pytest_asyncio.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, driven over Playwright's protocol."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium), headless=True)
        try:
            yield launched
        finally:
            await launched.close()


class Pages:
    """A page that keeps the console's errors and writes numbered screenshots."""

    def __init__(self, page: Page, name: str) -> None:
        self.page = page
        self.name = name
        self.count = 0
        self.errors: list[str] = []
        page.set_default_timeout(WAIT_MS)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        # Chromium logs every 4xx answer as "Failed to load resource"; those are the API
        # saying no, which the page shows. Script errors and CSP refusals are failures.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    async def shot(self, step: str) -> None:
        self.count += 1
        path = ARTIFACTS / f"{self.name}-{self.count:02d}-{step}.png"
        await self.page.screenshot(path=path, full_page=True)


async def paid_requests(node: RunningNode, key: str) -> list[int]:
    """Chat completions paid by `key`; the msat each was charged."""
    costs = []
    async with httpx.AsyncClient(base_url=node.api, timeout=30) as http:
        for i in range(PAID_REQUESTS):
            resp = await http.post(
                "/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={
                    "model": "test/priced",
                    "messages": [{"role": "user", "content": f"{PROMPT} {i}"}],
                    "max_tokens": 16,
                },
            )
            assert resp.status_code == 200, resp.text
            costs.append(int(resp.headers["X-Routstr-Cost-Msats"]))
    return costs


async def funded_key(node: RunningNode, user_wallet: TestWallet, sats: int) -> str:
    (token,) = await user_wallet.mint_tokens(sats)
    async with httpx.AsyncClient(base_url=node.url) as http:
        resp = await http.post("/v1/balance/create", json={"initial_balance_token": token})
        assert resp.status_code == 200, resp.text
        key: str = resp.json()["api_key"]
    return key


async def get(http: httpx.AsyncClient, path: str) -> Any:
    resp = await http.get(path)
    assert resp.status_code == 200, (path, resp.status_code, resp.text)
    return resp.json()


async def open_dashboard(browser: Browser, node: RunningNode, name: str) -> Pages:
    """A new browser (its own cookies) on the dashboard, logged in through the form."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    tab = Pages(await context.new_page(), name)
    await tab.page.goto(f"{node.url}/admin")
    await tab.page.fill("#password", ADMIN_PASSWORD)
    await tab.page.click("#login-form button[type=submit]")
    await expect(tab.page.locator("#view-overview")).to_be_visible()
    return tab


async def test_login_overview_figures_models_providers_and_logout(
    node: RunningNode, user_wallet: TestWallet, browser: Browser
) -> None:
    key = await funded_key(node, user_wallet, 100)
    costs = await paid_requests(node, key)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    tab = Pages(await context.new_page(), "overview")
    page = tab.page
    admin = await admin_client(node)
    try:
        # Login: a wrong password is refused on the form, the right one opens the overview.
        await page.goto(f"{node.url}/admin")
        await expect(page.locator("#login-form")).to_be_visible()
        await tab.shot("login")
        await page.fill("#password", "not-the-password")
        await page.click("#login-form button[type=submit]")
        await expect(page.locator("#login-error")).to_contain_text("Wrong admin password")
        await expect(page.locator("#nav")).to_be_hidden()
        await tab.shot("wrong-password")
        await page.fill("#password", ADMIN_PASSWORD)
        await page.click("#login-form button[type=submit]")
        await expect(page.locator("#view-overview")).to_be_visible()
        await expect(page.locator("#login")).to_be_hidden()

        # Overview: the API's figures are the requests just made, and the page shows them.
        usage = await get(admin, "/admin/api/usage?days=30")
        revenue = usage["totals"]["revenue_msat"]
        assert usage["totals"]["requests"] == PAID_REQUESTS
        assert revenue == sum(costs)
        overview = page.locator("#overview")
        await expect(overview.locator('[data-figure="requests"]')).to_have_text(str(PAID_REQUESTS))
        figure = overview.locator('[data-figure="revenue"]')
        await expect(figure).to_have_attribute("data-msat", str(revenue))
        await expect(figure.locator(".sat")).to_have_text(sat_text(revenue))
        await expect(figure.locator(".msat")).to_have_text(f"{revenue:,} msat")
        bars = overview.locator('svg[data-chart="revenue"] rect.bar')
        await expect(bars).to_have_count(len(usage["by_day"]))
        await expect(bars.last).to_have_attribute("data-value", str(revenue))
        requests_bars = overview.locator('svg[data-chart="requests"] rect.bar')
        await expect(requests_bars.last).to_have_attribute("data-value", str(PAID_REQUESTS))
        await tab.shot("overview")

        # Models and prices: msat per token as charged (10.5 prompt, 21 completion).
        await page.click('#nav a[href="#models"]')
        priced = page.locator('#models tr[data-model="test/priced"]')
        await expect(priced.locator("td").nth(3)).to_have_text("10.5")
        await expect(priced.locator("td").nth(4)).to_have_text("21")
        models = (await get(admin, "/v1/models"))["data"]
        await expect(page.locator("#models tbody tr")).to_have_count(len(models))
        await tab.shot("models")

        # Providers with their health, as /v1/providers says.
        await page.click('#nav a[href="#providers"]')
        providers = (await get(admin, "/v1/providers"))["providers"]
        assert providers
        for provider in providers:
            row = page.locator(f'#providers tr[data-provider="{provider["name"]}"]')
            await expect(row.locator("[data-status]")).to_have_text(provider["status"])
        await tab.shot("providers")

        # Logout: back to the login form, and the browser's session is gone.
        await page.click("#logout")
        await expect(page.locator("#login-form")).to_be_visible()
        await expect(page.locator("#nav")).to_be_hidden()
        await expect(page.locator("#overview")).to_be_empty()
        session = await context.request.get(f"{node.url}/admin/api/session")
        assert await session.json() == {"authenticated": False}
        await tab.shot("logged-out")
        assert tab.errors == []
    finally:
        await context.close()
        await admin.aclose()
        print(f"dashboard screenshots: {ARTIFACTS}")


async def test_settings_editor_shows_field_errors_and_saves(
    node: RunningNode, browser: Browser
) -> None:
    tab = await open_dashboard(browser, node, "settings")
    page = tab.page
    try:
        # A refused value shows the API's reason next to its field and applies nothing;
        # then the description, saved, is what /v1/info says at once.
        await page.click('#nav a[href="#settings"]')
        async with httpx.AsyncClient(base_url=node.url) as http:
            before = await get(http, "/v1/info")
            fee = page.locator("#setting-provider_fee")
            fee_text = await fee.input_value()
            await fee.fill("not a number")
            await page.fill("#setting-description", "Run from the dashboard")
            await page.click("#settings button[type=submit]")
            await expect(page.locator('[data-error-for="provider_fee"]')).to_be_visible()
            await expect(page.locator("#settings .status")).to_contain_text("Not saved")
            await tab.shot("refused")
            assert (await get(http, "/v1/info"))["description"] == before["description"]
            await fee.fill(fee_text)
            await page.click("#settings button[type=submit]")
            await expect(page.locator("#settings .status")).to_have_text("Saved: description.")
            assert (await get(http, "/v1/info"))["description"] == "Run from the dashboard"
        field = page.locator("#setting-description")
        await expect(field).to_have_value("Run from the dashboard")
        await expect(page.locator('[data-setting="description"] .source-admin')).to_be_visible()
        await tab.shot("saved")
        assert tab.errors == []
    finally:
        await tab.page.context.close()


async def test_withdraw_shows_a_token_the_mint_redeems(
    node: RunningNode, user_wallet: TestWallet, browser: Browser
) -> None:
    key = await funded_key(node, user_wallet, 100)
    await paid_requests(node, key)
    admin = await admin_client(node)
    tab = await open_dashboard(browser, node, "wallet")
    page = tab.page
    try:
        # The revenue available is the API's; withdrawing it all shows a token that a
        # user's wallet redeems at the mint for exactly that amount.
        sent: list[str | None] = []

        def record(request: Request) -> None:
            if request.url.endswith("/admin/api/withdraw"):
                sent.append(request.headers.get("idempotency-key"))

        page.on("request", record)
        await page.click('#nav a[href="#wallet"]')
        money = (await get(admin, "/admin/api/wallet"))["revenue"]
        available = money["available_msat"]
        assert available >= 1000, money
        shown = page.locator('#wallet [data-figure="available"]')
        await expect(shown).to_have_attribute("data-msat", str(available))
        await expect(shown.locator(".msat")).to_have_text(f"{available:,} msat")
        amount = available // 1000
        await expect(page.locator("#withdraw-amount")).to_have_value(str(amount))
        await tab.shot("before")

        # More than there is: refused with the API's words, nothing taken.
        await page.fill("#withdraw-amount", str(amount + 1000))
        await page.click('#wallet form button[type="submit"]')
        await expect(page.locator('#withdraw-result [role="alert"]')).to_contain_text("available")
        await tab.shot("refused")

        await page.fill("#withdraw-amount", str(amount))
        await page.click('#wallet form button[type="submit"]')
        token_field = page.locator("#withdraw-token")
        await expect(token_field).to_have_value(re.compile(r"^cashu"))
        token = await token_field.input_value()
        withdrawn = money["withdrawn_msat"] + amount * 1000
        await expect(page.locator('#wallet [data-figure="withdrawn"]')).to_have_attribute(
            "data-msat", str(withdrawn)
        )
        listed = page.locator("#wallet table[data-table=withdrawals] tbody tr")
        await expect(listed).to_have_count(1)
        await tab.shot("withdrawn")
        assert await user_wallet.redeem(token) == amount
        # Each withdrawal went with its own idempotency key (a retry would reuse it).
        assert len(sent) == 2 and None not in sent and len(set(sent)) == 2
        after = (await get(admin, "/admin/api/wallet"))["revenue"]
        assert after["available_msat"] == available - amount * 1000
        await node.check_invariants()
        assert tab.errors == []
    finally:
        await tab.page.context.close()
        await admin.aclose()


async def test_keys_are_listed_and_can_be_disabled_and_enabled(
    node: RunningNode, user_wallet: TestWallet, browser: Browser
) -> None:
    await funded_key(node, user_wallet, 10)
    admin = await admin_client(node)
    tab = await open_dashboard(browser, node, "keys")
    page = tab.page
    try:
        await page.click('#nav a[href="#keys"]')
        (listed,) = (await get(admin, "/admin/api/keys"))["keys"]
        row = page.locator(f'#keys tr[data-key="{listed["hash_prefix"]}"]')
        await expect(row.locator('[data-state="active"]')).to_be_visible()
        await expect(row.locator('[data-msat="10000"]')).to_be_visible()
        await row.locator('button[data-action="disable"]').click()
        await expect(row.locator('[data-state="disabled"]')).to_be_visible()
        await tab.shot("disabled")
        (disabled,) = (await get(admin, "/admin/api/keys"))["keys"]
        assert disabled["disabled"] is True
        await row.locator('button[data-action="enable"]').click()
        await expect(row.locator('[data-state="active"]')).to_be_visible()
        (enabled,) = (await get(admin, "/admin/api/keys"))["keys"]
        assert enabled["disabled"] is False
        await tab.shot("enabled")
        assert tab.errors == []
    finally:
        await tab.page.context.close()
        await admin.aclose()


async def test_an_endpoint_the_node_lacks_shows_as_not_available(
    node: RunningNode, browser: Browser
) -> None:
    """Parts of the API a node does not have yet leave a clear notice, not a broken page."""
    context = await browser.new_context()
    tab = Pages(await context.new_page(), "missing")
    page = tab.page
    missing = {"error": {"message": "Not Found", "type": "not_found", "code": 404}}
    for pattern in ("**/admin/api/usage*", "**/admin/api/wallet", "**/admin/api/settings/schema"):
        await page.route(pattern, lambda route: route.fulfill(status=404, json=missing))
    try:
        await page.goto(f"{node.url}/admin")
        await page.fill("#password", ADMIN_PASSWORD)
        await page.click("#login-form button[type=submit]")
        for view in ("overview", "wallet", "settings"):
            await page.click(f'#nav a[href="#{view}"]')
            notice = page.locator(f'#{view} [data-state="unavailable"]')
            await expect(notice).to_contain_text("not available on this node yet")
            await tab.shot(view)
        assert tab.errors == []
    finally:
        await context.close()


async def test_the_page_and_its_files_carry_strict_security_headers(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        for path in ("/admin", "/admin/"):
            page = await http.get(path)
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert page.headers["cache-control"] == "no-store"
            assert page.headers["x-frame-options"] == "DENY"
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            # Every script is a file from this origin: none inline, none from elsewhere.
            assert not re.search(r"<script(?![^>]*\bsrc=\"/admin/static/)", page.text)
            assert "http" not in re.sub(r'xmlns="[^"]*"', "", page.text)
        script = await http.get("/admin/static/app.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.headers["x-content-type-options"] == "nosniff"
        again = await http.get(
            "/admin/static/app.js", headers={"If-None-Match": script.headers["etag"]}
        )
        assert again.status_code == 304
        for bad in ("/admin/static/nope.js", "/admin/static/..%2Fdashboard.py"):
            assert (await http.get(bad)).status_code == 404
