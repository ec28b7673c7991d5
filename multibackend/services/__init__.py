"""Service functions: what views call."""
