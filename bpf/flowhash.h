/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * flowhash.h: the symmetric flow hash of a run split over workers, the same value as
 * mosxdp/core/split.py computes (docs/workers.md):
 *
 *     mix(addr, port) = (((addr << 16) | port) * 0x9E3779B97F4A7C15 mod 2**64) >> 32
 *     worker          = ((mix(src, sport) ^ mix(dst, dport)) * N) >> 32
 *
 * addr: the IPv4 address, or the XOR of an IPv6 address's four 32-bit words (host order);
 * port: the TCP port in host order, 0 for anything else. Included by mosxdp.c (which counts
 * the frames that came in on a queue of another worker) and by steer.c (the testbed's tc
 * program that puts a flow's frames, both ways, on the queue of its worker).
 */
#ifndef MX_FLOWHASH_H
#define MX_FLOWHASH_H

#include <linux/types.h>

#define MX_FLOWHASH_MULTIPLIER 0x9E3779B97F4A7C15ULL

static __always_inline __u32 mx_endpoint_mix(__u32 addr, __u16 port)
{
	__u64 v = ((__u64)addr << 16) | port;

	return (__u32)((v * MX_FLOWHASH_MULTIPLIER) >> 32);
}

/* Addresses as four __be32 words (IPv4: word 0, the rest zero), ports in host order. */
static __always_inline __u32 mx_fold_addr(const __be32 *a)
{
	return bpf_ntohl(a[0]) ^ bpf_ntohl(a[1]) ^ bpf_ntohl(a[2]) ^ bpf_ntohl(a[3]);
}

static __always_inline __u32 mx_flow_hash(const __be32 *src, __u16 sport, const __be32 *dst,
					  __u16 dport)
{
	return mx_endpoint_mix(mx_fold_addr(src), sport) ^ mx_endpoint_mix(mx_fold_addr(dst), dport);
}

static __always_inline __u32 mx_hash_worker(__u32 hash, __u32 workers)
{
	return (__u32)(((__u64)hash * workers) >> 32);
}

#endif /* MX_FLOWHASH_H */
