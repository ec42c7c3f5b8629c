"""What DVC itself costs on large stage outputs: hashing and caching per GB, by ``cache.type``.

The per-video stages write tens of GB at dataset scale (CAS(ME)^2: ~31 GB of crops and
~50 GB of float16 flow, which does not compress). Under ``dvc repro`` DVC hashes every
output file after the stage and stores it in its cache. This makes a throwaway DVC
project in a temporary folder with one stage like ours (``persist: true``, files written
under a temporary name and renamed, incompressible bytes) and times, for each cache type:

* ``first``: ``dvc repro`` of the stage from nothing, minus the time the stage's own
  command takes alone (DVC's part: hashing, caching, linking);
* ``noop_rerun``: ``dvc repro`` after a dependency changed but the stage finds every
  file complete and rewrites none (our stages' resume path); with links, DVC first
  "unprotects" a persisted output, which copies every linked file;
* the disk used by workspace plus cache.

Prints one JSON object. Usage: ``python benchmarks/bench_dvc_cache.py [--gb 2] [--files 40]``
(needs about 2 x ``--gb`` free disk in the temporary folder, ``--dir`` to put it elsewhere).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/bench_dvc_cache.py` without the package installed
    sys.path.insert(0, str(REPO))

from benchmarks.jsonout import emit  # noqa: E402

WRITER = textwrap.dedent("""\
    import os, sys
    import numpy as np
    n, size = int(sys.argv[1]), int(sys.argv[2])
    os.makedirs("out", exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = f"out/v{i:04d}.h5"
        if os.path.exists(path):   # complete from an earlier run: skipped, as the stages do
            continue
        rng.integers(0, 2**63, size // 8, dtype=np.int64).tofile(path + ".partial")
        os.replace(path + ".partial", path)
    """)


def _run(cmd: list[str], cwd: Path) -> float:
    os.sync()  # earlier writes' write-back does not land in this timing
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    return time.perf_counter() - t0


def _disk_mb(path: Path) -> float:
    seen, total = set(), 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return round(total / 2**20, 1)


def measure(base: Path, cache_type: str, files: int, size: int) -> dict:
    """Time a first ``dvc repro`` and a no-op rerun of one persisted stage under ``cache_type``."""
    proj = Path(tempfile.mkdtemp(prefix=cache_type.replace(",", "_") + "_", dir=base))
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    _run(dvc + ["init", "-q"], proj)
    _run(dvc + ["config", "cache.type", cache_type], proj)
    (proj / "write.py").write_text(WRITER)
    (proj / "dep.txt").write_text("1\n")
    (proj / "dvc.yaml").write_text(textwrap.dedent(f"""\
        stages:
          write:
            cmd: {sys.executable} write.py {files} {size}
            deps: [write.py, dep.txt]
            outs:
              - out:
                  persist: true
        """))
    alone = _run([sys.executable, "write.py", str(files), str(size)], proj)
    shutil.rmtree(proj / "out")
    first = _run(dvc + ["repro", "-q"], proj)
    links = os.stat(proj / "out" / "v0000.h5").st_nlink
    disk = _disk_mb(proj)
    (proj / "dep.txt").write_text("2\n")
    noop = _run(dvc + ["repro", "-q"], proj)
    gb = files * size / 1e9
    rec = {"cache_type": cache_type, "gb": round(gb, 2), "stage_alone_s": round(alone, 2),
           "first_repro_s": round(first, 2), "dvc_part_first_s": round(first - alone, 2),
           "dvc_s_per_gb_first": round((first - alone) / gb, 2), "noop_rerun_s": round(noop, 2),
           "dvc_s_per_gb_noop_rerun": round(noop / gb, 2), "workspace_links": links,
           "disk_mb_workspace_plus_cache": disk}
    shutil.rmtree(proj)
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.0, help="size of the stage output")
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--types", nargs="+", default=["reflink,copy", "hardlink,copy", "reflink,copy", "hardlink,copy"],
                    help="cache.type values (DVC's default first)")
    ap.add_argument("--dir", type=Path, default=None, help="where the throwaway projects go")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    size = int(args.gb * 1e9 / args.files) // 8 * 8
    import dvc

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        records = [measure(Path(tmp), t, args.files, size) for t in args.types]
    emit({"benchmark": "dvc_cache", "dvc": dvc.__version__, "cores": os.cpu_count(), "files": args.files,
          "figures": records}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
