"""mosxdp: the mOS monitoring stack in Python on eBPF/XDP."""
