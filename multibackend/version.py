"""The package's name and version: the one source for the package metadata (pyproject.toml) and system info."""

NAME = "multibackend"
VERSION = "1.1.0"
