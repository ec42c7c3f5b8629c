"""What DVC hashes and caches of a finished project's per-video outputs, and what ``cache: false`` changes.

Runs on a *copy* of a project where ``dvc repro`` has finished (it edits that copy's dvc.yaml,
moves its cache aside and commits to its git): ``cp -a <project> /tmp/x`` first. Times, with the
outputs as they are:

* ``dvc status`` and a no-op ``dvc repro`` (everything up to date) with DVC's state database warm
  and cold (removed: every dependency and output is hashed again, as on a new machine or after a
  copy);
* ``dvc commit -f`` of the per-video stages (crop, flow, features) with their objects absent from
  the cache: what DVC adds after such a stage wrote new files (hashing + copying into the cache);

then sets ``cache: false`` on those stages' outputs (``persist: true`` kept) and times the same,
and checks the behaviour that must not be lost: a no-op ``dvc repro`` runs nothing and leaves
dvc.lock and ``git status`` unchanged; a removed flow file makes ``dvc status`` report the stage
and ``dvc repro`` recompute that one video only; and what a fresh ``git clone`` + ``dvc checkout``
(the cache shared) restores. Prints one JSON object.

Usage: ``python benchmarks/bench_dvc_outs.py --project /tmp/x --out benchmarks/results/cpu_dvc_outs.json``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.jsonout import emit

#: the stages whose per-video outputs are measured
PER_VIDEO = ("crop", "flow", "features")
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}


def run(cmd: list[str], cwd: Path, check: bool = True) -> tuple[float, str, int]:
    """(seconds, stdout + stderr, exit code) of ``cmd`` in ``cwd``; page cache flushed first."""
    os.sync()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, env=ENV)
    took = time.perf_counter() - t0
    if check and res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stdout[-2000:]}{res.stderr[-2000:]}")
    return round(took, 2), res.stdout + res.stderr, res.returncode


def du_gb(path: Path) -> float:
    """Bytes under ``path`` in GB (10^9)."""
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0
    return round(total / 1e9, 3)


def md5(path: Path) -> str:
    """The MD5 of one file (to tell whether dvc.lock changed)."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def cold(proj: Path) -> None:
    """Drop DVC's state database (hashes by inode and mtime, under the repository's site cache folder in
    DVC 3, e.g. /var/tmp/dvc/repo/<id>/hashes) and .dvc/tmp: the next command hashes everything."""
    from dvc.repo import Repo

    with Repo(str(proj)) as repo:
        site = Path(repo.site_cache_dir)
    shutil.rmtree(site / "hashes", ignore_errors=True)
    shutil.rmtree(proj / ".dvc" / "tmp", ignore_errors=True)


def datasets(proj: Path) -> list[str]:
    """The datasets with per-video outputs in the project."""
    return sorted(p.name for p in (proj / "data").iterdir() if (p / "faces").is_dir())


def targets(proj: Path) -> list[str]:
    """``<stage>@<dataset>`` of every per-video stage."""
    return [f"{s}@{d}" for d in datasets(proj) for s in PER_VIDEO]


def noop_repro(proj: Path, label: str, out: dict[str, Any]) -> None:
    """Time a no-op ``dvc repro`` (warm, then cold) and check that it ran nothing and changed nothing."""
    lock = md5(proj / "dvc.lock")
    for state in ("warm", "cold"):
        if state == "cold":
            cold(proj)
        secs, text, _ = run(["dvc", "repro"], proj)
        out[f"{label}_repro_noop_{state}_s"] = secs
        out[f"{label}_repro_noop_{state}_ran"] = sorted(set(re.findall(r"Running stage '([^']+)'", text)))
    out[f"{label}_lock_unchanged"] = md5(proj / "dvc.lock") == lock
    out[f"{label}_git_status"] = run(["git", "status", "--short"], proj)[1].split("\n")[:10]


def status_times(proj: Path, label: str, out: dict[str, Any]) -> None:
    """``dvc status`` cold then warm, and ``dvc data status`` warm."""
    cold(proj)
    out[f"{label}_status_cold_s"], text, _ = run(["dvc", "status"], proj)
    out[f"{label}_status_cold_says"] = text.strip().split("\n")[:6]
    out[f"{label}_status_warm_s"] = run(["dvc", "status"], proj)[0]
    out[f"{label}_data_status_warm_s"] = run(["dvc", "data", "status"], proj, check=False)[0]


def set_cache_false(proj: Path) -> None:
    """Add ``cache: false`` under every ``persist: true`` output of dvc.yaml (crop, flow, features)."""
    path = proj / "dvc.yaml"
    text = path.read_text()
    new = re.sub(r"^([ \t]+)persist: true[ \t]*$", r"\1persist: true\n\1cache: false", text,
                 flags=re.MULTILINE)
    if new == text:
        raise SystemExit(f"{path}: no `persist: true` outputs to change")
    path.write_text(new)


def focus(proj: Path, repeats: int) -> dict[str, Any]:
    """Per-GB and per-file costs, robust to a busy machine: ``dvc commit -f`` of the flow stages, cold, with the
    objects absent from the cache (hash + copy into it) and with ``cache: false`` (hash only), alternated
    ``repeats`` times; then a warm ``dvc status`` of each stage of the last dataset, to separate what a
    stage's file count costs (the raw frames) from what its gigabytes do."""
    out: dict[str, Any] = {}
    flows = [f"flow@{d}" for d in datasets(proj)]
    out["flow_gb"] = round(sum(du_gb(proj / "data" / d / "flow") for d in datasets(proj)), 3)
    path = proj / "dvc.yaml"
    cached_text = path.read_text()
    set_cache_false(proj)
    nocache_text = path.read_text()
    cache = proj / ".dvc" / "cache"
    aside = proj.parent / (proj.name + "_cache_aside")
    times: dict[str, list[float]] = {"cached": [], "nocache": []}
    try:
        for _ in range(repeats):
            for variant in ("cached", "nocache"):
                path.write_text(cached_text if variant == "cached" else nocache_text)
                if variant == "cached":
                    shutil.rmtree(aside, ignore_errors=True)
                    cache.rename(aside)
                try:
                    cold(proj)
                    times[variant].append(run(["dvc", "commit", "-f", *flows], proj)[0])
                finally:
                    if variant == "cached":
                        shutil.rmtree(cache, ignore_errors=True)
                        aside.rename(cache)
    finally:
        path.write_text(cached_text)
    out["commit_flow_cold_s"] = times
    ds = datasets(proj)[-1]
    run(["dvc", "status"], proj)        # warm the state database
    out["status_warm_by_stage_s"] = {}
    for stage in ("ingest", "resample", "crop", "flow", "features", "train", "evaluate"):
        out["status_warm_by_stage_s"][f"{stage}@{ds}"] = run(["dvc", "status", f"{stage}@{ds}"], proj)[0]
    out["files"] = {f"raw/{ds}": sum(1 for f in (proj / "data" / "raw" / ds).rglob("*") if f.is_file()),
                    f"{ds}/flow": sum(1 for _ in (proj / "data" / ds / "flow").glob("*.h5"))}
    out["status_warm_noop_s"] = run(["dvc", "status", "--help"], proj)[0]   # DVC's start-up alone
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure, print and optionally write the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, required=True, help="a throwaway copy of a finished project")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--skip-rerun", action="store_true", help="skip removing and recomputing one flow file")
    ap.add_argument("--focus", type=int, default=0, metavar="REPEATS",
                    help="only the alternated per-GB and per-stage timings (focus()), REPEATS times")
    args = ap.parse_args(argv)
    proj = args.project.resolve()
    if proj == REPO:
        raise SystemExit("--project must be a throwaway copy, not the repository itself")
    import dvc

    out: dict[str, Any] = {"benchmark": "dvc_outs", "dvc": dvc.__version__, "cores": os.cpu_count(),
                           "project": str(proj), "load_before": os.getloadavg()}
    if args.focus:
        out.update(focus(proj, args.focus))
        out["load_after"] = os.getloadavg()
        emit(out, args.out)
        return 0
    dss = datasets(proj)
    out["gb"] = {f"{d}/{sub}": du_gb(proj / "data" / d / sub)
                 for d in dss for sub in ("ingest", "resample", "faces", "flow", "features", "runs")}
    out["gb"]["raw"] = du_gb(proj / "data" / "raw")
    out["gb"]["cache"] = du_gb(proj / ".dvc" / "cache")
    out["gb_per_video_outputs"] = round(sum(v for k, v in out["gb"].items()
                                            if k.split("/")[-1] in ("faces", "flow", "features")), 3)

    # -- as today: cached outputs
    status_times(proj, "cached", out)
    noop_repro(proj, "cached", out)
    cache = proj / ".dvc" / "cache"
    aside = proj.parent / (proj.name + "_cache_aside")
    shutil.rmtree(aside, ignore_errors=True)
    cache.rename(aside)
    try:
        cold(proj)
        out["cached_commit_new_objects_s"] = run(["dvc", "commit", "-f", *targets(proj)], proj)[0]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        aside.rename(cache)
    cold(proj)
    out["cached_commit_objects_present_s"] = run(["dvc", "commit", "-f", *targets(proj)], proj)[0]

    # -- cache: false on the per-video outputs
    set_cache_false(proj)
    out["nocache_status_after_edit"] = run(["dvc", "status"], proj)[1].strip().split("\n")[:8]
    cold(proj)
    out["nocache_commit_s"] = run(["dvc", "commit", "-f", *targets(proj)], proj)[0]
    out["nocache_lock_diff_lines"] = len(run(["git", "diff", "--stat", "dvc.lock"], proj)[1].splitlines())
    status_times(proj, "nocache", out)
    noop_repro(proj, "nocache", out)
    run(["git", "add", "dvc.yaml", "dvc.lock"], proj)
    run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "cache: false"], proj)

    if not args.skip_rerun:
        ds = dss[0]
        flows = sorted((proj / "data" / ds / "flow").glob("*.h5"), key=lambda p: p.stat().st_size)
        victim = flows[0]
        before = md5(victim)
        victim.unlink()
        out["nocache_removed"] = str(victim.relative_to(proj))
        out["nocache_status_after_rm"] = run(["dvc", "status"], proj)[1].strip().split("\n")[:8]
        secs, text, rc = run(["dvc", "repro"], proj, check=False)
        out["nocache_repro_after_rm_s"] = secs
        out["nocache_repro_after_rm_rc"] = rc
        out["nocache_repro_after_rm_ran"] = sorted(set(re.findall(r"Running stage '([^']+)'", text)))
        out["nocache_repro_after_rm_tail"] = text.strip().split("\n")[-6:]
        out["nocache_rerun_file_identical"] = victim.exists() and md5(victim) == before
        out["nocache_git_status_after_rm"] = run(["git", "status", "--short"], proj)[1].split("\n")[:10]

    # -- a fresh clone sharing the cache: what `dvc checkout` restores, what `dvc repro` would run
    clone = proj.parent / (proj.name + "_clone")
    shutil.rmtree(clone, ignore_errors=True)
    run(["git", "clone", "-q", str(proj), str(clone)], proj.parent)
    run(["dvc", "cache", "dir", "--local", str(cache)], clone)
    secs, text, rc = run(["dvc", "checkout"], clone, check=False)
    out["clone_checkout_s"], out["clone_checkout_rc"] = secs, rc
    out["clone_checkout_tail"] = text.strip().split("\n")[-6:]
    out["clone_restored"] = {f"{d}/{sub}": (clone / "data" / d / sub).is_dir()
                             for d in dss for sub in ("resample", "faces", "flow", "features", "runs")}
    secs, text, _ = run(["dvc", "repro", "--dry"], clone, check=False)
    out["clone_repro_dry_would_run"] = sorted(set(re.findall(r"Running stage '([^']+)'", text)))
    shutil.rmtree(clone, ignore_errors=True)
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
