"""Side effects on the Kubernetes API (claims, status by server-side apply, leases, events).

Every verb is idempotent: repeating it after a crash, or racing another replica, converges to the
same objects, and the API server (name uniqueness, uid preconditions) is the arbiter.
"""
