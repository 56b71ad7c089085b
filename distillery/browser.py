"""Open a report page in headless Chromium: what it loaded, and a screenshot.

Drives the system's Chromium (Debian's `chromium` package, /usr/bin/chromium) through Playwright;
Playwright's own browser download is never used. Every network request the page makes is refused
and recorded, so a page that is not self-contained shows it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from distillery.errors import DistilleryError

CHROMIUM_ENV = "DISTILLERY_CHROMIUM"  # another Chromium binary, if not /usr/bin/chromium
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# What the page shows once loaded: every image (decoded size), every table (rows), every heading.
PAGE_STATE_JS = """() => ({
  title: document.title,
  images: Array.from(document.images).map(i => ({id: i.id, alt: i.alt, complete: i.complete,
                                                   width: i.naturalWidth, height: i.naturalHeight})),
  tables: Array.from(document.querySelectorAll('table')).map(t => ({id: t.id, className: t.className,
      rows: t.tBodies.length ? t.tBodies[0].rows.length : 0, height: t.getBoundingClientRect().height})),
  headings: Array.from(document.querySelectorAll('h1, h2, h3')).map(h => h.textContent.trim()),
  text: document.body.innerText,
})"""


class BrowserError(DistilleryError, RuntimeError):
    """Chromium is missing or could not open the page."""


def chromium_path() -> str:
    path = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        raise BrowserError(f"Chromium not found at {path}: install Debian's `chromium` package "
                           f"(`make test` does, as root), or set {CHROMIUM_ENV} to a Chromium binary")
    return path


def open_page(html_file: str | Path, screenshot: str | Path | None = None, width: int = 1280,
              timeout_s: float = 60.0) -> dict:
    """Load `html_file` in headless Chromium; return the page state (PAGE_STATE_JS) plus
    `requests`: every URL it tried to fetch that is not the file itself or a data: URI (all refused).
    With `screenshot`, a full-page PNG is written there."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    page_url = Path(html_file).resolve().as_uri()
    requests: list[str] = []
    profile = tempfile.mkdtemp(prefix="distillery-chromium-")  # a new, empty profile each time
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True,
                viewport={"width": width, "height": 900}, timeout=timeout_s * 1000)
            try:
                page = context.pages[0] if context.pages else context.new_page()

                def refuse(route):
                    url = route.request.url
                    if url == page_url or url.startswith("data:"):
                        return route.continue_()
                    requests.append(url)
                    return route.abort()

                page.route("**/*", refuse)
                page.goto(page_url, wait_until="load", timeout=timeout_s * 1000)
                state = page.evaluate(PAGE_STATE_JS)
                if screenshot is not None:
                    Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(screenshot), full_page=True)
            finally:
                context.close()
    except PlaywrightError as exc:
        raise BrowserError(f"Chromium could not open {html_file}: {exc}") from None
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return {**state, "requests": requests}
