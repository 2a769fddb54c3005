"""Side effects, each verb idempotent: OVSDB (ovsdbapp), OpenFlow (ovs-ofctl bundles), the kernel
(pyroute2) and the Kubernetes API (status, finalizers, heartbeat Lease)."""
