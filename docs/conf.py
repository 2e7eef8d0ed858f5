"""Sphinx configuration for requests-failover."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

from requests_failover import __version__

project = "requests-failover"
author = "requests-failover developers"
copyright = "2026, requests-failover developers"
version = release = __version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
html_theme = "furo"
html_title = f"requests-failover {release}"
exclude_patterns = ["_build"]
