"""HTTP servers (aiohttp): the Prometheus endpoint, the block page, and later the admin API."""
