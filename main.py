#!/usr/bin/env python3
"""fedkeeper: ``python main.py -c config.yaml -d`` (deploy), ``-s`` (train), ``-r`` (remove)."""

from fedkeeper.host.cli import legacy_main

if __name__ == "__main__":
    legacy_main()
