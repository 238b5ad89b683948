"""HTTP servers (aiohttp): the Prometheus endpoint, the block page and the admin API, all served by runner.py."""
