"""Open a report page in headless Chromium, check every picture and chart shows, screenshot it.

    python bench/report_screenshot.py RUN/report.html shot.png [--width 1280] [--max-side 0]

First Chromium loads a probe copy of the page (in a temporary folder, its links resolved
against the page's folder by a ``<base>`` tag) whose script lists every ``<img>`` that did
not decode and measures the page's height; then it screenshots the page itself at that
height, so the PNG holds the whole page. Exits 1 naming the broken pictures, 2 without
Chromium. ``--max-side`` shrinks the PNG (for the README's picture).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
         "--allow-file-access-from-files", "--virtual-time-budget=10000")
PROBE = """<script>
addEventListener("load", () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0);
  const out = document.createElement("pre");
  out.id = "igcam-probe";
  out.textContent = JSON.stringify({images: document.images.length,
    broken: broken.map(i => i.getAttribute("src")),
    height: document.documentElement.scrollHeight});
  document.body.appendChild(out);
});
</script>"""


def browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def probe(chromium: str, page: Path, width: int) -> dict:
    """Load a copy of ``page`` with :data:`PROBE` added, ``width`` pixels wide; its findings."""
    html = page.read_text()
    base = f'<base href="{page.parent.resolve().as_uri()}/">'
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "probe.html"
        copy.write_text(html.replace("<head>", "<head>" + base, 1)
                        .replace("</body>", PROBE + "</body>", 1))
        dom = subprocess.run([chromium, *FLAGS, f"--window-size={width},800", "--dump-dom",
                              copy.as_uri()],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    found = re.search(r'<pre id="igcam-probe">(.*?)</pre>', dom, re.S)
    if found is None:
        raise SystemExit("the probe script did not run: is JavaScript disabled?")
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def screenshot(chromium: str, page: Path, png: Path, width: int, height: int) -> None:
    subprocess.run([chromium, *FLAGS, f"--screenshot={png.resolve()}",
                    f"--window-size={width},{height}", page.resolve().as_uri()],
                   capture_output=True, timeout=120, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--max-side", type=int, default=0,
                        help="shrink the screenshot so that its longer side is at most this")
    args = parser.parse_args()
    chromium = browser()
    if chromium is None:
        print("no Chromium found (apt-get install chromium)", file=sys.stderr)
        return 2
    found = probe(chromium, args.page, args.width)
    if found["broken"]:
        print(f"{len(found['broken'])} of {found['images']} pictures did not show: "
              + ", ".join(found["broken"]), file=sys.stderr)
        return 1
    screenshot(chromium, args.page, args.png, args.width, max(600, int(found["height"])))
    if args.max_side:
        with Image.open(args.png) as image:
            image.thumbnail((args.max_side, args.max_side), Image.Resampling.LANCZOS)
            shrunk = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
        shrunk.save(args.png, optimize=True)
    print(f"{found['images']} pictures shown, page {found['height']} px high -> {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
