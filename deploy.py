#!/usr/bin/env python3
"""Check clusters: ``python deploy.py -c config.yaml -a -s test -f nodeinfo -d | -r``."""

from fedkeeper.host.cli import legacy_deploy

if __name__ == "__main__":
    legacy_deploy()
