"""Shared machinery of every stage: params, paths, the stage entry point, the runner, devices, sandboxes."""
