"""Inlining d3 and plotly into sae-dashboard's HTML, and the histogram tick repair."""

from __future__ import annotations

import pytest

from gsx.interp.dashboard import nice_ticks
from gsx.interp.offline import (
    D3_CDN_TAG,
    PLOTLY_CDN_TAG,
    OfflineAssetError,
    d3_js_path,
    escape_inline_script,
    find_remote_references,
    inline_dashboard_html,
    plotly_js_path,
)


def _dashboard_like(data: str = '{"tok": "a"}') -> str:
    """Return HTML laid out as sae-dashboard 0.8.0 writes it (style, CDN tags, then its own script)."""
    return (
        "<div id='dropdown-container'></div>\n<div class='grid-container'></div>\n"
        "<style>\n.token { color: red; }\n</style>\n\n"
        f"{D3_CDN_TAG}\n{PLOTLY_CDN_TAG}\n\n"
        f"<script>\nfunction defineData() {{ return {data}; }}\n</script>\n"
    )


def test_vendored_d3_is_6_7_0():
    path = d3_js_path()
    assert path.read_text(encoding="utf-8").startswith("// https://d3js.org v6.7.0")
    assert (path.parent / "d3.LICENSE").is_file()


def test_plotly_js_ships_with_plotly():
    assert plotly_js_path().stat().st_size > 1_000_000


def test_inline_replaces_cdn_tags():
    page = inline_dashboard_html(_dashboard_like())
    assert "d3js.org/d3.v6" not in page
    assert "cdn.plot.ly/plotly-latest" not in page
    assert "https://d3js.org v6.7.0" in page
    assert "plotly.js v" in page
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in page
    assert page.index("d3js.org v6.7.0") < page.index("function defineData")


def test_inline_escapes_script_end_in_data():
    page = inline_dashboard_html(_dashboard_like('{"tok": "</script><b>x"}'))
    # Exactly three script elements: d3, plotly and sae-dashboard's own.
    assert page.count("</script>") == 3
    assert '"<\\/script><b>x"' in page


def test_inline_rejects_missing_tag():
    with pytest.raises(OfflineAssetError, match="expected one"):
        inline_dashboard_html(_dashboard_like().replace(D3_CDN_TAG, ""))


def test_inline_rejects_other_remote_scripts():
    html = _dashboard_like().replace("<style>", '<script src="https://example.com/x.js"></script>\n<style>')
    with pytest.raises(OfflineAssetError, match="remote files"):
        inline_dashboard_html(html)


def test_escape_inline_script_keeps_other_text():
    assert escape_inline_script("a </SCRIPT> b </div>") == "a <\\/SCRIPT> b </div>"


def test_find_remote_references():
    html = '<script src="//cdn.x/y.js"></script><link href="https://a/b.css"><img src="local.png"><a href="https://ok">'
    found = find_remote_references(html)
    assert len(found) == 2
    assert found[0].startswith("<script")
    assert found[1].startswith("<link")


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (-0.23, 0.19, [-0.2, -0.1, 0.0, 0.1]),
        (0.0, 9705.0, [0.0, 2000.0, 4000.0, 6000.0, 8000.0]),
        (-0.85, 0.47, [-0.8, -0.6, -0.4, -0.2, 0.0, 0.2, 0.4]),
        (1.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (-1e-4, 3e-5, [-1e-4, -5e-5, 0.0]),
    ],
)
def test_nice_ticks(low, high, expected):
    assert nice_ticks(low, high) == pytest.approx(expected)


def test_nice_ticks_degenerate_range():
    assert nice_ticks(0.0, 0.0) == [0.0]
    assert nice_ticks(float("nan"), 1.0) == [0.0]
