"""The eBPF datapath backend: tc programs and pinned maps on a VXLAN device in external mode
(``backend.EbpfDatapath``; the BPF C source in ``bpf/``, built by ``build``)."""
