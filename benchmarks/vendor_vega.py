"""Rebuild ``configs/plots/offline.html``: DVC's plots page with Vega inlined, so it needs no network.

DVC's page (``dvc plots show``, ``dvc plots diff``) loads vega, vega-lite and vega-embed
from a CDN in ``<script src="https://...">`` tags; offline, every interactive chart is
missing. ``.dvc/config`` points DVC at this template instead (``[plots] html_template``): it
has no ``{scripts}`` placeholder, so DVC's CDN tags are dropped, and carries the three
libraries' minified builds inline, at the versions this DVC's renderer names (read from
``dvc_render.vega.VegaRenderer.SCRIPTS``), with their licenses. The page DVC writes is then
one self-contained file.

Run this only to move to other versions (after a ``dvc-render`` upgrade): it takes the npm
registry's tarballs with ``npm pack`` (needs npm and the registry), checks each against the
integrity the registry publishes, and rewrites the template. Usage:
``python benchmarks/vendor_vega.py [--out configs/plots/offline.html]``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "configs" / "plots" / "offline.html"
#: package -> its minified browser build inside the npm tarball
BUILDS = {"vega": "package/build/vega.min.js", "vega-lite": "package/build/vega-lite.min.js",
          "vega-embed": "package/build/vega-embed.min.js"}

PAGE = """<!DOCTYPE html>
<!-- m2es: DVC's plots page for offline use (.dvc/config [plots] html_template).
     Built by benchmarks/vendor_vega.py: {versions}, inlined from the npm registry's tarballs
     (sha256 of each build: {hashes}). No placeholder for DVC's scripts: its CDN tags are left out.
{licenses}
-->
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{inline}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def dvc_versions() -> dict[str, str]:
    """The version of each library that the installed DVC renderer loads from its CDN."""
    from dvc_render.vega import VegaRenderer

    found = dict(re.findall(r"npm/([a-z-]+)@([0-9.]+)", VegaRenderer.SCRIPTS))
    if set(found) != set(BUILDS):
        raise SystemExit(f"dvc_render.vega.VegaRenderer.SCRIPTS names {sorted(found)}, expected {sorted(BUILDS)}")
    return found


def fetch(package: str, version: str, work: Path) -> tuple[str, str]:
    """``npm pack`` one package, check its sha512 integrity; return (minified build, LICENSE text)."""
    out = subprocess.run(["npm", "pack", "--json", f"{package}@{version}"], cwd=work, check=True,
                         capture_output=True, text=True).stdout
    info = json.loads(out)[0]
    tgz = work / info["filename"]
    algo, digest = info["integrity"].split("-", 1)
    if algo != "sha512" or hashlib.sha512(tgz.read_bytes()).digest() != base64.b64decode(digest):
        raise SystemExit(f"{tgz.name}: does not match the registry's integrity {info['integrity']}")
    with tarfile.open(tgz) as tar:
        build = tar.extractfile(BUILDS[package]).read().decode()
        licence = tar.extractfile("package/LICENSE").read().decode()
    return build, licence


def render(libs: dict[str, tuple[str, str, str]]) -> str:
    """The template from ``{package: (version, build, licence)}``."""
    for package, (_, build, _) in libs.items():
        if re.search(r"</script|<!--", build, re.IGNORECASE):
            raise SystemExit(f"{package}'s build contains '</script' or '<!--': it cannot be inlined as is")
    versions = ", ".join(f"{p}@{v}" for p, (v, _, _) in libs.items())
    hashes = ", ".join(f"{p} {hashlib.sha256(b.encode()).hexdigest()}" for p, (_, b, _) in libs.items())
    licenses = "\n".join(f"{p}@{v} license:\n{lic.replace('--', '- -').strip()}\n" for p, (v, _, lic) in libs.items())
    inline = "\n".join(f'    <script type="text/javascript">/* {p}@{v} */\n{b.strip()}\n    </script>'
                       for p, (v, b, _) in libs.items())
    return PAGE.format(versions=versions, hashes=hashes, licenses=licenses, inline=inline)


def main(argv: list[str] | None = None) -> int:
    """Fetch the three libraries and write the template."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"template to write (default: {OUT.relative_to(REPO)})")
    args = ap.parse_args(argv)
    libs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for package, version in dvc_versions().items():
            libs[package] = (version, *fetch(package, version, Path(tmp)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render({p: libs[p] for p in BUILDS}), encoding="utf-8")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB): "
          + ", ".join(f"{p}@{v}" for p, (v, _, _) in libs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
