"""report.html opened in a real browser (headless Debian Chromium): the headline table has a row per attacker,
every figure decodes, nothing is logged to the console; and a screenshot is taken."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make setup installs "
                                                          "it; .ci/run requires it)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking"]

#: runs before anything else on the page: records console errors and failed loads, then, once the page has
#: loaded, writes what it sees into the DOM (read back with --dump-dom)
PROBE = """<script>
window.__errors = [];
const _err = console.error.bind(console);
console.error = (...a) => { window.__errors.push(a.map(String).join(' ')); _err(...a); };
window.addEventListener('error', e => window.__errors.push('error: ' + (e.message || (e.target && e.target.src
  || '').slice(0, 40))), true);
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const out = {
    headline_rows: document.querySelectorAll('#headline tbody tr').length,
    headline_first_cells: [...document.querySelectorAll('#headline tbody tr td:first-child')].map(td => td.textContent),
    images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    widths: imgs.map(i => i.naturalWidth),
    errors: window.__errors,
  };
  const pre = document.createElement('pre');
  pre.id = 'probe-result';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_report_renders_in_chromium(audited, tmp_path):
    report, out = audited
    page = (out / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    run = _chromium("--dump-dom", "--virtual-time-budget=10000", probed.as_uri())
    m = re.search(r'<pre id="probe-result">(.*?)</pre>', run.stdout, re.S)
    assert m, f"no probe result; chromium said:\n{run.stderr[-2000:]}"
    seen = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert seen["headline_rows"] == len(report["attacks"]) == 2
    assert seen["headline_first_cells"] == [s["attack"] for s in report["attacks"]]
    assert seen["images"] == 2 and seen["decoded"] == 2, seen
    assert all(w > 400 for w in seen["widths"]), seen
    assert seen["errors"] == [], seen
    assert "Uncaught" not in run.stderr


def test_screenshot(audited, tmp_path):
    _, out = audited
    shot = tmp_path / "report.png"
    run = _chromium(f"--screenshot={shot}", "--window-size=1200,1800", (out / "report.html").as_uri())
    assert shot.exists(), run.stderr[-2000:]
    from PIL import Image

    im = Image.open(shot)
    assert im.size == (1200, 1800)
    colors = im.convert("L").resize((60, 90)).getcolors(maxcolors=10_000)
    assert colors is not None and len(colors) > 20  # not a blank page
