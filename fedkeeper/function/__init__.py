"""The function side: everything a deployed function runs, and nothing else.

A function's zip is this package (with ``fedkeeper/__init__.py`` above it), copied whole: the
task handlers, store access, the weights encoding, learning, the strategies' aggregation, the
invoke clients the invoker calls its targets with, and the modules both sides share (config
models, errors, redaction). Nothing here imports :mod:`fedkeeper.host` (``tests/test_layout.py``).
"""
