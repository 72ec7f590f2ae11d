"""A feature page as a small PNG for the docs: headless Chromium (Debian's ``chromium``) via Playwright.

    python tools/feature_pages_screenshot.py features.html 897 docs/feature-pages.png

Opens ``features.html#f{index}`` at 1280×860, scrolls the page to its top (list and feature side by
side), screenshots it and stores it with a 64-colour palette (the page is flat colours: a few
hundred KB become well under 200 KB). Needs ``chromium`` (``apt-get install chromium``) and the
test extras (``pip install -e ".[test]"``: Playwright, Pillow comes with matplotlib).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html", help="the pages (interp features … --html FILE)")
    p.add_argument("feature", type=int, help="the feature to open")
    p.add_argument("png", help="where to write the screenshot")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=860)
    args = p.parse_args(argv)
    from PIL import Image
    from playwright.sync_api import sync_playwright

    chromium = next((c for c in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if c), None)
    if chromium is None:
        print("no chromium: apt-get install chromium", file=sys.stderr)
        return 2
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(Path(args.html).resolve().as_uri() + f"#f{args.feature}")
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        page.evaluate("window.scrollTo(0, 0)")
        png = page.screenshot()
        browser.close()
    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    img.save(args.png, optimize=True)
    print(f"wrote {args.png} ({Path(args.png).stat().st_size / 1e3:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
