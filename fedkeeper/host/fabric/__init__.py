"""The local OpenWhisk-compatible fabric: controller, runtime proxy, worker pool, limits, faults.

Start one with ``python -m fedkeeper.host.fabric`` or :class:`fedkeeper.host.fabric.process.FabricProcess`;
see ``docs/fabric.md``. This package never ships inside a function's zip.
"""
