"""End-to-end tests: a real etcd and kube-apiserver (voile.controlplane), real kubectl, and the lab.
Nothing here is mocked."""
