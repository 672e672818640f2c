/*
 * _splitscan: the loop over a classic pcap file's records of mosxdp/engine/split_feed.py
 * (a run split over workers) in C; that module has the same function in Python for when
 * this one is absent or MOSXDP_PURE_PYTHON=1.
 *
 *     scan_records(map, off, stop_at, little, counts, linktype, buckets, sizes, index)
 *         -> (off, index)
 *     scan_blocks(fd, block, base, have, off, stop_at, size, little, counts, linktype,
 *                 buckets, sizes, index) -> (off, index, base, have)
 *     resync(map, at, little, ns) -> offset of a record header at or after at, or -1
 *     die_with_parent() -> None: this process is killed when its parent ends
 *     pcapng_to_pcap(map, fd) -> (linktype, frames), or None
 *
 * It reads only the frames of the fast path (fast_hash below): IPv4 without options and
 * IPv6 without extension headers, under up to two VLAN tags, after the link header of the
 * capture's link type (those mosxdp/io/linklayer.py reads); a TCP segment that is not a
 * fragment is hashed by its addresses and ports, any other such frame by its address pair
 * (mosxdp/core/split.py, bpf/flowhash.h), and a frame of another ethertype goes to worker
 * 0. It stops at the first record it does not handle (cut short, corrupt, or a frame off
 * the fast path) and returns its offset: the caller reads that one with the core's
 * parser. A frame the parser finds malformed may be hashed here: it is only counted,
 * wherever it goes.
 *
 * counts: int64 per bucket (writable buffer); buckets: uint16 per frame; sizes: uint32 per
 * frame (writable buffers, filled from frame number index on).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdlib.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#define BUCKET_BITS 12
#define BUCKET_SHIFT (32 - BUCKET_BITS)
#define MAX_RECORD (256u << 20)      /* io/pcapng.py MAX_RECORD */
#define MULTIPLIER 0x9E3779B97F4A7C15ULL

static uint32_t rd32(const uint8_t *p, int little)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return little ? v : __builtin_bswap32(v);
}

static uint32_t be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint32_t mix(uint32_t addr, uint32_t port)
{
	return (uint32_t)(((((uint64_t)addr << 16) | port) * MULTIPLIER) >> 32);
}

#define HASHED 1
#define NO_IP 2         /* worker 0 (counted in bucket 0) */

static int is_tpid(unsigned type)
{
	return type == 0x8100 || type == 0x88A8 || type == 0x9100;   /* packet.py VLAN_TPIDS */
}

static uint32_t fold6(const uint8_t *a)
{
	return be32(a) ^ be32(a + 4) ^ be32(a + 8) ^ be32(a + 12);
}

/* The EtherType of a loopback capture's address family (io/linklayer.py's _AF_INET6). */
static unsigned family_type(uint32_t family)
{
	if (family == 2)
		return 0x0800;
	if (family == 10 || family == 24 || family == 28 || family == 30)
		return 0x86DD;
	return 0;
}

/*
 * Where the frame's network layer starts (*l3) and its EtherType (*type), by the capture's
 * link type, as io/linklayer.py gives the core the frame; 0 when the frame is shorter than
 * its link header or the link type is not one of those.
 */
static int link_layer(const uint8_t *f, uint32_t caplen, unsigned linktype, uint32_t *l3,
		      unsigned *type)
{
	uint32_t family;

	switch (linktype) {
	case 1:         /* Ethernet */
		if (caplen < 14)
			return 0;
		*l3 = 14;
		*type = ((unsigned)f[12] << 8) | f[13];
		return 1;
	case 113:       /* Linux cooked v1: the protocol ends its 16 bytes */
		if (caplen < 16)
			return 0;
		*l3 = 16;
		*type = ((unsigned)f[14] << 8) | f[15];
		return 1;
	case 276:       /* Linux cooked v2: the protocol begins its 20 bytes */
		if (caplen < 20)
			return 0;
		*l3 = 20;
		*type = ((unsigned)f[0] << 8) | f[1];
		return 1;
	case 12: case 14: case 101:     /* raw IP: the version nibble */
		if (caplen < 1)
			return 0;
		*l3 = 0;
		*type = f[0] >> 4 == 4 ? 0x0800 : f[0] >> 4 == 6 ? 0x86DD : 0;
		return 1;
	case 228:
		*l3 = 0;
		*type = 0x0800;
		return 1;
	case 229:
		*l3 = 0;
		*type = 0x86DD;
		return 1;
	case 0:         /* BSD loopback: the family in the capturing host's byte order */
		if (caplen < 4)
			return 0;
		memcpy(&family, f, 4);
		if (family > 0xFFFF)
			family = __builtin_bswap32(family);
		*l3 = 4;
		*type = family_type(family);
		return 1;
	case 108:       /* OpenBSD loopback: network byte order */
		if (caplen < 4)
			return 0;
		*l3 = 4;
		*type = family_type(be32(f));
		return 1;
	}
	return 0;
}

/*
 * The flow hash of the frame at f (caplen bytes): HASHED with the hash in *hash, NO_IP for
 * a frame of another ethertype, or 0 when the core's parser must read it: IPv4 with
 * options, IPv6 with extension headers (or a protocol other than TCP, UDP and ICMPv6),
 * more than two VLAN tags, a frame shorter than its headers.
 */
static int fast_hash(const uint8_t *f, uint32_t caplen, unsigned linktype, uint32_t *hash)
{
	uint32_t l3, sport = 0, dport = 0;
	unsigned type, tags;

	if (!link_layer(f, caplen, linktype, &l3, &type))
		return 0;
	for (tags = 0; is_tpid(type); tags++) {
		if (tags == 2 || caplen < l3 + 4)
			return 0;
		type = ((unsigned)f[l3 + 2] << 8) | f[l3 + 3];
		l3 += 4;
	}
	if (type == 0x0800) {
		const uint8_t *ip = f + l3;

		if (caplen < l3 + 24 || ip[0] != 0x45)
			return 0;
		if (ip[9] == 6 && !((ip[6] & 0x3F) || ip[7])) {
			sport = ((uint32_t)ip[20] << 8) | ip[21];
			dport = ((uint32_t)ip[22] << 8) | ip[23];
		}
		*hash = mix(be32(ip + 12), sport) ^ mix(be32(ip + 16), dport);
		return HASHED;
	}
	if (type == 0x86DD) {
		const uint8_t *ip = f + l3;

		if (caplen < l3 + 44 || ip[0] >> 4 != 6)
			return 0;
		if (ip[6] == 6) {
			sport = ((uint32_t)ip[40] << 8) | ip[41];
			dport = ((uint32_t)ip[42] << 8) | ip[43];
		} else if (ip[6] != 17 && ip[6] != 58) {
			return 0;
		}
		*hash = mix(fold6(ip + 8), sport) ^ mix(fold6(ip + 24), dport);
		return HASHED;
	}
	return NO_IP;
}

/* The record at off, whole: its caplen in *caplen, else 0. */
static int whole_record(const uint8_t *base, Py_ssize_t size, Py_ssize_t off, int little,
			uint32_t *caplen)
{
	if (off + 16 > size)
		return 0;
	*caplen = rd32(base + off + 8, little);
	if (*caplen > MAX_RECORD || off + 16 + (Py_ssize_t)*caplen > size)
		return 0;
	return 1;
}

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t at_least,
		      const char *what)
{
	if (PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0)
		return -1;
	if (view->len < at_least) {
		PyErr_Format(PyExc_ValueError, "%s: %zd bytes, %zd needed", what, view->len, at_least);
		PyBuffer_Release(view);
		return -1;
	}
	return 0;
}

#define NO_IP_BUCKET (1u << BUCKET_BITS)

/*
 * The writable arrays of the record loops: counts (int64 per bucket), buckets (uint16 per
 * frame) and sizes (uint32 per frame); *room, the frames both hold. -1 with the error set
 * (nothing held), else 0: release_arrays() gives them back.
 */
static int get_arrays(PyObject *counts_obj, PyObject *buckets_obj, PyObject *sizes_obj,
		      Py_buffer *counts, Py_buffer *buckets, Py_buffer *sizes, Py_ssize_t *room)
{
	if (get_buffer(counts_obj, counts, 1, 8 << BUCKET_BITS, "counts") < 0)
		return -1;
	if (get_buffer(buckets_obj, buckets, 1, 0, "buckets") < 0) {
		PyBuffer_Release(counts);
		return -1;
	}
	if (get_buffer(sizes_obj, sizes, 1, 0, "sizes") < 0) {
		PyBuffer_Release(buckets);
		PyBuffer_Release(counts);
		return -1;
	}
	*room = buckets->len / 2 < sizes->len / 4 ? buckets->len / 2 : sizes->len / 4;
	return 0;
}

static void release_arrays(Py_buffer *counts, Py_buffer *buckets, Py_buffer *sizes)
{
	PyBuffer_Release(sizes);
	PyBuffer_Release(buckets);
	PyBuffer_Release(counts);
}


/*
 * The records of base[0:size) from off on, up to stop_at: each fast-path frame's bucket
 * counted and stored at *index, its record's length too; returns the offset of the first
 * record not read (stop_at or past it, a record not whole in base, a frame off the fast
 * path, or room frames stored). Runs without the GIL.
 */
static Py_ssize_t walk(const uint8_t *base, Py_ssize_t size, Py_ssize_t off,
		       Py_ssize_t stop_at, int little, unsigned linktype, int64_t *count,
		       uint16_t *bucket_of, uint32_t *size_of, Py_ssize_t *index, Py_ssize_t room)
{
	Py_ssize_t i = *index;
	uint32_t caplen;

	while (i < room && off >= 0 && off < stop_at
	       && whole_record(base, size, off, little, &caplen)) {
		uint32_t hash = 0;
		int kind = fast_hash(base + off + 16, caplen, linktype, &hash);

		if (!kind)
			break;
		if (kind == HASHED) {
			count[hash >> BUCKET_SHIFT]++;
			bucket_of[i] = hash >> BUCKET_SHIFT;
		} else {
			count[0]++;
			bucket_of[i] = NO_IP_BUCKET;
		}
		size_of[i++] = 16 + caplen;
		off += 16 + caplen;
	}
	*index = i;
	return off;
}

/*
 * scan_records(map, off, stop_at, little, counts, linktype, buckets, sizes, index)
 *     -> (off, index)
 *
 * From the record at off (frame number index) on, up to the record at stop_at (-1: the
 * end): each fast-path frame's bucket counted in counts, stored in buckets[index]
 * (NO_IP_BUCKET for a frame without IP: worker 0), and its record's length (header
 * included) in sizes[index]. Stops at stop_at or past it, at the end, at a record cut
 * short, at a frame off the fast path, or when buckets or sizes is full. The walk runs
 * without the GIL: the parent scans parts of the capture in threads.
 */

static PyObject *scan_records(PyObject *self, PyObject *args)
{
	PyObject *map_obj, *counts_obj, *buckets_obj, *sizes_obj;
	Py_ssize_t off, stop_at, index, room;
	int little;
	unsigned linktype;
	Py_buffer map, counts, buckets, sizes;
	PyObject *result = NULL;

	if (!PyArg_ParseTuple(args, "OnnpOIOOn", &map_obj, &off, &stop_at, &little, &counts_obj,
			      &linktype, &buckets_obj, &sizes_obj, &index))
		return NULL;
	if (get_buffer(map_obj, &map, 0, 0, "map") < 0)
		return NULL;
	if (get_arrays(counts_obj, buckets_obj, sizes_obj, &counts, &buckets, &sizes, &room) < 0)
		goto map_done;
	if (index < 0 || index > room) {
		PyErr_Format(PyExc_ValueError, "frame %zd: outside buckets and sizes (%zd)", index, room);
		goto arrays_done;
	}

	const uint8_t *base = map.buf;
	Py_ssize_t size = map.len;
	int64_t *count = counts.buf;
	uint16_t *bucket_of = buckets.buf;
	uint32_t *size_of = sizes.buf;

	if (stop_at < 0 || stop_at > size)
		stop_at = size;
	Py_BEGIN_ALLOW_THREADS
	off = walk(base, size, off, stop_at, little, linktype, count, bucket_of, size_of, &index,
		   room);
	Py_END_ALLOW_THREADS
	result = Py_BuildValue("nn", off, index);

arrays_done:
	release_arrays(&counts, &buckets, &sizes);
map_done:
	PyBuffer_Release(&map);
	return result;
}

/* Fills block[0:len) from the file at pos (short only at the end); -1 with errno. */
static Py_ssize_t read_block(int fd, uint8_t *block, Py_ssize_t len, Py_ssize_t pos)
{
	Py_ssize_t got = 0;

	while (got < len) {
		ssize_t n = pread(fd, block + got, len - got, pos + got);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			break;
		got += n;
	}
	return got;
}

/*
 * scan_blocks(fd, block, base, have, off, stop_at, size, little, counts, linktype,
 *             buckets, sizes, index) -> (off, index, base, have)
 *
 * scan_records over the file itself: block holds the file's bytes [base, base + have);
 * when the walk stops at a record not whole in it, the block is read again from that
 * record (pread) and the walk goes on. Returns where it stopped, as scan_records does,
 * with what the block then holds: at stop_at, at the end of the file (size) or a record
 * cut short there, at a frame off the fast path, when buckets or sizes is full, or at a
 * record larger than the block (the caller grows it). The whole walk runs without the
 * GIL: a plan begun while the main thread imports the package (split_feed.py's early
 * pass) does not wait for the GIL at every block.
 */
static PyObject *scan_blocks(PyObject *self, PyObject *args)
{
	PyObject *block_obj, *counts_obj, *buckets_obj, *sizes_obj;
	Py_ssize_t base, have, off, stop_at, size, index, room;
	int fd, little, failed = 0;
	unsigned linktype;
	Py_buffer block, counts, buckets, sizes;
	PyObject *result = NULL;

	if (!PyArg_ParseTuple(args, "iOnnnnnpOIOOn", &fd, &block_obj, &base, &have, &off,
			      &stop_at, &size, &little, &counts_obj, &linktype, &buckets_obj,
			      &sizes_obj, &index))
		return NULL;
	if (get_buffer(block_obj, &block, 1, 0, "block") < 0)
		return NULL;
	if (get_arrays(counts_obj, buckets_obj, sizes_obj, &counts, &buckets, &sizes, &room) < 0)
		goto block_done;
	if (index < 0 || index > room || have < 0 || have > block.len || off < base) {
		PyErr_Format(PyExc_ValueError, "frame %zd, block [%zd, +%zd) of %zd, offset %zd: "
			     "outside the arrays or the block", index, base, have, block.len, off);
		goto arrays_done;
	}
	if (stop_at < 0 || stop_at > size)
		stop_at = size;

	Py_BEGIN_ALLOW_THREADS
	for (;;) {
		uint32_t caplen;
		Py_ssize_t rel;

		off = base + walk(block.buf, have, off - base, stop_at - base, little, linktype,
				  counts.buf, buckets.buf, sizes.buf, &index, room);
		rel = off - base;
		if (index == room || off >= stop_at)
			break;
		if (whole_record(block.buf, have, rel, little, &caplen))
			break;                  /* a frame off the fast path */
		if (base + have >= size)
			break;                  /* the end, or a record cut short there */
		if (rel + 16 <= have) {
			caplen = rd32((const uint8_t *)block.buf + rel + 8, little);
			if (caplen > MAX_RECORD || 16 + (Py_ssize_t)caplen > block.len)
				break;          /* corrupt, or larger than the block */
		}
		if (rel == 0 && have == block.len)
			break;                  /* nothing more would fit */
		base = off;
		have = read_block(fd, block.buf, block.len, base);
		if (have < 0) {
			failed = errno;
			have = 0;
			break;
		}
	}
	Py_END_ALLOW_THREADS
	if (failed) {
		errno = failed;
		PyErr_SetFromErrno(PyExc_OSError);
	} else {
		result = Py_BuildValue("nnnn", off, index, base, have);
	}

arrays_done:
	release_arrays(&counts, &buckets, &sizes);
block_done:
	PyBuffer_Release(&block);
	return result;
}

/*
 * resync(map, at, little, ns) -> offset, or -1
 *
 * The first offset at or after at where RESYNC_CHAIN record headers follow one another
 * as a capture's do (or reach the end of the file exactly): a fraction of a second under
 * a second, a captured length within the length on the wire and MAX_RECORD, a time within
 * a day of the record before. A guess, looked for within RESYNC_WINDOW bytes: the caller
 * accepts it only when the walk from the records before lands on it exactly.
 */
#define RESYNC_CHAIN 16
#define RESYNC_WINDOW (8 << 20)

static int plausible_chain(const uint8_t *base, Py_ssize_t size, Py_ssize_t at, int little,
			   uint32_t frac_max)
{
	uint32_t prev_sec = 0;
	int k;

	for (k = 0; k < RESYNC_CHAIN; k++) {
		uint32_t sec, frac, caplen, origlen;

		if (at == size)
			return k > 0;
		if (at + 16 > size)
			return 0;
		sec = rd32(base + at, little);
		frac = rd32(base + at + 4, little);
		caplen = rd32(base + at + 8, little);
		origlen = rd32(base + at + 12, little);
		if (frac >= frac_max || caplen == 0 || caplen > origlen || caplen > MAX_RECORD
		    || at + 16 + (Py_ssize_t)caplen > size)
			return 0;
		if (k > 0 && (sec < prev_sec ? prev_sec - sec : sec - prev_sec) > 86400)
			return 0;
		prev_sec = sec;
		at += 16 + caplen;
	}
	return 1;
}

static PyObject *resync(PyObject *self, PyObject *args)
{
	PyObject *map_obj;
	Py_ssize_t at, end, found = -1;
	int little, ns;
	Py_buffer map;

	if (!PyArg_ParseTuple(args, "Onpp", &map_obj, &at, &little, &ns))
		return NULL;
	if (get_buffer(map_obj, &map, 0, 0, "map") < 0)
		return NULL;
	end = at + RESYNC_WINDOW < map.len ? at + RESYNC_WINDOW : map.len;
	Py_BEGIN_ALLOW_THREADS
	for (; at >= 0 && at < end; at++) {
		if (plausible_chain(map.buf, map.len, at, little, ns ? 1000000000u : 1000000u)) {
			found = at;
			break;
		}
	}
	Py_END_ALLOW_THREADS
	PyBuffer_Release(&map);
	return PyLong_FromSsize_t(found);
}

/*
 * pcapng_to_pcap(map, fd) -> (linktype, frames), or None
 *
 * A pcapng capture (map: its bytes) written to fd as the classic pcap a split run's
 * workers map (engine/split_input.py): a little-endian microsecond header, then per
 * Enhanced Packet Block a record of its timestamp in microseconds (io/pcapng.py's
 * if_tsresol and if_tsoffset rules), its captured length, its length on the wire (never
 * below the captured one: io/pcap.py's PcapWriter writes such a frame whole) and its
 * bytes as captured. Blocks of other types are skipped, as the reader skips them.
 *
 * Only what io/pcapng.py reads the same way: None, with fd's content undefined, for a
 * capture with any block the reader would name an error or read otherwise (cut short,
 * corrupt, a simple or obsolete packet block, interfaces of more than one link type, a
 * time before 1970 or past 2106); the caller then writes the reader's frames instead.
 * The walk runs without the GIL.
 */
#define SHB 0x0A0D0D0Au
#define IDB 1u
#define EPB 6u
#define OUT_BYTES (1 << 20)

struct interface {
	uint64_t mul, div;      /* div 0: every timestamp divides to 0 */
	unsigned shift;
	int64_t off_us;
};

struct pcapng_walk {
	const uint8_t *in;
	Py_ssize_t size;
	int fd;
	uint8_t *out;
	Py_ssize_t used;
	struct interface *ifaces;
	Py_ssize_t n_ifaces, room;
	long linktype;          /* -1: no interface yet */
	Py_ssize_t frames;
	int error;              /* errno of a failed write */
};

static int flush_out(struct pcapng_walk *w)
{
	Py_ssize_t done = 0;

	while (done < w->used) {
		ssize_t n = write(w->fd, w->out + done, w->used - done);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			w->error = errno;
			return -1;
		}
		done += n;
	}
	w->used = 0;
	return 0;
}

static int put(struct pcapng_walk *w, const void *bytes, Py_ssize_t len)
{
	const uint8_t *p = bytes;

	while (len > 0) {
		Py_ssize_t take = OUT_BYTES - w->used;

		if (take > len)
			take = len;
		memcpy(w->out + w->used, p, take);
		w->used += take;
		p += take;
		len -= take;
		if (w->used == OUT_BYTES && flush_out(w) < 0)
			return -1;
	}
	return 0;
}

static void le32(uint8_t *p, uint32_t v)
{
	p[0] = v & 0xFF;
	p[1] = (v >> 8) & 0xFF;
	p[2] = (v >> 16) & 0xFF;
	p[3] = v >> 24;
}

/* The interface block at off (blen bytes): 1 kept, 0 declined (io/pcapng.py _parse_idb). */
static int add_interface(struct pcapng_walk *w, Py_ssize_t off, uint32_t blen, int little)
{
	const uint8_t *b = w->in + off;
	struct interface iface = {1, 1, 0, 0};
	unsigned linktype;
	Py_ssize_t opt = 16, end = (Py_ssize_t)blen - 4;

	if (blen < 20)
		return 0;
	linktype = little ? (b[8] | (b[9] << 8)) : ((b[8] << 8) | b[9]);
	if (w->linktype >= 0 && (unsigned long)w->linktype != linktype)
		return 0;
	while (opt + 4 <= end) {
		unsigned code = little ? (b[opt] | (b[opt + 1] << 8)) : ((b[opt] << 8) | b[opt + 1]);
		unsigned olen = little ? (b[opt + 2] | (b[opt + 3] << 8))
				       : ((b[opt + 2] << 8) | b[opt + 3]);
		Py_ssize_t val = opt + 4;

		if (code == 0 || val + olen > end)
			break;
		if (code == 9 && olen >= 1) {           /* if_tsresol */
			unsigned r = b[val];

			iface.mul = 1;
			iface.div = 1;
			iface.shift = 0;
			if (r & 0x80) {
				iface.mul = 1000000;
				iface.shift = r & 0x7F;
			} else if (r >= 6) {
				iface.div = 1;
				for (unsigned k = 6; k < r; k++) {
					if (iface.div > UINT64_MAX / 10) {
						iface.div = 0;
						break;
					}
					iface.div *= 10;
				}
			} else {
				for (unsigned k = r; k < 6; k++)
					iface.mul *= 10;
			}
		} else if (code == 14 && olen >= 8) {   /* if_tsoffset, seconds */
			uint64_t raw;
			int64_t secs;

			memcpy(&raw, b + val, 8);
			secs = (int64_t)(little ? raw : __builtin_bswap64(raw));
			if (secs > ((int64_t)1 << 40) || secs < -((int64_t)1 << 40))
				return 0;
			iface.off_us = secs * 1000000;
		}
		opt = val + ((olen + 3) & ~3u);
	}
	if (w->n_ifaces == w->room) {
		Py_ssize_t room = w->room ? 2 * w->room : 8;
		struct interface *grown = realloc(w->ifaces, room * sizeof(*grown));

		if (grown == NULL)
			return 0;
		w->ifaces = grown;
		w->room = room;
	}
	w->ifaces[w->n_ifaces++] = iface;
	w->linktype = linktype;
	return 1;
}

/* 1: the capture written, 0: declined, -1: a write failed (w->error). */
static int walk_pcapng(struct pcapng_walk *w)
{
	Py_ssize_t off = 0;
	int little = -1;          /* no section yet */
	uint8_t header[24] = {0};

	if (put(w, header, 24) < 0)
		return -1;
	while (off < w->size) {
		uint32_t btype, blen;
		const uint8_t *b = w->in + off;

		if (w->size - off < 12)
			return 0;
		btype = rd32(b, 1);
		if (btype == SHB) {
			uint32_t bom = rd32(b + 8, 1);

			if (bom == 0x1A2B3C4Du)
				little = 1;
			else if (bom == 0x4D3C2B1Au)
				little = 0;
			else
				return 0;
			w->n_ifaces = 0;
		} else if (little < 0) {
			return 0;
		} else {
			btype = rd32(b, little);
		}
		blen = rd32(b + 4, little);
		if (blen < 12 || blen & 3 || blen > MAX_RECORD || (Py_ssize_t)blen > w->size - off)
			return 0;
		if (btype == EPB) {
			uint32_t ifid, caplen, origlen;
			uint8_t rec[16];
			uint64_t raw;
			int64_t ts;
			const struct interface *iface;

			if (blen < 32)
				return 0;
			ifid = rd32(b + 8, little);
			caplen = rd32(b + 20, little);
			origlen = rd32(b + 24, little);
			if (caplen > blen - 32 || ifid >= w->n_ifaces)
				return 0;
			iface = &w->ifaces[ifid];
			raw = ((uint64_t)rd32(b + 12, little) << 32) | rd32(b + 16, little);
			if (iface->div == 0) {
				ts = iface->off_us;
			} else {
				unsigned __int128 v = ((unsigned __int128)raw * iface->mul)
						      >> iface->shift;

				v /= iface->div;
				if (v > ((unsigned __int128)1 << 62))
					return 0;
				ts = (int64_t)v + iface->off_us;
			}
			if (ts < 0 || ts / 1000000 > UINT32_MAX)
				return 0;
			le32(rec, (uint32_t)(ts / 1000000));
			le32(rec + 4, (uint32_t)(ts % 1000000));
			le32(rec + 8, caplen);
			le32(rec + 12, origlen > caplen ? origlen : caplen);
			if (put(w, rec, 16) < 0 || put(w, b + 28, caplen) < 0)
				return -1;
			w->frames++;
		} else if (btype == IDB) {
			if (!add_interface(w, off, blen, little))
				return 0;
		} else if (btype == 2 || btype == 3) {
			return 0;               /* obsolete and simple packet blocks */
		}
		off += blen;
	}
	if (flush_out(w) < 0)
		return -1;
	le32(header, 0xA1B2C3D4u);
	le32(header + 4, 2 | (4u << 16));               /* version 2.4 */
	le32(header + 16, 262144);                      /* snap length */
	le32(header + 20, w->linktype < 0 ? 1 : (uint32_t)w->linktype);
	if (pwrite(w->fd, header, 24, 0) != 24) {
		w->error = errno ? errno : EIO;
		return -1;
	}
	return 1;
}

static PyObject *pcapng_to_pcap(PyObject *self, PyObject *args)
{
	PyObject *map_obj;
	Py_buffer map;
	struct pcapng_walk w = {0};
	int fd, done;

	if (!PyArg_ParseTuple(args, "Oi", &map_obj, &fd))
		return NULL;
	if (get_buffer(map_obj, &map, 0, 0, "map") < 0)
		return NULL;
	w.in = map.buf;
	w.size = map.len;
	w.fd = fd;
	w.linktype = -1;
	w.out = malloc(OUT_BYTES);
	if (w.out == NULL) {
		PyBuffer_Release(&map);
		return PyErr_NoMemory();
	}
	Py_BEGIN_ALLOW_THREADS
	done = walk_pcapng(&w);
	Py_END_ALLOW_THREADS
	free(w.out);
	free(w.ifaces);
	PyBuffer_Release(&map);
	if (done < 0) {
		errno = w.error;
		return PyErr_SetFromErrno(PyExc_OSError);
	}
	if (done == 0)
		Py_RETURN_NONE;
	return Py_BuildValue("ln", w.linktype < 0 ? 1L : w.linktype, w.frames);
}

/* die_with_parent(): SIGKILL when the parent ends (prctl PR_SET_PDEATHSIG). */
static PyObject *die_with_parent(PyObject *self, PyObject *unused)
{
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		return PyErr_SetFromErrno(PyExc_OSError);
	Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
	{"scan_records", scan_records, METH_VARARGS,
	 "scan_records(map, off, stop_at, little, counts, linktype, buckets, sizes, index) "
	 "-> (off, index)"},
	{"scan_blocks", scan_blocks, METH_VARARGS,
	 "scan_blocks(fd, block, base, have, off, stop_at, size, little, counts, linktype, "
	 "buckets, sizes, index) -> (off, index, base, have)"},
	{"resync", resync, METH_VARARGS,
	 "resync(map, at, little, ns) -> offset of a plausible record header at or after at, or -1"},
	{"pcapng_to_pcap", pcapng_to_pcap, METH_VARARGS,
	 "pcapng_to_pcap(map, fd) -> (linktype, frames) of the classic pcap written to fd, or "
	 "None when the capture needs the reader"},
	{"die_with_parent", die_with_parent, METH_NOARGS,
	 "die_with_parent(): this process is killed (SIGKILL) when its parent ends"},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_splitscan",
	"The record loops of a split run's input (mosxdp/engine/split_feed.py) in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__splitscan(void)
{
	return PyModule_Create(&module);
}
