"""A shopper's and an admin's whole journey through orderflow's browser
front, in a real headless Chromium (Debian's), driven by Playwright.

Run by crates/orderflow/tests/browser.rs against a server it started:

    journey.py BASE_URL ADMIN_EMAIL ADMIN_PASSWORD OUTPUT_DIR

Each step saves a screenshot in OUTPUT_DIR. The run fails (exit 1, the
reasons printed) on a step that does not do what it should, on any console
error, page error, failed request or answer of 400 and more, on any serious
or critical accessibility violation axe-core finds on a page, and on a page
whose first load (empty cache) transfers more than 150 KB.
"""

import json
import os
import re
import sys
import time
import uuid

from playwright.sync_api import expect, sync_playwright

BASE, ADMIN_EMAIL, ADMIN_PASSWORD, OUT = sys.argv[1:5]
CHROMIUM = os.environ.get("ORDERFLOW_CHROMIUM", "/usr/bin/chromium")
AXE = open(os.path.join(os.path.dirname(__file__), "axe-core.min.js"), encoding="utf-8").read()
BUDGET = 150 * 1024
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

problems = []
steps = []
pages_checked = {}


def fail(message):
    problems.append(message)
    print("PROBLEM:", message, flush=True)


def watch(page, who):
    """Every console error, page error, failed request and 4xx/5xx answer."""
    def on_console(message):
        if message.type == "error":
            fail(f"{who}: console error on {page.url}: {message.text}")

    def on_failed(request):
        # Leaving a page cancels what it still had on the way (its live
        # stream, a ticket, the icon): the browser aborts those itself, and
        # it is not the server failing (a reset or an empty answer is).
        if "ERR_ABORTED" in (request.failure or ""):
            return
        fail(f"{who}: request failed: {request.method} {request.url}: {request.failure}")

    def on_response(response):
        if response.status >= 400:
            fail(f"{who}: {response.status} for {response.request.method} {response.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: fail(f"{who}: page error on {page.url}: {error}"))
    page.on("requestfailed", on_failed)
    page.on("response", on_response)


def check_page(page, browser, context, name):
    """axe-core on the page as it is, and (once per kind of page) what its
    first load transfers with an empty cache."""
    page.evaluate(AXE)
    violations = page.evaluate(
        """() => axe.run(document, {resultTypes: ['violations']}).then(r =>
            r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                    targets: v.nodes.map(n => n.target.join(' ')).slice(0, 3)})))"""
    )
    for violation in violations:
        if violation["impact"] in ("serious", "critical"):
            fail(f"axe on {name} ({page.url}): {violation['impact']} {violation['id']}: "
                 f"{violation['help']} at {violation['targets']}")
    kind = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "{id}", page.url.split("?")[0])
    if kind in pages_checked:
        return
    fresh = browser.new_context(storage_state=context.storage_state())
    probe = fresh.new_page()
    sizes = []

    def on_finished(request):
        try:
            sizes.append(request.sizes()["responseBodySize"] + request.sizes()["responseHeadersSize"])
        except Exception:  # noqa: BLE001 - a request without sizes counts nothing
            pass

    probe.on("requestfinished", on_finished)
    probe.goto(page.url, wait_until="load")
    probe.wait_for_timeout(300)
    total = sum(sizes)
    pages_checked[kind] = total
    if total > BUDGET:
        fail(f"{kind} transfers {total} bytes on first load (budget {BUDGET})")
    fresh.close()


def shot(page, browser, context, name):
    name = f"{len(steps) + 1:02}-{name}"
    page.screenshot(path=os.path.join(OUT, f"{name}.png"), full_page=True)
    check_page(page, browser, context, name)
    steps.append(name)
    print("step:", name, page.url, flush=True)


def notice(page, text):
    expect(page.get_by_role("status")).to_contain_text(text)


def add_to_cart(page, words):
    page.get_by_role("searchbox", name="Search products").fill(words)
    page.get_by_role("button", name="Search", exact=True).click()
    page.locator(".card a").first.click()
    page.get_by_role("button", name="Add to cart").click()
    notice(page, "Added to your cart")


def place_order(page):
    page.goto(BASE + "/cart")
    page.get_by_role("button", name="Place the order").click()
    page.wait_for_url(re.compile(r".*/orders/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[1]


def shopper(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch(page, "shopper")
    email = f"shopper-{uuid.uuid4().hex[:8]}@example.com"

    page.goto(BASE + "/")
    expect(page.get_by_role("heading", name="Categories")).to_be_visible()
    shot(page, browser, context, "home")

    page.get_by_role("link", name="Register").click()
    shot(page, browser, context, "register")
    page.get_by_label("Your name").fill("Browser Shopper")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label(re.compile("^Password")).fill("a long browser password")
    page.get_by_role("button", name="Create the account").click()
    notice(page, "Welcome")
    shot(page, browser, context, "registered")

    page.get_by_role("link", name=re.compile("^Kitchen")).first.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Kitchen")
    shot(page, browser, context, "category")

    page.get_by_role("searchbox", name="Search products").fill("kettle")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator(".card")).to_have_count(1)
    shot(page, browser, context, "search")
    page.locator(".card a").first.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Steel Kettle")
    shot(page, browser, context, "product")
    page.get_by_role("button", name="Add to cart").click()
    notice(page, "Added to your cart")
    add_to_cart(page, "mug")

    page.get_by_role("link", name="Cart", exact=True).click()
    expect(page.locator("table.lines tbody tr")).to_have_count(2)
    shot(page, browser, context, "cart")

    # The order page moves from pending to confirmed by itself.
    order_id = place_order(page)
    status = page.locator(f'[data-live-order="{order_id}"]')
    first_status = status.inner_text()
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    expect(status).to_have_text("confirmed", timeout=30_000)
    if navigations:
        fail(f"the order page reloaded on its way to confirmed: {navigations}")
    if first_status == "confirmed":
        fail("the order was confirmed before its page showed it: nothing moved live")
    shot(page, browser, context, "order-confirmed")

    # The notification arrives (e-mail, SMS and push go out after the
    # confirmation).
    deadline = time.time() + 30
    while True:
        page.goto(BASE + "/notifications")
        if page.get_by_text("Your order is confirmed").count() > 0:
            break
        if time.time() > deadline:
            fail("no 'order confirmed' notification within 30 s")
            break
        page.wait_for_timeout(500)
    shot(page, browser, context, "notifications")

    # Another order, cancelled from the order list.
    add_to_cart(page, "candle")
    second = place_order(page)
    page.goto(BASE + "/orders")
    shot(page, browser, context, "orders")
    row = page.locator("ul.orders li").filter(has=page.locator(f'[data-live-order="{second}"]'))
    row.get_by_role("button", name=re.compile("^Cancel")).click()
    notice(page, "The order is cancelled")
    expect(page.locator(f'[data-live-order="{second}"]').first).to_have_text("cancelled")
    shot(page, browser, context, "cancelled")

    # A third order within five minutes: the fraud check holds it.
    add_to_cart(page, "lamp")
    held = place_order(page)
    try:
        expect(page.locator(f'[data-live-order="{held}"]')).to_have_text("held", timeout=30_000)
    except AssertionError:
        shown = page.locator(f'[data-live-order="{held}"]').inner_text()
        page.reload()
        stored = page.locator(f'[data-live-order="{held}"]').inner_text()
        fail(f"order {held} showed {shown!r} live after 30 s; the server has it {stored!r}")
        raise
    shot(page, browser, context, "held")

    page.get_by_role("link", name="Account", exact=True).click()
    expect(page.get_by_role("heading", name="Signed-in devices")).to_be_visible()
    shot(page, browser, context, "account")
    page.get_by_role("button", name="Log out").click()
    notice(page, "You are signed out")
    page.get_by_role("link", name="Log in").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    shot(page, browser, context, "login")
    context.close()
    return held


def admin(browser, held):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch(page, "admin")
    page.goto(BASE + "/login?next=/console")
    page.get_by_label("E-mail").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/console.*"))
    expect(page.get_by_role("heading", name="Held by the fraud check")).to_be_visible()
    shot(page, browser, context, "console")

    # Make SMS fail before the held order goes on: its SMS is retried,
    # then dead-lettered.
    sms = page.locator("form.provider").filter(has=page.locator("strong", has_text="sms"))
    sms.get_by_label("Failure rate (%)").fill("100")
    sms.get_by_role("button", name=re.compile("^Set")).click()
    notice(page, "settings are changed")

    row = page.locator("ul.held li").filter(has_text=held)
    row.get_by_role("button", name="Approve").click()
    notice(page, "approved")
    # The live feed shows the approved order going on (the payment takes
    # 1.5 s, so its confirmation comes after the page is up).
    expect(page.locator("[data-live-feed] li").first).to_contain_text(held[-8:], timeout=30_000)
    shot(page, browser, context, "approved")

    deadline = time.time() + 60
    while page.locator("#dlq ~ table tbody tr, section[aria-labelledby=dlq] table tbody tr").count() == 0:
        if time.time() > deadline:
            fail("the dead-letter queue did not grow within 60 s of SMS failing")
            break
        page.wait_for_timeout(1000)
        page.goto(BASE + "/console")
    letters = page.locator("section[aria-labelledby=dlq] table tbody tr")
    expect(letters.first).to_contain_text("sms")
    shot(page, browser, context, "dlq")
    letters.first.get_by_role("link").click()
    expect(page.get_by_role("heading", name="Dead letter")).to_be_visible()
    shot(page, browser, context, "dead-letter")
    page.goto(BASE + "/console")

    sms = page.locator("form.provider").filter(has=page.locator("strong", has_text="sms"))
    sms.get_by_label("Failure rate (%)").fill("0")
    sms.get_by_role("button", name=re.compile("^Set")).click()
    notice(page, "settings are changed")
    before = letters.count()
    letters.first.get_by_role("button", name="Replay").click()
    notice(page, "back on its topic")
    expect(page.locator("section[aria-labelledby=dlq] table tbody tr")).to_have_count(before - 1)
    shot(page, browser, context, "replayed")
    context.close()


def phone(browser):
    """The pages fit a phone: nothing wider than its screen."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    watch(page, "phone")
    for path, name in [("/", "phone-home"), ("/search?q=tea", "phone-search")]:
        page.goto(BASE + path)
        wide = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        if wide > 0:
            fail(f"{path} is {wide}px wider than a 390px phone screen")
        shot(page, browser, context, name)
    page.locator(".card a").first.click()
    shot(page, browser, context, "phone-product")
    context.close()


def main():
    os.makedirs(OUT, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            held = shopper(browser)
            admin(browser, held)
            phone(browser)
        except Exception as error:  # noqa: BLE001 - reported, then the run fails
            fail(f"the journey broke: {type(error).__name__}: {error}")
        finally:
            browser.close()
    print(json.dumps({"steps": steps, "first_load_bytes": pages_checked, "problems": problems}, indent=1))
    sys.exit(1 if problems or not steps else 0)


main()
