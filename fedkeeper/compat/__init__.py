"""FedKeeper's original ``config.yaml`` shape, accepted as it is.

:func:`to_native` turns such a document into fedkeeper's native shape before validation (a native
document passes through untouched); :func:`migrate` prints the native equivalent as YAML.
"""

from fedkeeper.compat.convert import to_native
from fedkeeper.compat.migrate import migrate
from fedkeeper.compat.shape import fedkeeper_marker

__all__ = ["fedkeeper_marker", "migrate", "to_native"]
