"""Test-only stand-ins for cloud control planes, driven by the real client libraries."""
