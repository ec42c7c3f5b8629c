"""``python -m pipeline.spot``: the same as ``m2es spot``."""

from pipeline.spot.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
