"""More processes answering DNS on the same addresses (`dns.workers`), for machines with more cores than one.

The main process (App) does everything it does with one process and answers DNS too; each worker is a child
process (`worker.py`) that answers DNS only: its own SO_REUSEPORT sockets on the main process's addresses (the
kernel spreads clients over them), its own pipeline and cache, the same mapped list snapshot (the page cache holds
one copy). The main process keeps what must exist once: the admin API, the block page, the metrics endpoint, the
list downloads and compiles, the query log and the safeguarding alerts. Between them, one socket pair a worker
(`channel.py`): the main process sends what to serve (config, snapshot, local entries) at start and after every
change; a worker sends its answers' log rows in batches, and its counters when the metrics endpoint asks
(`merge.py` adds them up). `pool.py` starts, watches and restarts the workers.
"""
