"""Docker hosts on Voile networks: libnetwork's remote NetworkDriver and IpamDriver ``voile``,
served by the agent on the host's Docker plugin socket (docs/docker.md). Beside the local API, in
the same layer: it speaks Docker's protocol and uses only the shared API, the attach library and
the agent's view of its host's Endpoints."""
