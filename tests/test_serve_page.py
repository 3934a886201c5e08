"""The web page at `/`, driven in headless Chromium (Debian's `chromium` via Playwright) against a real server.

Screenshots land in test-artifacts/ (serve-page.png, serve-page-error.png, serve-page-no-key.png).
"""

from __future__ import annotations

import base64
import shutil

import httpx
import pytest
from conftest import write_tiny_adapter
from serve_helpers import ARTIFACTS, image_bytes, live_server

from velora.labels import LABELS
from velora.serve import ServeSettings, create_app

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = "page-key"

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None,
                                reason="Debian chromium not installed (apt-get install chromium; `make install` does)")


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_adapter_dir, tmp_path_factory):
    second = write_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("page-second") / "lora", seed=3)
    settings = ServeSettings(model_path=str(tiny_adapter_dir), adapters={"second": str(second)}, api_key=KEY)
    with live_server(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1100, "height": 760})
        yield context
        context.close()


@pytest.fixture()
def page(browser_context, server):
    page = browser_context.new_page()
    page.goto(f"{server}/?key={KEY}")
    playwright_api.expect(page.locator("#adapter option")).to_have_count(3)  # /info answered
    yield page
    page.close()


def api_answer(server, data: bytes, premise: str | None, hypothesis: str, adapter: str) -> dict:
    fields = {"hypothesis": hypothesis, "adapter": adapter, **({"premise": premise} if premise else {})}
    response = httpx.post(f"{server}/check", files={"image": ("a.png", data)}, data=fields,
                          headers={"X-API-Key": KEY}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def shown_probabilities(page) -> dict[str, float]:
    return {label: float(page.get_attribute(f'.bar[data-label="{label}"]', "data-value")) for label in LABELS}


def test_upload_check_and_see_the_three_bars(page, server):
    data = image_bytes(21, size=(120, 90))
    assert "key=" not in page.url  # the key left the address bar once read
    assert page.input_value("#key") == KEY
    assert page.eval_on_selector_all("#adapter option", "os => os.map(o => o.value)") == ["default", "base", "second"]

    page.set_input_files("#file", files=[{"name": "product.png", "mimeType": "image/png", "buffer": data}])
    playwright_api.expect(page.locator("#preview")).to_be_visible()
    page.fill("#premise", "A stainless steel coffee maker on a kitchen counter")
    page.fill("#hypothesis", "This appliance brews hot beverages")
    page.select_option("#adapter", "second")
    page.click("#check")
    playwright_api.expect(page.locator("#result")).to_be_visible()

    wanted = api_answer(server, data, "A stainless steel coffee maker on a kitchen counter",
                        "This appliance brews hot beverages", "second")
    assert shown_probabilities(page) == pytest.approx(wanted["probs"], abs=1e-9)
    assert page.inner_text("#relation").lower() == wanted["relation"]
    for label in LABELS:
        percent = f"{100 * wanted['probs'][label]:.1f}%"
        assert page.inner_text(f'.bar[data-label="{label}"] output') == percent
        width = page.eval_on_selector(f'.bar[data-label="{label}"] .fill', "e => e.style.width")
        assert float(width.rstrip("%")) == pytest.approx(100 * wanted["probs"][label], abs=0.051)
    assert "adapter second" in page.inner_text("#meta")
    assert page.is_hidden("#error")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)


def test_drop_an_image_pick_base_then_errors_are_shown(page, server):
    data = image_bytes(22)
    page.evaluate("""([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/png"}));
        document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""", [base64.b64encode(data).decode(), "dropped.png"])
    playwright_api.expect(page.locator("#file-name")).to_contain_text("dropped.png")
    page.fill("#hypothesis", "there is a dog.")
    page.select_option("#adapter", "base")
    page.press("#hypothesis", "Enter")
    playwright_api.expect(page.locator("#meta")).to_contain_text("adapter base")
    assert shown_probabilities(page) == pytest.approx(api_answer(server, data, None, "there is a dog.",
                                                                 "base")["probs"], abs=1e-9)

    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"just text"}])
    page.click("#check")
    playwright_api.expect(page.locator("#error")).to_contain_text("image: notes.txt: not an image")
    assert page.is_hidden("#result")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page-error.png"), full_page=True)

    page.set_input_files("#file", files=[{"name": "ok.png", "mimeType": "image/png", "buffer": data}])
    page.fill("#key", "")
    page.evaluate("localStorage.clear()")
    page.click("#check")
    playwright_api.expect(page.locator("#error")).to_contain_text("missing API key")


def test_the_page_says_what_is_missing_before_sending(page):
    page.click("#check")
    playwright_api.expect(page.locator("#error")).to_contain_text("image: choose, drop or paste an image")
    page.set_input_files("#file", files=[{"name": "a.png", "mimeType": "image/png", "buffer": image_bytes(1)}])
    page.click("#check")
    playwright_api.expect(page.locator("#error")).to_contain_text("hypothesis: type the statement")


def test_no_key_field_when_the_server_has_no_key(browser_context, tiny_adapter_dir):
    """`hidden` must win over the stylesheet's `label { display: flex }`."""
    with live_server(create_app(ServeSettings(model_path=str(tiny_adapter_dir), warmup=False))) as url:
        page = browser_context.new_page()
        page.goto(f"{url}/")
        playwright_api.expect(page.locator("#adapter option")).to_have_count(2)  # /info answered: auth is off
        assert page.is_hidden("#key-row") and page.is_hidden("#key")
        assert page.is_hidden("#error") and page.is_hidden("#result")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "serve-page-no-key.png"), full_page=True)
        page.close()


def test_api_docs_render_offline(browser_context, server):
    """Swagger UI comes from the server itself (swagger-ui-bundle), not a CDN: /docs works on an offline line."""
    html = httpx.get(f"{server}/docs").text
    assert "cdn." not in html and "/static-offline-docs/swagger-ui-bundle.js" in html
    page = browser_context.new_page()
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(server) else None)
    page.goto(f"{server}/docs")
    playwright_api.expect(page.locator(".opblock-summary-path", has_text="/check").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "serve-docs.png"))
    page.close()
    assert outside == []
