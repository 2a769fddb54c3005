"""The host's kernel, shared by every backend: veth plumbing, addresses, routes, sysctls
(pyroute2), and running command-line tools with a deadline."""
