"""Client groups: who a client is (IP, CIDR, MAC, name), which group it is in, and the schedules that change
its rules over the week. Pure matching and time arithmetic here; the I/O (neighbour table, DHCP leases,
reverse lookups, the clock) is in `sources.py` and runs in the background, never on the query path."""
