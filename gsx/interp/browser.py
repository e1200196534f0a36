"""Render a dashboard page in headless Chromium with the network cut off, and check what it drew.

`render_page` runs Chromium twice on a ``file://`` URL: once with
``--dump-dom`` (the DOM after the page's scripts ran) and once with
``--screenshot``. ``--virtual-time-budget`` lets the scripts finish before
either is taken. All host names resolve to nothing and every HTTP(S) request
goes to a closed local proxy, so a page that needs the network shows up blank.

`dashboard_dom_summary` counts the elements sae-dashboard 0.8.0's JavaScript
creates, so a test or the CLI can tell a drawn dashboard from a blank one.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

logger = logging.getLogger(__name__)

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "chrome-headless-shell")

BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    # No network: no host name resolves, and HTTP(S) goes to a port nothing listens on.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
)


class BrowserError(RuntimeError):
    """Chromium is missing, failed, or timed out."""


def find_chromium() -> str | None:
    """Return the Chromium executable: ``$GSX_CHROMIUM`` if set, else the first of BROWSER_NAMES on PATH."""
    configured = os.environ.get("GSX_CHROMIUM")
    if configured:
        return configured if shutil.which(configured) else None
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class RenderedPage:
    """The DOM and screenshot of a page after its scripts ran."""

    dom: str
    screenshot: Path | None
    seconds: float


def _run_chromium(browser: str, args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="gsx-chromium-") as profile:
        command = [browser, *BASE_FLAGS, f"--user-data-dir={profile}", *args]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as err:
            raise BrowserError(f"Chromium timed out after {timeout_s:.0f} s: {' '.join(command[:1] + args)}") from err
    if result.returncode != 0:
        raise BrowserError(f"Chromium exited with status {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result


def render_page(
    html_path: str | Path,
    *,
    screenshot: str | Path | None = None,
    window_size: tuple[int, int] = (1600, 1000),
    virtual_time_budget_ms: int = 10_000,
    timeout_s: float = 180.0,
    browser: str | None = None,
) -> RenderedPage:
    """Open `html_path` in headless Chromium offline; return the DOM after its scripts ran, and save a PNG to `screenshot`."""
    browser = browser or find_chromium()
    if browser is None:
        raise BrowserError(
            "Chromium not found; install it with scripts/install-system-deps.sh (Debian package chromium) "
            "or set GSX_CHROMIUM to a Chromium or Chrome executable"
        )
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(f"page {html_path} not found")
    url = html_path.as_uri()
    common = [f"--virtual-time-budget={virtual_time_budget_ms}", f"--window-size={window_size[0]},{window_size[1]}"]

    started = time.perf_counter()
    dom = _run_chromium(browser, [*common, "--dump-dom", url], timeout_s).stdout
    shot_path = None
    if screenshot is not None:
        shot_path = Path(screenshot).resolve()
        shot_path.parent.mkdir(parents=True, exist_ok=True)
        _run_chromium(browser, [*common, f"--screenshot={shot_path}", url], timeout_s)
        if not shot_path.is_file():
            raise BrowserError(f"Chromium exited without writing the screenshot {shot_path}")
    seconds = time.perf_counter() - started
    logger.info("rendered %s in Chromium in %.1f s", html_path, seconds)
    return RenderedPage(dom=dom, screenshot=shot_path, seconds=seconds)


# ---------------------------------------------------------------------------
# Reading the rendered DOM


@dataclass
class DashboardDom:
    """Counts of the elements sae-dashboard's scripts create in a rendered page."""

    feature_options: list[str] = field(default_factory=list)
    """Values of the feature dropdown's options (empty when the page has one feature)."""
    plotly_plots: int = 0
    """Elements Plotly turned into plots (class ``js-plotly-plot``)."""
    histogram_bars: Counter[str] = field(default_factory=Counter)
    """Bar shapes drawn per histogram id (``histogram-acts-*`` and ``histogram-logits-*``)."""
    sequence_groups: int = 0
    """Groups of example sequences (class ``seq-group``)."""
    tokens: int = 0
    """Token spans drawn in example sequences and tables (class ``token``)."""
    bold_tokens: int = 0
    """Token spans drawn bold: the activating token of each example."""
    table_rows: int = 0
    """Rows of the feature tables and logit tables (``tr`` elements)."""
    texts: list[str] = field(default_factory=list)
    """Visible text fragments, for titles such as "TOP ACTIVATIONS"."""

    def text_contains(self, needle: str) -> bool:
        return any(needle in text for text in self.texts)

    def bars(self, prefix: str) -> int:
        """Return the bars drawn in histograms whose id starts with `prefix`."""
        return sum(n for hist_id, n in self.histogram_bars.items() if hist_id.startswith(prefix))


# HTML elements that never have an end tag; Chromium writes end tags for all others, SVG included.
_VOID_ELEMENTS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"})


class _DashboardParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.summary = DashboardDom()
        self._histogram_stack: list[tuple[str, int]] = []
        self._depth = 0
        self._in_select = False
        self._skip_text = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        classes = set(attributes.get("class", "").split())
        element_id = attributes.get("id", "")
        if tag not in _VOID_ELEMENTS:
            self._depth += 1
        if tag in {"script", "style"}:
            self._skip_text += 1
        if element_id.startswith(("histogram-acts", "histogram-logits")):
            self._histogram_stack.append((element_id, self._depth))
        if "js-plotly-plot" in classes:
            self.summary.plotly_plots += 1
        if tag == "g" and "point" in classes and self._histogram_stack:
            self.summary.histogram_bars[self._histogram_stack[-1][0]] += 1
        if "seq-group" in classes:
            self.summary.sequence_groups += 1
        if tag == "span" and "token" in classes:
            self.summary.tokens += 1
            if "bold" in attributes.get("style", ""):
                self.summary.bold_tokens += 1
        if tag == "tr":
            self.summary.table_rows += 1
        if tag == "select":
            self._in_select = True
        if tag == "option" and self._in_select:
            self.summary.feature_options.append(attributes.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID_ELEMENTS:
            return
        if tag == "select":
            self._in_select = False
        if tag in {"script", "style"} and self._skip_text:
            self._skip_text -= 1
        if self._histogram_stack and self._histogram_stack[-1][1] == self._depth:
            self._histogram_stack.pop()
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        text = data.strip()
        if text and not self._skip_text:
            self.summary.texts.append(text)


def dashboard_dom_summary(dom: str) -> DashboardDom:
    """Count the dropdown options, plots, histogram bars, sequences and tables in a rendered dashboard DOM."""
    parser = _DashboardParser()
    parser.feed(dom)
    parser.close()
    return parser.summary
