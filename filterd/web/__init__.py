"""HTTP servers (aiohttp): the Prometheus endpoint, and later the block page and the admin API."""
