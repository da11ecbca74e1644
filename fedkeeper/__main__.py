"""``python -m fedkeeper`` is the ``fedkeeper`` command."""

from fedkeeper.cli import main

main()
