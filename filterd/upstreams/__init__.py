"""Encrypted upstreams: DNS over TLS (`dot.py`) and DNS over HTTPS (`doh.py`), behind one `exchange`."""
