"""Sphinx configuration of PipeBit's handbook (``docs/``), built by ``tests/test_docs_site.py``.

Why Sphinx rather than MkDocs: PipeBit's docstrings are reStructuredText with Sphinx
roles (``:class:`PipeClosedError```, ``:meth:`flush```), as ``help()`` shows them.
Sphinx's autodoc renders them as written and checks every cross-reference
(``nitpicky``), while MyST lets the handbook's pages stay the Markdown they are on
GitHub.  MkDocs' mkdocstrings would print the roles literally, unless every
docstring were rewritten for it.
"""

from __future__ import annotations

import pipebit

project = "PipeBit"
author = "The PipeBit developers"
copyright = "The PipeBit developers"
release = version = pipebit.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # "page.md#a-heading" links, as on GitHub

# The API reference: the public names only, in the order they are listed, signatures with hints.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True}  # errors add :show-inheritance: (their builtin parents)
add_module_names = False

# Every reference must resolve: a broken one is an error in the test that builds the site.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"pipebit\._.*"),  # private modules a docstring names for the curious
]

html_theme = "furo"
html_title = f"PipeBit {release}"
html_static_path: list[str] = []
