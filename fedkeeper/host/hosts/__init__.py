"""Remote hosts (Raspberry Pis and the like) as a platform: the registry, the installation's key pair,
first contact (key install, host-key pinning), the client runtime's deploy, and ``fedkeeper hosts``."""
