"""Graph methods of ``Runtime``: ``run_job`` and ``resume_run``."""

from __future__ import annotations


class GraphApi:
    """Mixed into ``Runtime``: graph runs under the ``runs`` supervisor."""
