/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * mosxdp.h: everything that crosses the kernel/user boundary.
 *
 * Every struct here is read or written by user space (mosxdp/io/bpfstructs.py mirrors
 * them with ctypes; tests/bpf/test_structs.py checks sizes and offsets against the
 * compiled program). Rules:
 *   - explicit padding, no implicit holes, sizes are multiples of the largest member;
 *   - byte order is in the type: __be16/__be32 are network order, __u16/__u32/__u64 host order;
 *   - a constant used by user space is a #define or an enum value in this file
 *     (bpfstructs.py parses them from here, so they cannot drift).
 *
 * Included by bpf/mosxdp.c, which bcc compiles at run time. Only stable UAPI types.
 */
#ifndef MOSXDP_H
#define MOSXDP_H

#include <linux/types.h>

/* ---- sizes ---------------------------------------------------------------------- */

/* XSKMAP layout: index = slot * MX_MAX_QUEUES + rx_queue_index. A slot is a monitored
 * interface (0 = first --iface, 1 = its --peer, ...). Queues >= MX_MAX_QUEUES never
 * reach a socket (they take the no-socket fallback). */
#define MX_MAX_QUEUES 64
#define MX_MAX_SLOTS 16
#define MX_XSKMAP_SIZE (MX_MAX_SLOTS * MX_MAX_QUEUES)

/* Entries of the per-interface configuration hash (key: ingress ifindex). */
#define MX_MAX_IFACES MX_MAX_SLOTS

/* Entries of the per-flow verdict LRU hash. */
#define MX_VERDICT_ENTRIES 65536

/* Parser bounds: VLAN tags (802.1Q / 802.1ad / 0x9100) and IPv6 extension headers walked
 * before giving up; a frame beyond them is "unparsed" and takes the kernel path. */
#define MX_MAX_VLAN_DEPTH 4
#define MX_MAX_IPV6_EXT 8

/* ---- per-interface configuration ------------------------------------------------ */

/* mx_if_config.flags */
#define MX_IF_INLINE (1U << 0)         /* kernel path = redirect to tx_ports[egress_slot]; else XDP_PASS */
#define MX_IF_FAIL_CLOSED (1U << 1)    /* no socket bound at the XSKMAP index: XDP_DROP instead of the kernel path */
#define MX_IF_BYPASS_CONSUME (1U << 2) /* passive only: frames of a BYPASS flow are consumed (XDP_DROP), not passed */
#define MX_IF_FILTER_ALL_IP (1U << 3)  /* run the monitor filter on every parsed frame but fragments, not only TCP (raw sockets) */
#define MX_IF_OBSERVE (1U << 4)        /* observe-only: a frame meant for user space is copied into the observed ringbuf and takes the kernel path */

/* Value of the if_config hash, key = ingress ifindex (__u32, host order).
 * One program serves every monitored interface; the slot keeps their XSKMAP
 * ranges apart and names their devmap entry. */
struct mx_if_config {
	__u32 slot;           /* this interface's slot: XSKMAP block and its tx_ports index */
	__u32 egress_slot;    /* inline: tx_ports index of the peer interface (= the peer's slot) */
	__u32 egress_ifindex; /* inline: the ifindex stored at tx_ports[egress_slot] (for status and checks) */
	__u32 flags;          /* MX_IF_* */
};

/* ---- the flow as monitor filters see it ----------------------------------------- */

/* What a generated monitor-filter expression (mx_filter.h) is evaluated on: one TCP
 * frame as seen on the wire, source/destination NOT canonicalised. IPv4 addresses
 * are in src[0]/dst[0] with src[1..3]/dst[1..3] zero. The expression may use
 * bpf_htons()/bpf_htonl() for constants. With MX_IF_FILTER_ALL_IP the filter also
 * sees non-TCP IP frames (not fragments): UDP ports are filled in, other protocols
 * have sport = dport = 0; and non-IP frames: ip_version 0, only the ethertype set. */
struct mx_flow_view {
	__u8 ip_version; /* 4 or 6 */
	__u8 ip_proto;   /* upper-layer protocol after IPv6 extension headers (6 = TCP) */
	__be16 sport;
	__be16 dport;
	__be16 ethertype; /* after the VLAN tags: raw filters such as `arp` test it */
	__be32 src[4];
	__be32 dst[4];
};

/* ---- per-flow verdicts ---------------------------------------------------------- */

/* Key of the verdicts LRU hash: a flow, the same for both directions. Ports: TCP and
 * UDP ports; for ICMP the message type and, as Zeek pairs them (echo request/reply, ...),
 * the counterpart type, else the code (network order like real ports).
 * The two endpoints are ordered canonically: endpoint "lo" is the one whose
 * (address bytes, port bytes), compared as big-endian byte strings, is the smaller;
 * "hi" is the other (for src == dst both orders are equal). VLAN ids are those of the
 * frame's outermost two tags (0 = absent), host order, 12 bits; a frame without tags
 * and the same frame with tag 0 are the same flow. */
struct mx_flow_key {
	__be32 lo_addr[4]; /* IPv4: lo_addr[0], the rest zero */
	__be32 hi_addr[4];
	__be16 lo_port;
	__be16 hi_port;
	__u16 vlan_outer;  /* host order, 0..4095, 0 = untagged */
	__u16 vlan_inner;  /* host order, 0..4095, 0 = single tag or untagged */
	__u8 ip_version;   /* 4 or 6 */
	__u8 ip_proto;     /* 6 (TCP), 17 (UDP), 1 (ICMP, IPv4), 58 (ICMPv6, IPv6) */
	__u8 pad[2];
};

/* mx_verdict.action */
#define MX_ACTION_BYPASS 1 /* forward in the kernel (inline: peer; passive: XDP_PASS or consume) */
#define MX_ACTION_DROP 2   /* XDP_DROP */
#define MX_ACTION_STATE_ONLY 3 /* as BYPASS, for a flow handed to the kernel at its start by an app
				* that needs only counters, flags and state changes (MOSX_STATE_ONLY) */

/* mx_verdict.watch_armed */
#define MX_WATCH_ARMED 1 /* the first ACK at or beyond ack_watch */
#define MX_WATCH_ANY 2   /* the first frame with ACK set, whatever it acknowledges: set by user
			  * space on a new STATE_ONLY entry for the client's direction, since the
			  * server's SYN-ACK may have gone by before the entry was made (nothing
			  * armed then) and the emulation must see the handshake's ACK */

/* Direction index of mx_verdict counters, relative to the key. */
#define MX_DIR_FROM_LO 0 /* frames whose source endpoint is the key's lo endpoint */
#define MX_DIR_FROM_HI 1
#define MX_NUM_DIRS 2

/* Value of the verdicts LRU hash. Counts only the frames the program handled by the
 * verdict (forwarded or dropped in the kernel: every frame of a UDP or ICMP flow, which
 * the program looks up only with MX_IF_FILTER_ALL_IP); SYN/FIN/RST frames of the flow go to
 * user space and are not counted here (unless no socket is bound: then the verdict
 * applies to them and they count). Counters are updated with atomic adds. An LRU entry
 * may be evicted under pressure; user space removes entries when flows end.
 *
 * ACK watch (BYPASS and STATE_ONLY entries): a SYN or FIN of the flow seen by the program
 * arms the watch of the other direction with the sequence number that acknowledges it; the
 * first frame from that direction with ACK set and an acknowledgment number at or beyond it
 * goes to user space too (verdict_ctrl, not counted here) and disarms the watch (so does a
 * SYN/FIN/RST from that direction that acknowledges it), so that the state emulation sees
 * the ACK of every SYN and FIN: the handshake completes and the connection ends there
 * instead of idling out. MX_WATCH_ANY (made so by user space) takes the first frame with
 * ACK set, whatever its acknowledgment number; a SYN or FIN arms the precise watch over it.
 *
 * What the emulation learns from the frames it did not see (every action): the time of the
 * first frame with payload and of the first without payload but with ACK, per direction
 * (Zeek's history letters D and A, ordered by these times; the frames of an ACK watch that
 * go on to user space are stamped too, for the order), and the highest sequence end.
 * Written without atomics: the frames of one direction of a flow come in on one RX queue,
 * so one CPU at a time updates them (should two race, seq_end may miss the other's end and a
 * first time may be the later one's: counts stay exact, the history letters still right). */
struct mx_verdict {
	__u32 action;                     /* MX_ACTION_* (other values: entry ignored) */
	__u32 pad;
	__u64 last_seen_ns;               /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the last frame of the flow */
	__u64 packets[MX_NUM_DIRS];       /* frames handled in the kernel */
	__u64 bytes[MX_NUM_DIRS];         /* payload bytes of those frames (from IP lengths): TCP's,
					   * UDP's, ICMP's beyond its 8-byte header */
	__u64 frame_bytes[MX_NUM_DIRS];   /* L2 frame bytes of those frames */
	__u64 ip_bytes[MX_NUM_DIRS];      /* IP bytes of those frames (IPv4 total length; IPv6 40 + payload length) */
	__u32 ack_watch[MX_NUM_DIRS];     /* host order: acknowledgment number that ends the watch of that direction */
	__u32 watch_armed[MX_NUM_DIRS];   /* MX_WATCH_*: the ACK watch of that direction is armed (0: not) */
	__u64 first_data_ns[MX_NUM_DIRS]; /* bpf_ktime_get_ns() of the first of those frames with payload (0: none) */
	__u64 first_ack_ns[MX_NUM_DIRS];  /* ... of the first without payload, with ACK (0: none) */
	__u32 seq_end[MX_NUM_DIRS];       /* host order: highest seq + payload length of those frames
					   * (serial order; valid when packets[dir] > 0) */
};

/* ---- observe-only copies --------------------------------------------------------- */

/* Most workers of an observe-only split run: one ring each (observed, observed1 ...). */
#define MX_OBSERVE_MAX_RINGS 8

/* Header of a record in the observed ringbuf (a program built with MX_OBSERVE_SNAP, a power
 * of two), followed by cap_len bytes of the frame from its first byte:
 * min(frame_len, MX_OBSERVE_SNAP - 1). */
struct mx_observed {
	__u64 ts_ns;      /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) when the program saw the frame */
	__u32 slot;       /* the ingress interface's slot */
	__u32 frame_len;  /* the frame's length on the wire */
	__u32 cap_len;    /* bytes copied after this header */
	__u32 pad;
};

/* ---- counters ------------------------------------------------------------------- */

/* Indexes of the per-CPU counters array (each a __u64).
 * Every frame counts once in MX_CNT_RX_TOTAL and once in exactly one ACTION counter
 * (to_xsk, kernel_forward, pass, drop), so rx_total = to_xsk + kernel_forward + pass + drop.
 * The REASON counters say why a frame did not go to a socket, or which path it took.
 * Names for user space are the lowercase suffixes (MX_CNT_NO_XSK_FALLBACK -> "no_xsk_fallback"). */
enum mx_counter {
	/* total */
	MX_CNT_RX_TOTAL = 0,       /* frames seen by the program */
	/* actions */
	MX_CNT_TO_XSK,             /* redirected to an AF_XDP socket */
	MX_CNT_KERNEL_FORWARD,     /* inline: redirected to the peer through tx_ports */
	MX_CNT_PASS,               /* XDP_PASS */
	MX_CNT_DROP,               /* XDP_DROP */
	/* reasons */
	MX_CNT_NO_CONFIG,          /* ingress ifindex not in if_config: XDP_PASS */
	MX_CNT_NOT_IP,             /* ethertype neither IPv4 nor IPv6 (ARP, LLDP, ...) */
	MX_CNT_NOT_TCP,            /* IP, upper-layer protocol not TCP */
	MX_CNT_IP_FRAGMENT,        /* IPv4 fragment or IPv6 Fragment header: L4 not parsed */
	MX_CNT_UNPARSED,           /* truncated or malformed header, or beyond the parser bounds */
	MX_CNT_FILTER_MISS,        /* TCP, no monitor filter matches */
	MX_CNT_VERDICT_BYPASS,     /* verdict BYPASS applied in the kernel */
	MX_CNT_VERDICT_DROP,       /* verdict DROP applied in the kernel */
	MX_CNT_VERDICT_STATE_ONLY, /* verdict STATE_ONLY applied in the kernel (forwarded, counted) */
	MX_CNT_VERDICT_CTRL,       /* SYN/FIN/RST (or a watched ACK) of a flow with a verdict: sent on to user space */
	MX_CNT_NO_XSK_FALLBACK,    /* meant for a socket, none bound at the index: kernel path */
	MX_CNT_FAIL_CLOSED_DROP,   /* meant for a socket, none bound, fail_closed: dropped */
	MX_CNT_DEVMAP_MISS,        /* inline, tx_ports has no entry for egress_slot: XDP_PASS */
	/* after the program: redirects the kernel could not complete (the xdp_redirect_err
	 * tracepoint, counted by mosxdp_redirect_err; 0 where it is not attached) */
	MX_CNT_XSK_REDIRECT_ERR,   /* counted in to_xsk, refused by the socket: fill ring empty, RX ring full, ... */
	MX_CNT_XSK_REDIRECT_OTHER, /* of those, errors the socket's XDP_STATISTICS do not count (not bound, wrong queue) */
	MX_CNT_FORWARD_REDIRECT_ERR, /* counted in kernel_forward, refused by the devmap (peer down, frame too large) */
	/* observe-only (MX_IF_OBSERVE): copies of frames meant for user space */
	MX_CNT_OBSERVED,           /* copied into the observed ringbuf (the frame took the kernel path) */
	MX_CNT_OBSERVE_LOST,       /* not copied: the ringbuf was full (Python is behind); the frame still went on */
	/* a run split over MX_WORKERS workers (worker w owns the RX queues q, q % MX_WORKERS == w) */
	MX_CNT_FRAMES_OFF_WORKER,  /* counted in to_xsk: an IP frame that came in on a queue of another worker than
				    * its flow's symmetric hash names (flowhash.h): the RSS is not symmetric.
				    * The queue's worker still gets it */
	MX_CNT__MAX
};

/* Index of redirect_maps: the ids of this program's own maps, written by user space after
 * the load, so that mosxdp_redirect_err counts only redirects through them. */
#define MX_REDIRECT_MAP_XSK 0
#define MX_REDIRECT_MAP_DEVMAP 1
#define MX_REDIRECT_MAPS 2

#endif /* MOSXDP_H */
