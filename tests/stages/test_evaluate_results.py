"""How evaluate's results read (issue #25 §3, #22): the headline metrics file and the details beside it,
the caveats in every result file and picture title, the training curves' axis and legend, and
`dvc metrics show` / `dvc exp show` in 120 columns (real dvc, real git)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from models.weights import RANDOM_INIT as MODELS_RANDOM_INIT
from pipeline.evaluate import main
from pipeline.extract.params import NO_WEIGHTS as EXTRACT_NO_WEIGHTS
from pipeline.scoring import caveats, report
from pipeline.scoring.errors import plot_errors
from stages.test_evaluate import _make_dataset, _params, _predictions

OLD_KEYS = {"dataset", "iou_threshold", "countings", "protocols", "default", "ground_truth", "predictions",
            "one-to-one", "published"}
CPU_INFERENCE = {"nms_ties": "earlier", "wbf_from_epoch": None, "wbf_top_k": True, "wbf_unmerged_score": "power"}


def _checkpoint(runs: Path, provenance: dict, inference: dict | None = None, features: dict | None = None) -> None:
    """A checkpoint as the train stage writes it, reduced to what evaluate reads (provenance, the resolved
    preset's inference switches, the features recipe), in every fold folder of ``runs``."""
    blob = {"version": 1, "state_dict": {}, "in_dim": 4, "preset": {"inference": dict(inference or CPU_INFERENCE)},
            "params": {"pipeline": {"features": dict(features or {"flow_quantize": "jpeg"})}},
            "provenance": provenance}
    for fold in ("A", "B", "C"):
        (runs / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        torch.save(blob, runs / f"fold_{fold}" / "model.pt")


RANDOM_I3D = {"backbone": "i3d", "weights_rgb": "random-init", "seed_rgb": 0, "weights_flow": "random-init",
              "seed_flow": 1}


def _run(root: Path, name: str = "toy", pred: pd.DataFrame | None = None, provenance: dict | None = None,
         resample: dict | None = None) -> Path:
    _make_dataset(root, pred, name)
    params = _params()
    params["resample"] = resample or {"interval_map": "published", "duration_rule": "published"}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    if provenance is not None:
        _checkpoint(root / "data" / name / "runs", provenance)
    assert main(["--dataset", name]) == 0
    return root / "data" / name / "evaluate"


def test_headline_is_small_and_details_keep_every_figure(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = _run(tmp_path, provenance=RANDOM_I3D)
    text = (tmp_path / "metrics" / "toy.json").read_text()
    head = json.loads(text)
    assert head == {"toy": {"f1": 1.0}}   # cross-fold overall, one-to-one; no baseline ran
    assert len(text) < 100 and str(tmp_path) not in text
    details = json.loads((out / "details.json").read_text())
    assert set(details) == OLD_KEYS | {"features", "reproduction", "caveats"}
    assert details["one-to-one"]["cross-fold"]["overall"]["f1"] == head["toy"]["f1"]
    # paper-optimistic overall under the published counting (the duplicate: 14/13): details only
    assert details["published"]["paper-optimistic"]["overall"]["f1"] == round(14 / 13, 6)
    repro = details["reproduction"]
    assert repro["code"] == "pub:map+len+jpg"   # layout generic: wbf_from_epoch has no published value
    assert repro["resample.interval_map"] == {"value": "published", "published": True}
    assert repro["inference.nms_ties"] == {"value": "earlier", "published": False}
    search = repro["evaluate.paper_search"]
    assert search["published"] is False and search["value"]["ties"] == "last"


def test_a_second_run_writes_the_same_headline_bytes(tmp_path: Path, monkeypatch) -> None:
    """The metrics file is committed: a rerun (another machine, another folder) must leave git clean."""
    runs = []
    for where in ("one", "two"):
        root = tmp_path / where
        root.mkdir()
        monkeypatch.chdir(root)
        _run(root, provenance=RANDOM_I3D)
        runs.append((root / "metrics" / "toy.json").read_bytes())
    assert runs[0] == runs[1]


def test_random_init_features_are_said_in_every_result(tmp_path: Path, monkeypatch) -> None:
    titles: list[str] = []

    def spy(real):
        def wrapped(*args, **kwargs):
            # the title, and the caveats where the writer passes them apart (training curves)
            words = [a for a in args if isinstance(a, str)] + [c for a in args if isinstance(a, list) for c in a]
            titles.append(" ".join(words))
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(report, "plot_timeline", spy(report.plot_timeline))
    monkeypatch.setattr("pipeline.evaluate.plot_errors", spy(plot_errors))
    monkeypatch.setattr(report, "plot_training_curves", spy(report.plot_training_curves))
    monkeypatch.chdir(tmp_path)
    out = _run(tmp_path, provenance=RANDOM_I3D)
    said = "i3d, random-init weights (seed rgb 0, flow 1): the features carry no pretrained knowledge"
    warning = "WARNING: random-init i3d weights"
    assert said in (out / "summary.md").read_text() and warning in (out / "summary.md").read_text()
    details = json.loads((out / "details.json").read_text())
    assert details["features"] == {"backbone": "i3d", "weights": {"rgb": "random-init:0", "flow": "random-init:1"},
                                   "text": f"features: {said}"}
    assert any(warning in c for c in details["caveats"])
    assert any("upper bound" in c for c in details["caveats"])
    assert any(said in c for c in json.loads((out / "thresholds.json").read_text())["caveats"])
    # every picture: 3 timelines, errors.png, training_curves.png (titles wrapped: compare without newlines)
    assert len(titles) == 5
    for title in titles:
        flat = " ".join(title.split())
        assert said in flat and warning in flat, title


def test_weight_free_and_hashed_weights_are_named() -> None:
    roi = caveats.feature_source({"backbone": "roi_flow", "weights_rgb": "none", "weights_flow": "none"})
    assert "weight-free" in roi.text() and not roi.random_init
    sha = caveats.feature_source({"backbone": "i3d", "weights_rgb": "a" * 64, "weights_flow": "b" * 64})
    assert sha.text() == f"features: i3d, weights SHA-256 rgb {'a' * 12}, flow {'b' * 12}"
    assert caveats.caveat_lines(sha) == [sha.text()]
    unknown = caveats.caveat_lines(caveats.feature_source(None))
    assert "unknown" in unknown[0] and "not recorded" in unknown[1]
    # the identities evaluate compares with are those the features stage writes
    assert caveats.RANDOM_INIT == MODELS_RANDOM_INIT and caveats.NO_WEIGHTS == EXTRACT_NO_WEIGHTS


def test_a_type_that_never_fires_is_explained(tmp_path: Path, monkeypatch) -> None:
    """Every micro prediction is a false positive: the best micro threshold lies above them all (1.00 on the
    grid), so thresholds.json, summary.md and the pictures say no micro-expression is ever reported."""
    pred = _predictions()
    pred = pred[~((pred["type"] == "micro") & (pred["onset"] == 100))]
    monkeypatch.chdir(tmp_path)
    out = _run(tmp_path, pred=pred, provenance=RANDOM_I3D)
    thr = json.loads((out / "thresholds.json").read_text())
    assert thr["thresholds"]["micro"] == 1.0
    line = "WARNING: micro threshold 1.00 (thresholds.json, for new videos): no micro-expression is ever reported"
    assert line in thr["caveats"]
    # summary.md: every held-out subject's micro threshold too (cross-fold) and paper-optimistic's, one line;
    # the fixed protocol's 0.1 does report
    summary = (out / "summary.md").read_text()
    assert "WARNING: micro threshold 1.00 (thresholds.json, for new videos; cross-fold; paper-optimistic): no " \
        "micro-expression is ever reported" in summary
    assert "; fixed)" not in summary and "(fixed)" not in summary


def test_silent_types_are_found_and_said_once() -> None:
    # a threshold above every score of its type, or at 1.0, keeps nothing; a type without predictions is not listed
    found = caveats.silent_types({"macro": 0.5, "micro": 0.95}, {"macro": 0.9, "micro": 0.9}, "thresholds.json")
    assert found == [caveats.Silent("micro", "thresholds.json", 0.95)]
    at_one = caveats.silent_types({"macro": 1.0, "micro": 1.0}, {"macro": 1.0}, "x")
    assert at_one == [caveats.Silent("macro", "x", 1.0)]
    source = caveats.feature_source({"backbone": "roi_flow"})
    lines = caveats.caveat_lines(source, [caveats.Silent("micro", "cross-fold"), caveats.Silent("micro", "fixed")])
    assert lines[1:] == ["WARNING: cross-fold and fixed report no micro-expression at all: micro F1 0 by construction"]


def test_training_curves_plot_epochs_with_a_legend_of_folds(tmp_path: Path) -> None:
    long = pd.DataFrame({"fold": ["fold_A"] * 3 + ["fold_B"] * 3, "metric": "train/loss",
                         "step": [0, 1, 2] * 2, "value": [1.0, 0.5, 0.3, 0.9, 0.6, 0.2]})
    fig = report.plot_training_curves(long, tmp_path / "c.png", "toy: training curves", ["features: x"])
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch"
    assert list(ax.lines[0].get_xdata()) == [1, 2, 3]   # dvclive step 0 is epoch 1, as in predictions.csv
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["fold_A", "fold_B", "mean over folds"]
    assert fig._suptitle.get_text() == "toy: training curves\nfeatures: x"


def test_reproduction_code_fits_and_reads() -> None:
    switches = {s: {"value": None, "published": True} for s in caveats.PUBLISHED}
    assert caveats.reproduction_code(switches) == "published"
    switches["evaluate.paper_search"]["published"] = False
    assert caveats.reproduction_code(switches) == "pub-srch"
    for entry in switches.values():
        entry["published"] = False
    assert caveats.reproduction_code(switches) == "m2es"
    # the longest: half on, half off, one unknown
    states = [True, False] * 4
    for s, p in zip(switches, states):
        switches[s]["published"] = p
    switches["resample.interval_map"]["published"] = None
    code = caveats.reproduction_code(switches)
    assert code.endswith("?") and len(code) <= 24
    # the real presets' published search is recognised
    from pipeline.scoring.params import EvaluateParams

    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    casme2 = (params.get("per_dataset") or {}).get("casme2", {}).get("evaluate") or \
        yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "datasets" / "casme2.yaml").read_text()
                       )["overrides"]["evaluate"]
    search = EvaluateParams.from_params({**params["evaluate"], **casme2}).search.as_dict()
    assert caveats._published_search(search)
    assert not caveats._published_search(EvaluateParams.from_params(params["evaluate"]).search.as_dict())


def _git_dvc(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), cwd=root, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.skipif(shutil.which("dvc") is None or shutil.which("git") is None, reason="needs dvc and git")
def test_dvc_shows_the_metrics_in_120_columns(tmp_path: Path, monkeypatch) -> None:
    """Two datasets, the longest preset name among them, a baseline, a checkpoint, and a saved experiment that
    trains longer (`dvc exp run -S train.epochs=30`) and changes both datasets' predictions and F1:
    `dvc metrics show`, `dvc metrics diff` against the committed files and the README's
    `dvc exp show --only-changed --drop '.*/|metrics$'` all fit in 120 columns with no column collapsed.
    (DVC prefixes a column with its file's path when two files share a key: per-dataset files with the same
    keys made `metrics/<ds>.json:f1.overall`-wide columns, five per dataset. It also adds a column per
    changed dependency, a 36-character hash each: evaluate's `data/<ds>/runs`, report's `metrics`; the
    README's `--drop` removes those, every path column, and nothing else.)"""
    names = ("synth_casme2_large", "synth_samm")
    monkeypatch.chdir(tmp_path)
    out = _run(tmp_path, name=names[0], provenance=RANDOM_I3D)
    base = tmp_path / "data" / names[0] / "baseline"
    base.mkdir()
    _predictions().assign(epoch=0).to_csv(base / "predictions.csv", index=False)
    shutil.copytree(tmp_path / "data" / names[0], tmp_path / "data" / names[1])
    shutil.copy(tmp_path / "configs" / "datasets" / f"{names[0]}.yaml", tmp_path / "configs" / "datasets" / f"{names[1]}.yaml")
    recipe = {"train": {"epochs": 8}}   # params.yaml's key path (evaluate does not read it)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    for name in names:
        assert main(["--dataset", name]) == 0
        assert json.loads((tmp_path / "metrics" / f"{name}.json").read_text()) == {name: {"f1": 1.0, "base": 0.666667}}
    env = {**os.environ, "COLUMNS": "120", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    (tmp_path / ".gitignore").write_text("/data/\n")
    stages = {f"evaluate_{name}": {"cmd": f"python -m pipeline.evaluate --dataset {name}",
                                   "deps": [f"data/{name}/runs"], "params": [{"recipe.yaml": ["train"]}],
                                   "metrics": [{f"metrics/{name}.json": {"cache": False}}]} for name in names}
    stages["report"] = {"cmd": "python -m pipeline.summary", "deps": ["metrics"]}   # as dvc.yaml's
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    _git_dvc(tmp_path, "git", "init", "-q", env=env)
    _git_dvc(tmp_path, "dvc", "init", "-q", env=env)
    _git_dvc(tmp_path, "dvc", "commit", "-q", "-f", env=env)   # dvc.lock, as after `dvc repro`
    _git_dvc(tmp_path, "git", "add", "-A", env=env)
    _git_dvc(tmp_path, "git", "commit", "-qm", "metrics", env=env)
    # another experiment: more epochs for one dataset, and models that miss subject A's micro-expression
    recipe["train"]["epochs"] = 30
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    for name in names:
        pred = _predictions()
        pred[~((pred["video"] == "vA") & (pred["type"] == "micro"))].to_csv(
            tmp_path / "data" / name / "runs" / "predictions.csv", index=False)
        assert main(["--dataset", name]) == 0
        assert json.loads((tmp_path / "metrics" / f"{name}.json").read_text())[name]["f1"] < 1.0
    _git_dvc(tmp_path, "dvc", "commit", "-q", "-f", env=env)
    _git_dvc(tmp_path, "dvc", "exp", "save", "-q", "-n", "more-epochs", env=env)
    every_column = _git_dvc(tmp_path, "dvc", "exp", "show", "--only-changed", "--no-pager", "--csv", env=env).stdout
    assert {f"data/{names[0]}/runs", "metrics"} <= set(every_column.splitlines()[0].split(","))   # DVC's dep columns
    shown = {
        "metrics show": _git_dvc(tmp_path, "dvc", "metrics", "show", env=env).stdout,
        "metrics diff": _git_dvc(tmp_path, "dvc", "metrics", "diff", "HEAD", "more-epochs", env=env).stdout,
        "exp show": _git_dvc(tmp_path, "dvc", "exp", "show", "--only-changed", "--drop", ".*/|metrics$", "--no-pager",
                             env=env).stdout,
    }
    for name in names:
        assert f"metrics/{name}.json" in shown["metrics show"] and f"{name}.f1" in shown["metrics show"]
        assert f"{name}.f1" in shown["metrics diff"] and f"{name}.f1" in shown["exp show"]
    assert "train.epochs" in shown["exp show"] and "more-epochs" in shown["exp show"]
    assert "…" not in shown["exp show"]   # no column collapsed
    for what, text in shown.items():
        wide = [line for line in text.splitlines() if len(line) > 120]
        assert not wide, f"dvc {what}: {len(wide)} line(s) over 120 characters:\n" + "\n".join(wide)
    assert (out / "details.json").is_file()
