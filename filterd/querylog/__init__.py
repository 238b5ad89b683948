"""The private query log: who asked what, when, and what filterd did; kept for `retention` in SQLite, written in
batches by a writer process off the query path, read by `filterd log`, the weekly report and the safeguarding alerts."""
