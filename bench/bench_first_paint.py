"""First contact: seconds from opening the link on a freshly started server to something meaningful.

    python -m bench.bench_first_paint [PAGE]

PAGE (e.g. ``compare``) opens that sub-page's link instead of the home page.

Starts ``streamlit run app.py`` offline with no settings (so the app must open on the demo
model), opens it in headless Chromium and records when the page links appear, when the
heatmap appears, and whether Streamlit's own file-name page list was ever drawn.
Target (issue 9): something meaningful on screen within 3 s.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.pop("LENS_DEFAULT_MODEL", None)

from bench.browser import chromium, streamlit_server  # noqa: E402


def main() -> None:
    with streamlit_server({}) as url, chromium() as browser:
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        start = time.perf_counter()
        tab.goto(f"{url}/{sys.argv[1] if len(sys.argv) > 1 else ''}")
        legacy_list, links_at, heatmap_at = False, None, None
        while heatmap_at is None and time.perf_counter() - start < 120:
            now = time.perf_counter() - start
            legacy_list |= tab.locator("[data-testid=stSidebarNav]").count() > 0
            if links_at is None and tab.locator("[data-testid=stPageLink-NavLink]").count() >= 6:
                links_at = now
            if tab.locator("[data-testid=stVegaLiteChart] g.mark-rect path").count() > 0:  # the page's first chart
                heatmap_at = now
            tab.wait_for_timeout(50)
        note = tab.get_by_text("couldn't be downloaded").count() > 0
    print(f"page links and a 'starting' line after {links_at:.2f} s (target < 3 s)")
    print(f"demo heatmap after {heatmap_at:.2f} s; offline note shown: {note}; legacy page list drawn: {legacy_list}")


if __name__ == "__main__":
    main()
