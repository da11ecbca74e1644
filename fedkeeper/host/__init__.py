"""The host side: what runs beside the keeper, never inside a function.

The keeper and its round loop, deployment, the CLI, the local fabric, the edge fleet and gateway,
the providers' deploy APIs, the embedded store and reporting. It may import
:mod:`fedkeeper.function`; the reverse is refused by ``tests/test_layout.py``.
"""
