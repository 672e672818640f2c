"""The io layer: everything that touches the kernel or a file, nothing of core, engine or api.

- ``xsk``: AF_XDP sockets on one shared UMEM, batched ring access, frame accounting,
  XSKMAP entries (over ``libxdp``, the ctypes binding of libxdp's xsk API).
- ``xdp`` (package): mosxdp's XDP program: compile, maps, attach/detach, status.
- ``libbpf``: the one ctypes binding of libbpf (map and program syscalls).
- ``netdev``: RX/TX queue counts (ethtool, sysfs), one answer for the XSKMAP layout
  and the socket bindings.
- ``privileges``: capabilities, checked before set-up and dropped after it.
- ``bpfstructs``: ctypes mirrors of bpf/mosxdp.h; ``uapi``: the kernel's numbers;
  ``errors``: ``XdpError``.
- ``pcap``: pcap and pcapng reading and writing.
"""
