"""Inference engines, free of Ray and FastAPI: arrays and strings in, dataclasses out.

Each stage has a small protocol in ``base.py`` and one module per backend; ``load_*`` picks the
backend named in config and imports it lazily, so GPU-only packages stay optional.
"""
