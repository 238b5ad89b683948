"""The DNS wire format: a small, fast reader and writer for the common case (dnslib does the rest)."""
