"""The example runs against the installed wheel, never the repository's source tree."""

import sysconfig
from importlib.metadata import version
from pathlib import Path

import multibackend
from multibackend.version import VERSION


def test_the_auto_sync_is_imported_from_the_virtualenvs_site_packages():
    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert Path(multibackend.__file__).resolve().is_relative_to(site_packages)
    assert version("multibackend") == VERSION
