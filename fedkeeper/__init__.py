"""fedkeeper: federated learning over a fabric of FaaS platforms and emulated edge devices."""

__version__ = "0.1.0"
