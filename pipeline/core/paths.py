"""Where each stage reads and writes, for one dataset (all under the repository's ``data/``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataPaths:
    """Output locations of every stage for dataset ``name`` below ``root`` (default ``data``)."""

    name: str
    root: Path = Path("data")

    @property
    def base(self) -> Path:
        return Path(self.root) / self.name

    @property
    def ingest(self) -> Path:
        return self.base / "ingest"

    @property
    def resample(self) -> Path:
        return self.base / "resample"

    @property
    def faces(self) -> Path:
        return self.base / "faces"

    @property
    def flow(self) -> Path:
        return self.base / "flow"

    @property
    def features(self) -> Path:
        return self.base / "features"

    @property
    def runs(self) -> Path:
        return self.base / "runs"

    @property
    def baseline(self) -> Path:
        """The non-learned baseline's predictions (stage ``baseline``)."""
        return self.base / "baseline"

    @property
    def evaluate(self) -> Path:
        return self.base / "evaluate"

    @property
    def metrics(self) -> Path:
        """The dataset's metrics file: ``metrics/<name>.json`` beside the default ``data/`` (what
        dvc.yaml declares), else ``<root>/metrics/<name>.json``, so a run with another data root
        (``--data-root DIR``) writes nothing outside ``DIR``."""
        if Path(self.root).resolve() == Path("data").resolve():
            return Path("metrics") / f"{self.name}.json"
        return Path(self.root) / "metrics" / f"{self.name}.json"

    @property
    def train_timings(self) -> Path:
        """The train stage's timing records (``pipeline.learning.timings``): beside the stage
        folders, in no DVC output, so that times, which differ on every run, change no output's hash."""
        return self.base / "train_timings.jsonl"

    @property
    def stage_timings(self) -> Path:
        """One record per stage run for this dataset (:mod:`pipeline.core.stage`; ``m2es summary`` reads
        them): beside the stage folders, in no DVC output, like :attr:`train_timings`."""
        return self.base / "stage_timings.jsonl"

    def h5(self, stage_dir: Path, video: str) -> Path:
        """The per-video HDF5 file of a stage directory (``faces``, ``flow``, ``features``)."""
        return Path(stage_dir) / f"{video}.h5"

