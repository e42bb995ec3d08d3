"""One module per group of `recsys` commands; ``recsys.cli`` only builds the parser.

The commands import the planes (``spark_jobs``, ``model``, ``serving``, ``flink_jobs``)
inside the command functions, so ``recsys --help`` or ``recsys config show`` do not
load Spark or TensorFlow first. Those imports still count: ``tests/test_layers.py``
reads them, and only this top package may make them.
"""
