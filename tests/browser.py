"""Headless Chromium for the tests that check pages as a person would see them: Debian's `chromium`,
driven through its command line (`--dump-dom`, `--screenshot`), a fresh profile under the test's tmp_path.

    from browser import chromium, evaluate, render_app, assert_not_blank
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

from PIL import Image

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(tmp_path, *args) -> str:
    """Run chromium with `args` (after CHROMIUM_FLAGS and a profile in tmp_path); its stdout."""
    exe = shutil.which("chromium")
    assert exe, ("chromium not found: these tests need Debian's chromium package "
                 "(`make test` installs it: apt-get install --no-install-recommends chromium)")
    # The timeout only keeps a hung browser from hanging the suite; nothing asserts on time.
    r = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={Path(tmp_path) / 'chromium-profile'}", *args],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"chromium exited {r.returncode}: {r.stderr[-3000:]}"
    return r.stdout


def evaluate(tmp_path, page: str, js: str, size: tuple[int, int] = (1300, 1000)):
    """The value of the JavaScript expression `js` (JSON-able) in the HTML `page` as chromium lays it out in
    a `size` window. The command line has no eval: a copy of the page gets a script that writes the value
    into an attribute of <html> (no layout change), and `--dump-dom` brings it back."""
    probe = ("<script>document.documentElement.setAttribute('data-evaluated', "
             f"JSON.stringify(({js})))</script>")
    copy = Path(tmp_path) / "evaluate.html"
    copy.write_text(page.replace("</body>", probe + "</body>") if "</body>" in page else page + probe,
                    encoding="utf-8")
    dom = chromium(tmp_path, f"--window-size={size[0]},{size[1]}", "--dump-dom", copy.as_uri())
    found = re.search(r'data-evaluated="([^"]*)"', dom)
    assert found, f"the script wrote nothing: {dom[:2000]}"
    return json.loads(html.unescape(found.group(1)))


def render_app(tmp_path, url: str, png: Path, size: tuple[int, int] = (1400, 1000), budget_ms: int = 15000) -> str:
    """A single-page app (e.g. the MLflow UI) once it has fetched and rendered: its DOM, and a screenshot
    in `png`. Virtual time (which stands still while a fetch is pending) lets the app's requests and
    timers run before the page is dumped; without it chromium dumps the empty shell the app starts from.
    The DOM is also saved next to `png`, for whoever reads a failure."""
    dom = chromium(tmp_path, f"--virtual-time-budget={budget_ms}", "--run-all-compositor-stages-before-draw",
                   f"--window-size={size[0]},{size[1]}", f"--screenshot={png}", "--dump-dom", url)
    Path(png).with_suffix(".html").write_text(dom)
    return dom


def assert_not_blank(png: Path, size: tuple[int, int], min_colours: int = 500, min_drawn: float = 0.1) -> None:
    """The screenshot shows a page: many colours, and more than `min_drawn` of it differs from the background
    (an app that has not rendered yet: ~5 colours, ~5 % drawn)."""
    img = Image.open(png).convert("RGB")
    assert img.size == size, f"screenshot {png}: {img.size}"
    colours = img.getcolors(maxcolors=1 << 24)
    background = max(colours)[0]
    drawn = 1 - background / (size[0] * size[1])
    assert len(colours) > min_colours and drawn > min_drawn, \
        f"screenshot {png} looks blank: {len(colours)} colours, {drawn:.0%} differs from the background"
