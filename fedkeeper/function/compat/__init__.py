"""FedKeeper's original ``config.yaml`` shape, accepted as it is.

:func:`to_native` turns such a document into fedkeeper's native shape before validation (a native
document passes through untouched); :func:`migrate` prints the native equivalent as YAML.
"""

from fedkeeper.function.compat.convert import to_native
from fedkeeper.function.compat.migrate import migrate
from fedkeeper.function.compat.shape import fedkeeper_marker

__all__ = ["fedkeeper_marker", "migrate", "to_native"]
