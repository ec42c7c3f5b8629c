"""Check that ``dvc plots show`` makes a page whose every chart renders with no network.

In a project with results (a finished ``dvc repro``), this runs ``dvc plots show`` twice into
a temporary folder: with the project's page (``.dvc/config`` ``[plots] html_template``, the
offline template of ``benchmarks/vendor_vega.py``) and, for comparison, with DVC's own page.
Each page is opened in headless Chromium with networking blocked (every host name fails to
resolve, every request goes to a dead proxy), which then:

* dumps the DOM after the page's scripts ran: every Vega chart DVC declared must hold a
  ``<canvas>`` or ``<svg>`` (vega-embed adds it only when the chart rendered);
* takes a screenshot: the share of non-white pixels must not be nearly nil.

It also checks that the HTML names no http(s) script, stylesheet or image, and that every
image plot it shows is a local file. Prints one JSON report; exit 1 when the project's
page fails. Usage: ``python benchmarks/check_plots_offline.py [--project DIR]
[--screenshots DIR] [--out report.json]`` (needs ``/usr/bin/chromium``: Debian's
``apt-get install chromium``). It writes nothing in the project but DVC's own ``.dvc/tmp``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/check_plots_offline.py` without the package installed
    sys.path.insert(0, str(REPO))

from benchmarks.jsonout import emit  # noqa: E402

#: a tag that would load something from the network: script/img/iframe src, link href, CSS @import/url()
REMOTE = re.compile(r"<(?:script|img|iframe|link|source)\b[^>]*\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//"
                    r"|@import\s+(?:url\()?[\"']?(?:https?:)?//|url\(\s*[\"']?(?:https?:)?//", re.IGNORECASE)
CHART = re.compile(r"""vegaEmbed\('#([^']+)'""")
WIDTH, HEIGHT = 1400, 12000
#: below this share of non-white pixels a screenshot counts as blank
MIN_INK = 0.005


def remote_references(html: str) -> list[str]:
    """Every tag or CSS rule of ``html`` that would fetch from the network."""
    return [m.group(0)[:120] for m in REMOTE.finditer(html)]


def chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess:
    """Headless Chromium with networking blocked."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", f"--user-data-dir={user_dir}", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--proxy-server=http://127.0.0.1:9", "--virtual-time-budget=15000", "--hide-scrollbars", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)


def rendered_charts(dom: str, charts: list[str]) -> dict[str, bool]:
    """For each chart id, whether its div holds a canvas or svg in the DOM after the scripts ran."""
    starts = sorted((m.start(), m.group(1)) for m in re.finditer(r'<div id\s*=\s*"([^"]+)"', dom))
    done = {}
    for i, (pos, div) in enumerate(starts):
        if div in charts:
            end = starts[i + 1][0] if i + 1 < len(starts) else len(dom)
            done[div] = bool(re.search(r"<(canvas|svg)\b", dom[pos:end]))
    return {c: done.get(c, False) for c in charts}


def ink(png: Path) -> float:
    """Share of the screenshot's pixels that are not near-white."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(png).convert("L"))
    return float((a < 240).mean())


def check_page(project: Path, out: Path, template: Path | None, shot: Path) -> dict[str, Any]:
    """``dvc plots show`` into ``out`` (with ``template``, else the project's config) and check the page."""
    cmd = [sys.executable, "-m", "dvc", "plots", "show", "-o", str(out)]
    if template is not None:
        cmd += ["--html-template", str(template)]
    subprocess.run(cmd, cwd=project, check=True, capture_output=True, text=True)
    page = out / "index.html"
    html = page.read_text(encoding="utf-8")
    charts = CHART.findall(html)
    body = html.split("<body>", 1)[-1]   # the head holds the inlined libraries, whose code has <img> strings
    images = [out / src for src in re.findall(r'<img src="([^"]+)"', body)]
    with tempfile.TemporaryDirectory() as user_dir:
        dom = chromium("--dump-dom", page.as_uri(), user_dir=Path(user_dir)).stdout
    with tempfile.TemporaryDirectory() as user_dir:
        chromium(f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", page.as_uri(), user_dir=Path(user_dir))
    rendered = rendered_charts(dom, charts)
    report = {
        "page_kB": round(page.stat().st_size / 1e3),
        "remote_references": remote_references(html),
        "vega_charts": len(charts),
        "vega_charts_rendered": sum(rendered.values()),
        "not_rendered": [c for c, ok in rendered.items() if not ok],
        "image_plots": len(images),
        "image_plots_missing": [str(p) for p in images if not p.is_file() or p.stat().st_size == 0],
        "screenshot": str(shot),
        "screenshot_ink": round(ink(shot), 4) if shot.is_file() else None,
    }
    report["ok"] = (not report["remote_references"] and report["vega_charts"] > 0 and not report["not_rendered"]
                    and not report["image_plots_missing"] and (report["screenshot_ink"] or 0) >= MIN_INK)
    return report


def main(argv: list[str] | None = None) -> int:
    """Check the project's page and DVC's own; exit 1 when the project's page does not render offline."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, default=REPO, help="a DVC project with results (default: this repo)")
    ap.add_argument("--screenshots", type=Path, default=None,
                    help="folder for the two screenshots (default: a temporary folder, removed)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    args = ap.parse_args(argv)
    from dvc_render.html import PAGE_HTML

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shots = args.screenshots or tmp
        shots.mkdir(parents=True, exist_ok=True)
        (tmp / "dvc_page.html").write_text(PAGE_HTML)
        report = {"project": str(args.project.resolve()),
                  "offline_template": check_page(args.project, tmp / "offline", None, shots / "plots_offline.png"),
                  "dvc_default_page": check_page(args.project, tmp / "default", tmp / "dvc_page.html",
                                                 shots / "plots_dvc_default.png")}
        emit(report, args.out)
    return 0 if report["offline_template"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
