"""Thin Ray Serve deployments over the engines; the Serve graph is bound in quillman.app."""

import logging
import sys


def _log_to_console() -> None:
    """Show our INFO lines (per-turn timing breakdown, load times) in the replica's stderr,
    which `serve run` prints and Ray keeps in the worker logs. Serve configures only the
    ``ray.serve`` logger; ``quillman.*`` would otherwise fall back to WARNING."""
    logger = logging.getLogger("quillman")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s -- %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


_log_to_console()
