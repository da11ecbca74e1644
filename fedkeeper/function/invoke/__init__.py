"""Invoke clients: how to call a function on each platform (and read its activation records).

The invoker function calls its targets with these, so they ship in every zip. Each platform's
deploy, remove and probe-by-deploy API builds on its client in :mod:`fedkeeper.host.providers`.
"""
