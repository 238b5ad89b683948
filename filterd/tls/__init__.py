"""HTTPS for the block page on managed devices: the local CA (`ca.py`) and the per-name certificates (`leaves.py`)."""
