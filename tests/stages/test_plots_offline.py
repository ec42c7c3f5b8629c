"""`dvc plots show` makes a page that loads nothing from the network (issue #25 §3).

DVC's own page takes vega, vega-lite and vega-embed from a CDN; ``.dvc/config`` points it at
``configs/plots/offline.html``, which carries them inline. Real evaluate outputs on small
hand-made tables, in a copy of the project, through the real `dvc plots show`.
(``benchmarks/check_plots_offline.py`` opens the page in headless Chromium with no network.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.core.sandbox import make_project
from pipeline.evaluate import main as evaluate

from stages.test_evaluate import _make_dataset

REPO = Path(__file__).resolve().parents[2]
#: an attribute or CSS rule that fetches from the network
REMOTE = re.compile(r"\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//|url\(\s*[\"']?(?:https?:)?//", re.IGNORECASE)


def test_plots_page_needs_no_network(tmp_path: Path, monkeypatch) -> None:
    work = tmp_path / "evaluate"
    work.mkdir()
    monkeypatch.chdir(work)
    _make_dataset(work)
    assert evaluate(["--dataset", "toy"]) == 0
    project = make_project(tmp_path / "project", "toy", {"layout": "generic", "root": "x"})
    for name in ("data", "metrics"):
        shutil.copytree(work / name, project / name)

    proc = subprocess.run([sys.executable, "-m", "dvc", "plots", "show"], cwd=project, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (project / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    body = html.split("<body>", 1)[1]
    # every plot dvc.yaml declares for the dataset is on the page: the four tables as Vega charts ...
    charts = re.findall(r"vegaEmbed\('#([^']+)'", body)
    assert sorted(charts) == sorted(f"data_toy_evaluate_{n}_csv" for n in
                                    ("f1_vs_threshold", "per_subject", "training_curves", "errors_by_length"))
    # ... the pictures as local files
    images = re.findall(r'<img src="([^"]+)"', body)
    assert len(images) >= 5 and all((project / "dvc_plots" / src).is_file() for src in images)
    # and nothing is fetched: no remote script, stylesheet or image, the libraries are in the page
    assert REMOTE.findall(html) == []
    assert "function vegaEmbed" in html or "vegaEmbed=" in html
    # the real repository ignores DVC's page: `git status` stays clean after `dvc plots show`
    assert subprocess.run(["git", "check-ignore", "-q", "dvc_plots/index.html"], cwd=REPO,
                          check=False).returncode == 0
