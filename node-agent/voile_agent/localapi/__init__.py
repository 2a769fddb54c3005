"""The agent's local attach API: a versioned JSON-over-HTTP protocol on a root-only unix socket,
the one door for the CNI shim, the Docker driver and the lab (docs/localapi.md)."""
