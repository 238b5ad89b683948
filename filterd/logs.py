"""Logging to stderr (journald picks it up under systemd); one logger per module, no print()."""

from __future__ import annotations

import logging
import sys


def setup(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("filterd")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
