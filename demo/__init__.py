"""`make demo`: the whole service on this machine, offline (see `python -m demo --help`)."""
