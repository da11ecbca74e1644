"""Conformance of the local fabric with independent OpenWhisk clients."""
