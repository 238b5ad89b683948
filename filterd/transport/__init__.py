"""Transports: DNS over UDP and TCP, both feeding the same pipeline through one QueryHandler."""
