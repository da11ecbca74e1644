"""The local OpenWhisk-compatible fabric: controller, runtime proxy, worker pool, limits, faults.

Start one with ``python -m fedkeeper.fabric`` or :class:`fedkeeper.fabric.process.FabricProcess`;
see ``docs/fabric.md``. This package never ships inside a function's zip.
"""
