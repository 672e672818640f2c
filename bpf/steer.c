/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * steer.c: a tc (clsact egress, direct action) program for veth testbeds of runs split
 * over workers (mosxdp/demo/steer.py attaches it on the endpoints' veths).
 *
 * A veth delivers a frame on the peer's RX queue of the index of the TX queue it was sent
 * on, so the two directions of a flow come in on the queues their senders picked. This
 * program makes that pick the symmetric flow hash of flowhash.h, as symmetric RSS does on a
 * real NIC: it sets the frame's hash to the flow's symmetric hash h, from which the kernel
 * picks the TX queue after this hook (no XPS map on a veth, and a socket caches the queue
 * its first frame got): reciprocal_scale(h, queues) = (h * queues) >> 32, the hash's worker
 * among as many workers as queues. So with one queue per worker, a flow's frames, both
 * ways, come in on the queue of the worker the monitor's XDP program computes for them.
 * (Writing skb->queue_mapping here would not do: the kernel picks the queue after this hook
 * and overwrites it; the skbedit action that would keep it is not in every kernel.)
 *
 * Parsed: Ethernet, IPv4 (TCP ports unless a fragment), IPv6 (TCP ports when TCP follows
 * the fixed header). Anything else keeps its hash.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>

#include "flowhash.h"

int mosxdp_steer(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__be32 src[4] = {}, dst[4] = {};
	__u16 sport = 0, dport = 0;
	__u8 proto;
	void *l4;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end || ip->ihl < 5)
			return TC_ACT_OK;
		src[0] = ip->saddr;
		dst[0] = ip->daddr;
		proto = ip->protocol;
		l4 = (void *)ip + ip->ihl * 4;
		if (ip->frag_off & bpf_htons(0x3fff))
			proto = 0;     /* a fragment goes by its addresses */
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return TC_ACT_OK;
		__builtin_memcpy(src, &ip6->saddr, 16);
		__builtin_memcpy(dst, &ip6->daddr, 16);
		proto = ip6->nexthdr;
		l4 = ip6 + 1;
	} else {
		return TC_ACT_OK;
	}
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end)
			return TC_ACT_OK;
		sport = bpf_ntohs(tcp->source);
		dport = bpf_ntohs(tcp->dest);
	}
	bpf_set_hash(skb, mx_flow_hash(src, sport, dst, dport));
	return TC_ACT_OK;
}
