"""Make sae-dashboard's HTML self-contained: inline d3 and plotly in place of their CDN tags.

sae-dashboard 0.8.0 writes two ``<script src=...>`` tags that fetch d3 v6 from
d3js.org and plotly from cdn.plot.ly, so its pages stay blank without the
network. Here both are replaced by inline scripts read from local files:

- d3 6.7.0 (``d3.min.js`` from the npm package ``d3@6.7.0``, BSD-3-Clause, its
  licence in ``vendor/d3.LICENSE``) is vendored in ``gsx/interp/vendor/``;
- plotly.js comes from the installed plotly Python package, whose wheel ships
  ``plotly/package_data/plotly.min.js`` (MIT). plotly 7.1.0 ships plotly.js
  4.1.1, about 4.8 MB, so every dashboard page is at least that large.
"""

from __future__ import annotations

import re
from pathlib import Path

VENDOR_DIR = Path(__file__).parent / "vendor"
D3_PATH = VENDOR_DIR / "d3.min.js"

# The exact tags sae-dashboard 0.8.0 writes (sae_dashboard/html_fns.py, HTML.get_html).
D3_CDN_TAG = '<script src="https://d3js.org/d3.v6.min.js"></script>'
PLOTLY_CDN_TAG = '<script src="https://cdn.plot.ly/plotly-latest.min.js"></script>'

_REMOTE_REFERENCE = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)
_SCRIPT_END = re.compile(r"</(script)", re.IGNORECASE)


class OfflineAssetError(RuntimeError):
    """A JavaScript library needed to inline a dashboard is missing."""


def plotly_js_path() -> Path:
    """Return the path of ``plotly.min.js`` inside the installed plotly package."""
    try:
        import plotly
    except ImportError as err:
        raise OfflineAssetError(
            "the plotly Python package is not installed, so plotly.min.js cannot be inlined; "
            "install it with `pip install plotly`"
        ) from err
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise OfflineAssetError(f"plotly {plotly.__version__} has no {path}; reinstall plotly with `pip install --force-reinstall plotly`")
    return path


def d3_js_path() -> Path:
    """Return the path of the vendored ``d3.min.js`` (d3 6.7.0)."""
    if not D3_PATH.is_file():
        raise OfflineAssetError(
            f"vendored d3 is missing at {D3_PATH}; restore it from the repository or with "
            "`npm pack d3@6.7.0` (the file is dist/d3.min.js in the tarball)"
        )
    return D3_PATH


def escape_inline_script(source: str) -> str:
    """Escape ``</script`` so `source` can sit inside a ``<script>`` element.

    In JavaScript strings and regular expressions ``<\\/`` means ``</``, so the
    code runs unchanged. Token strings in the dashboard data (Gemma's
    vocabulary has HTML fragments) would otherwise end the element early.
    """
    return _SCRIPT_END.sub(r"<\\/\1", source)


def _inline_script(source: str) -> str:
    return "<script>\n" + escape_inline_script(source) + "\n</script>"


def inline_dashboard_html(html: str) -> str:
    """Return sae-dashboard's HTML as a standalone page with d3 and plotly inlined.

    Raises OfflineAssetError when a CDN tag is not where sae-dashboard 0.8.0
    puts it (another sae-dashboard version) or a library file is missing.
    """
    for tag in (D3_CDN_TAG, PLOTLY_CDN_TAG):
        if html.count(tag) != 1:
            raise OfflineAssetError(
                f"expected one {tag!r} in the sae-dashboard HTML, found {html.count(tag)}; "
                "gsx inlines the tags that sae-dashboard 0.8.0 writes, so check the installed sae-dashboard version"
            )

    html = _escape_dashboard_script(html)
    # Only the markup before sae-dashboard's script is checked, because the
    # script's JSON data contains token strings and plotly.min.js has URLs in strings.
    markup = html[: html.index(PLOTLY_CDN_TAG)].replace(D3_CDN_TAG, "")
    leftover = find_remote_references(markup)
    if leftover:
        raise OfflineAssetError(f"the dashboard references remote files besides d3 and plotly: {leftover[:3]}")

    d3_source = d3_js_path().read_text(encoding="utf-8")
    plotly_source = plotly_js_path().read_text(encoding="utf-8")
    # str.replace, not re.sub: the library sources contain backslashes that re.sub would interpret.
    html = html.replace(D3_CDN_TAG, _inline_script(d3_source))
    html = html.replace(PLOTLY_CDN_TAG, _inline_script(plotly_source))
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>SAE feature dashboard</title>\n"
        "</head>\n<body>\n" + html + "\n</body>\n</html>\n"
    )


def _escape_dashboard_script(html: str) -> str:
    """Escape ``</script`` inside sae-dashboard's own script (its code and JSON data).

    sae-dashboard 0.8.0 puts that script right after the plotly tag and ends the
    page with its closing tag, so the element spans from the first ``<script>``
    after the plotly tag to the last ``</script>``, whatever the data contains.
    """
    start = html.find("<script>", html.index(PLOTLY_CDN_TAG) + len(PLOTLY_CDN_TAG))
    end = html.rfind("</script>")
    if start < 0 or end < start:
        raise OfflineAssetError("the sae-dashboard HTML has no inline script after the plotly tag; check the sae-dashboard version")
    body_start = start + len("<script>")
    return html[:body_start] + escape_inline_script(html[body_start:end]) + html[end:]


def find_remote_references(html: str) -> list[str]:
    """Return the tags in `html` that load a script, stylesheet, image or frame over the network."""
    found = []
    for match in _REMOTE_REFERENCE.finditer(html):
        tag_end = html.find(">", match.start())
        found.append(html[match.start() : tag_end + 1][:200])
    return found
