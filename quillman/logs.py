"""The server's own log lines on the console: called by each deployment as it starts."""

from __future__ import annotations

import logging
import sys


def log_to_console() -> None:
    """Show our INFO lines (per-turn timing breakdown, load times) in the replica's stderr,
    which `serve run` prints and Ray keeps in the worker logs. Serve configures only the
    ``ray.serve`` logger; ``quillman.*`` would otherwise fall back to WARNING. Idempotent;
    called from the deployments' constructors, never as an import side effect."""
    logger = logging.getLogger("quillman")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s -- %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
