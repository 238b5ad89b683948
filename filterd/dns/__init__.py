"""The DNS wire format: a small, fast reader and writer (dnslib reads answers where speed does not matter)."""
