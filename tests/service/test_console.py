"""The web console at ``/``, driven in a real browser: Debian's chromium under Playwright.

The service serves both embedded defaults (the ImageNet classifier and NanoDet).
The browser uploads real photos as a person would (a file chooser), and the
test reads what the page shows: the top label, the boxes drawn on the canvas
(its pixels, not only the DOM), the plain-words message for a bad file, the
models page and the operations page, at laptop and phone widths. Screenshots go
to ``build/test-artifacts/console/`` (or ``$OCELLUS_ARTIFACTS/console``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("OCELLUS_ARTIFACTS", REPO / "build" / "test-artifacts")) / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOG = Path("/usr/share/darknet/data/dog.jpg")
LAPTOP, PHONE = {"width": 1366, "height": 900}, {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: run `make system-deps`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, detector_defaults_server):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(detector_defaults_server.url + "/")
    page.wait_for_selector("#model option", state="attached")
    yield page
    context.close()
    assert not errors, errors  # no uncaught JavaScript error on any page


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("console-photos")
    Image.fromarray(data.chelsea()).save(folder / "cat.jpg", quality=92)
    (folder / "notes.jpg").write_bytes(b"these are notes, not a JPEG\n" * 20)
    if not DOG.exists():
        pytest.fail("Debian's darknet photos are missing: run `make system-deps`")
    shutil.copy(DOG, folder / "dog.jpg")
    return {p.stem: p for p in folder.iterdir()}


def _models(page) -> dict[str, str]:
    options = page.eval_on_selector_all("#model option", "os => os.map(o => [o.value, o.text])")
    return {text.split("(")[-1].rstrip(")"): value for value, text in options}


def test_classify_a_photo_shows_its_label(page, photos) -> None:
    page.select_option("#model", _models(page)["classify"])
    page.set_input_files("#files", str(photos["cat"]))
    page.get_by_role("button", name="Run").click()
    card = page.locator("article.card[data-file='cat.jpg']")
    card.locator(".bars li").first.wait_for()
    top = card.locator(".bars li .label").all_inner_texts()
    assert len(top) == 5 and any(c in top[0].lower() for c in ("cat", "tabby")), top
    meta = card.locator(".meta").inner_text()
    # The request's latency, and its ID (the one in the service's log line and trace).
    assert "ms" in meta and f"request {card.get_attribute('data-request-id')}" in meta, meta
    page.screenshot(path=ARTIFACTS / "classify-cat.png", full_page=True)


def test_detect_dog_draws_boxes_that_toggle(page, photos) -> None:
    page.select_option("#model", _models(page)["detect"])
    page.set_input_files("#files", str(photos["dog"]))
    page.get_by_role("button", name="Run").click()
    canvas = page.locator("article.card[data-file='dog.jpg'] canvas")
    canvas.wait_for()
    page.locator("canvas[data-boxes]:not([data-boxes='0'])").wait_for()
    labels = page.locator(".detections li").all_inner_texts()
    assert any(t.startswith("dog") for t in labels) and any(t.startswith("bicycle")
                                                            for t in labels), labels
    painted = page.evaluate("""() => {
        const c = document.querySelector('canvas');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
        return n; }""")
    assert painted > 500, painted  # box outlines and label backgrounds, in pixels
    page.screenshot(path=ARTIFACTS / "detect-dog.png", full_page=True)
    before = int(canvas.get_attribute("data-boxes"))
    page.get_by_label("dog").uncheck()  # the class toggle
    assert int(canvas.get_attribute("data-boxes")) < before
    assert not any(t.startswith("dog") for t in page.locator(".detections li").all_inner_texts())


def test_a_bad_file_gets_plain_words(page, photos) -> None:
    page.set_input_files("#files", [str(photos["notes"]), str(photos["cat"])])
    page.get_by_role("button", name="Run").click()
    error = page.locator("article.card[data-file='notes.jpg'] .error")
    error.wait_for()
    assert "could not be read as an image" in error.inner_text() or \
        "not supported" in error.inner_text(), error.inner_text()
    assert "Request ID: " in error.inner_text()  # to quote
    page.locator("article.card[data-file='cat.jpg'] .bars li").first.wait_for()  # others go on
    page.screenshot(path=ARTIFACTS / "bad-file.png", full_page=True)


def test_models_page_shows_each_model(page) -> None:
    page.get_by_role("tab", name="Models").click()
    card = page.locator("#model-list article[data-model='imagenet']")
    card.wait_for()
    text = card.inner_text()
    assert "classify" in text and "Labels (1000)" in text and "Provenance" in text, text
    assert "imagenet_val_top1_published" in text  # its metrics
    assert page.locator("#model-list article[data-model='coco-nanodet']").count() == 1
    assert "admin token" in text  # history needs it; this service has no registry either
    page.screenshot(path=ARTIFACTS / "models.png", full_page=True)


def test_operations_page_and_keyboard(page, photos) -> None:
    page.set_input_files("#files", str(photos["cat"]))
    page.get_by_role("button", name="Run").click()
    page.locator(".bars li").first.wait_for()
    page.get_by_role("tab", name="Try it").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.get_by_role("tab", name="Operations").get_attribute("aria-selected") == "true"
    page.locator("#tiles .tile").nth(6).wait_for()
    page.locator("#ops-models article[data-model='imagenet'] .bars li").first.wait_for()
    tiles = page.locator("#tiles").inner_text()
    assert "latency p99" in tiles and "queued images" in tiles, tiles
    drift = page.locator("#ops-models article[data-model='imagenet'] table").inner_text()
    assert "mean brightness" in drift and "–" not in drift.split("mean brightness")[1][:12]
    page.screenshot(path=ARTIFACTS / "operations.png", full_page=True)


def test_reads_at_phone_width(page, photos) -> None:
    page.set_viewport_size(PHONE)
    page.select_option("#model", _models(page)["detect"])
    page.set_input_files("#files", str(photos["dog"]))
    page.get_by_role("button", name="Run").click()
    page.locator("canvas[data-boxes]:not([data-boxes='0'])").wait_for()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{overflow}px wider than the phone's screen"
    page.screenshot(path=ARTIFACTS / "phone-detect.png", full_page=True)


@pytest.fixture(scope="module")
def registry_server(start_server, tiny_exports, tmp_path_factory):
    """A tiny model served from a registry, with two versions, an API key and an admin token."""
    from helpers import QUICK_START

    from models.registry import ModelRegistry

    registry = ModelRegistry(tmp_path_factory.mktemp("console-registry"))
    for export in tiny_exports:
        registry.promote("tiny", registry.publish("tiny", export))
    return start_server("--registry", str(registry.root), env={
        **QUICK_START, "OCELLUS_REGISTRY_POLL_SECONDS": "0", "OCELLUS_API_KEYS": "console-key",
        "OCELLUS_ADMIN_TOKEN": "console-admin"})


def test_keys_history_and_rollback(browser, registry_server) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    page.goto(registry_server.url + "/")
    alert = page.locator("#try-error")
    alert.wait_for()
    assert "API key is needed" in alert.inner_text()  # before the key is entered
    page.locator("#credentials summary").click()
    page.get_by_label("API key").fill("console-key")
    page.get_by_label("API key").press("Tab")  # a change event
    page.wait_for_selector("#model option[value='tiny']", state="attached")
    page.get_by_role("tab", name="Models").click()
    card = page.locator("#model-list article[data-model='tiny']")
    card.get_by_text("Enter the admin token").wait_for()
    page.get_by_label("Admin token").fill("console-admin")
    page.get_by_label("Admin token").press("Tab")
    card.get_by_role("button", name="Roll back").wait_for()
    assert "Current: 2" in card.inner_text() and "promote" in card.inner_text()
    page.once("dialog", lambda dialog: dialog.accept())  # "Roll tiny back ...?"
    card.get_by_role("button", name="Roll back").click()
    page.locator("#model-list article[data-model='tiny']").get_by_text("Current: 1").wait_for()
    assert "version 1" in page.locator("#model-list article[data-model='tiny'] h2").inner_text()
    page.screenshot(path=ARTIFACTS / "models-registry.png", full_page=True)
    context.close()


def test_a_trained_models_scores_are_shown(browser, start_server, fashion_model) -> None:
    from helpers import QUICK_START

    export, manifest = fashion_model
    server = start_server("--model", str(export), env=QUICK_START)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    page.goto(server.url + "/")
    page.get_by_role("tab", name="Models").click()
    card = page.locator(f"#model-list article[data-model='{manifest.name}']")
    card.get_by_text("Confusion matrix").wait_for()
    text = card.inner_text()
    top1 = f"{manifest.metrics['val']['top1']:.4f}"
    assert "val split" in text and top1 in text and "Per class" in text, text[:2000]
    assert card.locator("table").nth(3).locator("tbody tr").count() == len(manifest.labels)
    page.screenshot(path=ARTIFACTS / "models-trained.png", full_page=True)
    context.close()
