// The voile CNI plugin: a thin static client of the node agent's local attach API
// (docs/cni.md, docs/localapi.md). Built by hack/cni/build.sh.
module voile.dev/hack/cni

go 1.24.0

require github.com/containernetworking/cni v1.3.1

require (
	github.com/vishvananda/netns v0.0.4 // indirect
	golang.org/x/sys v0.23.0 // indirect
)
