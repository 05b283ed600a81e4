"""Thin Ray Serve deployments over the engines; the Serve graph is bound in quillman.app."""
