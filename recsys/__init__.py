"""The top floor: the `recsys` command line (``recsys.cli``) and its commands (``recsys.commands``).

Nothing below imports this package. It composes the planes (``spark_jobs``,
``flink_jobs``, ``model``, ``serving``) over the shared core (``pipeline``); see
docs/architecture.md for the layers and why they point down only.
"""
