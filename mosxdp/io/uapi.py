"""Kernel UAPI numbers of the io layer (linux/bpf.h, linux/if_link.h, linux/if_xdp.h).

Each number is defined here once; libxdp, libbpf, xsk and the xdp package import it.
"""
from __future__ import annotations

# linux/bpf.h: the program type and the XDP actions (enum xdp_action)
BPF_PROG_TYPE_XDP = 6
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)

# linux/if_link.h: XDP attach flags (IFLA_XDP_FLAGS, and libxdp's xdp_flags), bits 0..4
(XDP_FLAGS_UPDATE_IF_NOEXIST, XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE, XDP_FLAGS_HW_MODE,
 XDP_FLAGS_REPLACE) = (1 << bit for bit in range(5))

# linux/socket.h and linux/if_xdp.h: the AF_XDP family, its socket-option level and the
# getsockopt that reads struct xdp_statistics
AF_XDP, SOL_XDP, XDP_STATISTICS = 44, 283, 7
# setsockopt (Linux 6.17+): descriptors one copy-mode sendto may send, 32..TX ring size
# (the kernel's default is 32; older kernels answer ENOPROTOOPT)
XDP_MAX_TX_SKB_BUDGET = 9

# sockaddr_xdp.sxdp_flags: how a socket binds, bits 0..3
XDP_SHARED_UMEM, XDP_COPY, XDP_ZEROCOPY, XDP_USE_NEED_WAKEUP = (1 << bit for bit in range(4))
# the flags word of a ring
XDP_RING_NEED_WAKEUP = 1 << 0
