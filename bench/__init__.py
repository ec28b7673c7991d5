"""Load benchmark of the multibackend service against a bare Flask baseline (run: python bench/run.py)."""
