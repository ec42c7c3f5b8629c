"""m2es: macro- and micro-expression spotting pipeline (stages, runner, I/O, CLI)."""

__version__ = "0.1.0"
