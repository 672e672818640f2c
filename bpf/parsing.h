/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * parsing.h: bounds-checked cursor parsers for the XDP program.
 *
 * A cursor walks forward over [pos, end). Every parser checks that the header it
 * returns lies entirely before `end` (the verifier insists, and truncated frames are
 * real) and advances the cursor past it. A parser failure is never a reason to drop:
 * mx_parse() reports MX_PARSE_UNPARSED and the caller takes the kernel path.
 *
 * Nothing here crosses the kernel/user boundary except struct mx_flow_view (mosxdp.h).
 */
#ifndef MOSXDP_PARSING_H
#define MOSXDP_PARSING_H

#include <linux/types.h>
/* The UAPI headers, not the kernel's own <linux/ip.h> and kin: those pull in skbuff.h and
 * much of the kernel, and bcc took 2.3 s to compile the program with them, 0.9 s without
 * (the same instructions: the structs are the UAPI ones either way). */
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "mosxdp.h"

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif
#define MX_ETH_P_QINQ_OLD 0x9100 /* pre-standard QinQ outer tag, still seen on switches */

/* IPv6 extension header numbers walked by mx_parse_ipv6 (IANA protocol numbers). */
#define MX_IPV6_HOPOPTS 0
#define MX_IPV6_ROUTING 43
#define MX_IPV6_FRAGMENT 44
#define MX_IPV6_AH 51
#define MX_IPV6_DSTOPTS 60
#define MX_IPV6_MOBILITY 135

/* IPv4 frag_off bits (host order after ntohs). */
#define MX_IP_MF 0x2000
#define MX_IP_OFFMASK 0x1FFF

/* ICMP protocol numbers (IPv4's ICMP, IPv6's ICMPv6) and the ICMP header every message has
 * (type, code, checksum, 4 bytes that depend on the type). */
#define MX_IPPROTO_ICMP 1
#define MX_IPPROTO_ICMPV6 58
#define MX_ICMP_HDR_LEN 8

/* TCP flag bits of byte 13 of the TCP header. */
#define MX_TCP_FIN 0x01
#define MX_TCP_SYN 0x02
#define MX_TCP_RST 0x04
#define MX_TCP_ACK 0x10

/* Where the walk is: the next unread byte and the end of the frame. */
struct mx_cursor {
	void *pos;
	void *end;
};

/* One 802.1Q / 802.1ad tag as it sits after the MAC addresses (UAPI has no struct for it). */
struct mx_vlan_tag {
	__be16 tci;
	__be16 encap_proto;
};

/* IPv6 extension header prefix common to all walked types (RFC 8200 4.x). */
struct mx_ipv6_ext {
	__u8 nexthdr;
	__u8 hdrlen;
};

/* IPv6 Fragment header (RFC 8200 4.5). */
struct mx_ipv6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset << 3 | M */
	__be32 identification;
};

/* Outcome of mx_parse(). */
enum mx_parse_result {
	MX_PARSE_TCP = 0,  /* struct mx_pkt fully filled */
	MX_PARSE_NOT_IP,   /* L2 parsed; not IPv4/IPv6 */
	MX_PARSE_NOT_TCP,  /* IP parsed; upper-layer protocol not TCP (UDP: ports in the view) */
	MX_PARSE_FRAGMENT, /* IP fragment: L4 not parsed */
	MX_PARSE_UNPARSED, /* truncated, malformed, or past the parser bounds */
	MX_PARSE_DATAGRAM, /* UDP, ICMP (IPv4) or ICMPv6 (IPv6) with its 8-byte header: the flow
			    * key's ports and payload_len filled (the view's ports: UDP only) */
};

/* What the entry point needs of a parsed TCP, UDP or ICMP frame (program-private). */
struct mx_pkt {
	struct mx_flow_view view; /* the filter's view; also the source of the flow key */
	__u16 vlan_ids[2];        /* outermost two VLAN ids, host order, 0 = absent */
	__be16 key_sport;         /* the flow key's ports: TCP/UDP ports; ICMP: the type, and */
	__be16 key_dport;         /* the counterpart type (echo request/reply ...) or the code */
	__u8 tcp_flags;           /* byte 13 of the TCP header */
	__u8 pad[3];
	__u32 payload_len;        /* payload bytes per the IP length fields: TCP's, UDP's, ICMP's
				   * beyond its 8-byte header */
	__u32 frame_len;          /* data_end - data */
	__u32 ip_len;             /* IPv4 total length; IPv6 40 + payload length */
	__u32 seq;                /* TCP sequence number, host order */
	__u32 ack_seq;            /* TCP acknowledgment number, host order */
};

/* Return a pointer to the next `len` bytes and advance, or NULL if they pass `end`. */
static __always_inline void *mx_cursor_take(struct mx_cursor *c, __u32 len)
{
	void *p = c->pos;

	if (p + len > c->end)
		return NULL;
	c->pos = p + len;
	return p;
}

/* Ethernet header plus any stack of VLAN tags (bounded). Returns the inner ethertype
 * (network order) or 0 when the frame is truncated or has too many tags. */
static __always_inline __be16 mx_parse_eth(struct mx_cursor *c, struct mx_pkt *pkt)
{
	struct ethhdr *eth = mx_cursor_take(c, sizeof(*eth));
	__be16 proto;
	int i;

	if (!eth)
		return 0;
	proto = eth->h_proto;

#pragma unroll
	for (i = 0; i < MX_MAX_VLAN_DEPTH; i++) {
		struct mx_vlan_tag *tag;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD) &&
		    proto != bpf_htons(MX_ETH_P_QINQ_OLD))
			return proto;
		tag = mx_cursor_take(c, sizeof(*tag));
		if (!tag)
			return 0;
		if (i < 2)
			pkt->vlan_ids[i] = bpf_ntohs(tag->tci) & 0x0FFF;
		proto = tag->encap_proto;
	}
	/* still a tag after MX_MAX_VLAN_DEPTH tags: give up */
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD) ||
	    proto == bpf_htons(MX_ETH_P_QINQ_OLD))
		return 0;
	return proto;
}

/* IPv4 header with options. Fills the view and *ip_payload (IP total length minus the
 * header). Returns the MX_PARSE_* outcome so far (MX_PARSE_TCP = carry on with TCP). */
static __always_inline int mx_parse_ipv4(struct mx_cursor *c, struct mx_pkt *pkt, __u32 *ip_payload)
{
	struct iphdr *ip = c->pos;
	__u32 hlen, tot_len;

	if ((void *)(ip + 1) > c->end)
		return MX_PARSE_UNPARSED;
	if (ip->version != 4 || ip->ihl < 5)
		return MX_PARSE_UNPARSED;
	hlen = ip->ihl * 4;
	if (!mx_cursor_take(c, hlen))
		return MX_PARSE_UNPARSED;
	tot_len = bpf_ntohs(ip->tot_len);
	if (tot_len < hlen)
		return MX_PARSE_UNPARSED;

	pkt->view.ip_version = 4;
	pkt->view.ip_proto = ip->protocol;
	pkt->view.src[0] = ip->saddr;
	pkt->view.dst[0] = ip->daddr;
	pkt->ip_len = tot_len;
	*ip_payload = tot_len - hlen;

	if (bpf_ntohs(ip->frag_off) & (MX_IP_MF | MX_IP_OFFMASK))
		return MX_PARSE_FRAGMENT;
	if (ip->protocol != IPPROTO_TCP)
		return MX_PARSE_NOT_TCP;
	return MX_PARSE_TCP;
}

/* IPv6 header and a bounded walk of extension headers up to the upper-layer header.
 * Any Fragment header makes the frame a fragment (L4 not parsed); ESP and unknown
 * next headers end the walk as "not TCP". */
static __always_inline int mx_parse_ipv6(struct mx_cursor *c, struct mx_pkt *pkt, __u32 *ip_payload)
{
	struct ipv6hdr *ip6 = mx_cursor_take(c, sizeof(*ip6));
	__u32 remaining;
	__u8 nexthdr;
	int i;

	if (!ip6)
		return MX_PARSE_UNPARSED;
	if (ip6->version != 6)
		return MX_PARSE_UNPARSED;

	pkt->view.ip_version = 6;
	__builtin_memcpy(pkt->view.src, &ip6->saddr, 16);
	__builtin_memcpy(pkt->view.dst, &ip6->daddr, 16);
	remaining = bpf_ntohs(ip6->payload_len);
	pkt->ip_len = remaining + sizeof(*ip6);
	nexthdr = ip6->nexthdr;

#pragma unroll
	for (i = 0; i < MX_MAX_IPV6_EXT; i++) {
		struct mx_ipv6_ext *ext;
		__u32 len;

		switch (nexthdr) {
		case MX_IPV6_HOPOPTS:
		case MX_IPV6_ROUTING:
		case MX_IPV6_DSTOPTS:
		case MX_IPV6_MOBILITY:
		case MX_IPV6_AH:
			ext = c->pos;
			if ((void *)(ext + 1) > c->end)
				return MX_PARSE_UNPARSED;
			/* AH counts its length in 4-byte units less 2, the others in 8-byte units less 1 */
			if (nexthdr == MX_IPV6_AH)
				len = ((__u32)ext->hdrlen + 2) * 4;
			else
				len = ((__u32)ext->hdrlen + 1) * 8;
			break;
		case MX_IPV6_FRAGMENT:
			pkt->view.ip_proto = nexthdr;
			*ip_payload = remaining;
			return MX_PARSE_FRAGMENT;
		default:
			pkt->view.ip_proto = nexthdr;
			*ip_payload = remaining;
			return nexthdr == IPPROTO_TCP ? MX_PARSE_TCP : MX_PARSE_NOT_TCP;
		}
		if (!mx_cursor_take(c, len))
			return MX_PARSE_UNPARSED;
		if (len > remaining)
			return MX_PARSE_UNPARSED;
		remaining -= len;
		nexthdr = ext->nexthdr;
	}
	/* more than MX_MAX_IPV6_EXT extension headers */
	if (nexthdr == IPPROTO_TCP) {
		pkt->view.ip_proto = nexthdr;
		*ip_payload = remaining;
		return MX_PARSE_TCP;
	}
	return MX_PARSE_UNPARSED;
}

/* TCP header including its options (data offset >= 5, whole header in the frame). */
static __always_inline int mx_parse_tcp(struct mx_cursor *c, struct mx_pkt *pkt, __u32 ip_payload)
{
	struct tcphdr *tcp = c->pos;
	__u32 hlen;

	if ((void *)(tcp + 1) > c->end)
		return MX_PARSE_UNPARSED;
	if (tcp->doff < 5)
		return MX_PARSE_UNPARSED;
	hlen = tcp->doff * 4;
	if (!mx_cursor_take(c, hlen))
		return MX_PARSE_UNPARSED;
	if (ip_payload < hlen)
		return MX_PARSE_UNPARSED;

	pkt->view.sport = pkt->key_sport = tcp->source;
	pkt->view.dport = pkt->key_dport = tcp->dest;
	pkt->tcp_flags = ((__u8 *)tcp)[13];
	pkt->seq = bpf_ntohl(tcp->seq);
	pkt->ack_seq = bpf_ntohl(tcp->ack_seq);
	pkt->payload_len = ip_payload - hlen;
	return MX_PARSE_TCP;
}

/* An ICMP message type's counterpart (the flow key's second "port"), as Zeek pairs them:
 * requests with their replies; any other type has none and the code stands in for it. */
static __always_inline __u8 mx_icmp_counterpart(__u8 ip_version, __u8 type, __u8 code)
{
	if (ip_version == 4) {
		switch (type) {
		case 8: return 0;   /* echo request / reply */
		case 0: return 8;
		case 13: return 14; /* timestamp */
		case 14: return 13;
		case 15: return 16; /* information */
		case 16: return 15;
		case 10: return 9;  /* router solicitation / advertisement */
		case 9: return 10;
		case 17: return 18; /* address mask */
		case 18: return 17;
		}
		return code;
	}
	switch (type) {
	case 128: return 129;   /* echo request / reply */
	case 129: return 128;
	case 133: return 134;   /* router solicitation / advertisement */
	case 134: return 133;
	case 135: return 136;   /* neighbour solicitation / advertisement */
	case 136: return 135;
	case 130: return 131;   /* multicast listener query / report */
	case 131: return 130;
	case 139: return 140;   /* node information query / response */
	case 140: return 139;
	case 144: return 145;   /* home agent address discovery */
	case 145: return 144;
	}
	return code;
}

/* UDP, ICMP or ICMPv6 after the IP headers: MX_PARSE_DATAGRAM with the key's ports, or
 * MX_PARSE_NOT_TCP when the 8-byte header is not all there (UDP ports stay for a raw
 * filter when the header is in the frame). */
static __always_inline int mx_parse_datagram(struct mx_cursor *c, struct mx_pkt *pkt,
					     __u32 ip_payload)
{
	__u8 proto = pkt->view.ip_proto;
	__u8 *hdr;

	if (proto == IPPROTO_UDP) {
		struct udphdr *udp = mx_cursor_take(c, sizeof(*udp));

		if (!udp)
			return MX_PARSE_NOT_TCP;
		pkt->view.sport = pkt->key_sport = udp->source;
		pkt->view.dport = pkt->key_dport = udp->dest;
	} else if ((proto == MX_IPPROTO_ICMP && pkt->view.ip_version == 4) ||
		   (proto == MX_IPPROTO_ICMPV6 && pkt->view.ip_version == 6)) {
		hdr = mx_cursor_take(c, MX_ICMP_HDR_LEN);
		if (!hdr)
			return MX_PARSE_NOT_TCP;
		pkt->key_sport = bpf_htons(hdr[0]);
		pkt->key_dport = bpf_htons(mx_icmp_counterpart(pkt->view.ip_version, hdr[0], hdr[1]));
	} else {
		return MX_PARSE_NOT_TCP;
	}
	if (ip_payload < MX_ICMP_HDR_LEN)   /* the UDP header is 8 bytes too */
		return MX_PARSE_NOT_TCP;
	pkt->payload_len = ip_payload - MX_ICMP_HDR_LEN;
	return MX_PARSE_DATAGRAM;
}

/* Parse a whole frame. `pkt` must be zeroed by the caller. */
static __always_inline int mx_parse(void *data, void *data_end, struct mx_pkt *pkt)
{
	struct mx_cursor c = { .pos = data, .end = data_end };
	__u32 ip_payload = 0;
	__be16 proto;
	int rc;

	pkt->frame_len = data_end - data;
	proto = mx_parse_eth(&c, pkt);
	if (!proto)
		return MX_PARSE_UNPARSED;
	pkt->view.ethertype = proto;
	if (proto == bpf_htons(ETH_P_IP))
		rc = mx_parse_ipv4(&c, pkt, &ip_payload);
	else if (proto == bpf_htons(ETH_P_IPV6))
		rc = mx_parse_ipv6(&c, pkt, &ip_payload);
	else
		return MX_PARSE_NOT_IP;
	if (rc == MX_PARSE_NOT_TCP)
		return mx_parse_datagram(&c, pkt, ip_payload);
	if (rc != MX_PARSE_TCP)
		return rc;
	return mx_parse_tcp(&c, pkt, ip_payload);
}

#endif /* MOSXDP_PARSING_H */
