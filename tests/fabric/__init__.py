"""Tests of the local OpenWhisk-compatible fabric and the OpenWhisk provider."""
