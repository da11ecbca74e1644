"""``fedkeeper serve``: the status API, the dashboard and the Prometheus metrics of the sessions in a store.

``documents`` is the read model (every JSON document, built from the store), ``metrics`` turns it
into Prometheus' text format, ``sources`` queries the Prometheus servers a cluster names
(FedKeeper's ``prometheus_config``), ``access`` checks the token that changes state, ``openapi``
describes the API, and ``server`` only routes requests to them. ``static/`` is the dashboard.
"""
