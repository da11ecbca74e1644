"""``python -m fedkeeper`` is the ``fedkeeper`` command."""

from fedkeeper.host.cli import main

main()
