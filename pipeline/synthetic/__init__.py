"""The synthetic benchmark generator (faces, motion, schedules, rendering, dataset layouts)."""
