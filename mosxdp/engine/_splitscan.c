/*
 * _splitscan: the two loops over a classic pcap file's records of mosxdp/engine/split_feed.py
 * (a run split over workers) in C; that module has the same functions in Python for when
 * this one is absent or MOSXDP_PURE_PYTHON=1.
 *
 *     count_buckets(map, off, little, counts, linktype) -> off
 *     assign(map, off, last, little, ns, index, limit, batch_size, table, numbers, offsets,
 *            owned, ends, n_ends, linktype) -> (index, off, last, n_ends)
 *
 * Both read only the frames of the fast path (fast_hash below): IPv4 without options and
 * IPv6 without extension headers, under up to two VLAN tags, after the link header of the
 * capture's link type (those mosxdp/io/linklayer.py reads); a TCP segment that is not a
 * fragment is hashed by its addresses and ports, any other such frame by its address pair
 * (mosxdp/core/split.py, bpf/flowhash.h), and a frame of another ethertype goes to worker
 * 0. Each stops at the first record it does not handle (cut short, corrupt, or a frame
 * off the fast path) and returns its offset: the caller reads that one with the core's
 * parser. A frame the parser finds malformed may be hashed here: it is only counted,
 * wherever it goes.
 *
 * counts: int64 per bucket (writable buffer); table: a worker (uint8) per bucket;
 * numbers, offsets: a list of writable int64 buffers per worker, filled at owned[w]
 * (a writable int64 buffer, one per worker); ends: int64 per batch, filled at n_ends.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

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

static int64_t record_ts(const uint8_t *base, Py_ssize_t at, int little, int ns)
{
	int64_t sec = rd32(base + at, little), frac = rd32(base + at + 4, little);

	return sec * 1000000 + (ns ? frac / 1000 : frac);
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

static PyObject *count_buckets(PyObject *self, PyObject *args)
{
	PyObject *map_obj, *counts_obj;
	Py_ssize_t off;
	int little;
	unsigned linktype;
	Py_buffer map, counts;
	uint32_t caplen;

	if (!PyArg_ParseTuple(args, "OnpOI", &map_obj, &off, &little, &counts_obj, &linktype))
		return NULL;
	if (get_buffer(map_obj, &map, 0, 0, "map") < 0)
		return NULL;
	if (get_buffer(counts_obj, &counts, 1, 8 << BUCKET_BITS, "counts") < 0) {
		PyBuffer_Release(&map);
		return NULL;
	}
	const uint8_t *base = map.buf;
	int64_t *count = counts.buf;

	while (off >= 0 && whole_record(base, map.len, off, little, &caplen)) {
		uint32_t hash = 0;
		int kind = fast_hash(base + off + 16, caplen, linktype, &hash);

		if (!kind)
			break;
		count[kind == HASHED ? hash >> BUCKET_SHIFT : 0]++;
		off += 16 + caplen;
	}
	PyBuffer_Release(&counts);
	PyBuffer_Release(&map);
	return PyLong_FromSsize_t(off);
}

#define MAX_WORKERS 256

static PyObject *assign(PyObject *self, PyObject *args)
{
	PyObject *map_obj, *table_obj, *numbers_obj, *offsets_obj, *owned_obj, *ends_obj;
	Py_ssize_t off, last, index, limit, batch, n_ends, workers, i;
	int little, ns;
	unsigned linktype;
	Py_buffer map, table, owned, ends, numbers[MAX_WORKERS], offsets[MAX_WORKERS];
	Py_ssize_t got_numbers = 0, got_offsets = 0;
	PyObject *result = NULL;
	uint32_t caplen;

	if (!PyArg_ParseTuple(args, "OnnppnnnOOOOOnI", &map_obj, &off, &last, &little, &ns, &index,
			      &limit, &batch, &table_obj, &numbers_obj, &offsets_obj, &owned_obj,
			      &ends_obj, &n_ends, &linktype))
		return NULL;
	if (!PyList_Check(numbers_obj) || !PyList_Check(offsets_obj)
	    || PyList_GET_SIZE(numbers_obj) != PyList_GET_SIZE(offsets_obj)) {
		PyErr_SetString(PyExc_TypeError, "numbers and offsets: lists of one buffer per worker");
		return NULL;
	}
	workers = PyList_GET_SIZE(numbers_obj);
	if (workers < 1 || workers > MAX_WORKERS || batch < 1) {
		PyErr_SetString(PyExc_ValueError, "1 to 256 workers, a batch of at least 1 frame");
		return NULL;
	}
	if (get_buffer(map_obj, &map, 0, 0, "map") < 0)
		return NULL;
	if (get_buffer(table_obj, &table, 0, 1 << BUCKET_BITS, "table") < 0)
		goto map_done;
	if (get_buffer(owned_obj, &owned, 1, 8 * workers, "owned") < 0)
		goto table_done;
	if (get_buffer(ends_obj, &ends, 1, 0, "ends") < 0)
		goto owned_done;
	for (; got_numbers < workers; got_numbers++)
		if (get_buffer(PyList_GET_ITEM(numbers_obj, got_numbers), &numbers[got_numbers], 1, 0,
			       "numbers") < 0)
			goto buffers_done;
	for (; got_offsets < workers; got_offsets++)
		if (get_buffer(PyList_GET_ITEM(offsets_obj, got_offsets), &offsets[got_offsets], 1, 0,
			       "offsets") < 0)
			goto buffers_done;

	const uint8_t *base = map.buf;
	const uint8_t *worker_of = table.buf;
	int64_t *own = owned.buf;
	int64_t *end_ts = ends.buf;
	Py_ssize_t ends_room = ends.len / 8;

	while (index < limit && off >= 0 && whole_record(base, map.len, off, little, &caplen)) {
		uint32_t hash = 0;
		int kind = fast_hash(base + off + 16, caplen, linktype, &hash);
		unsigned w;

		if (!kind)
			break;
		w = kind == HASHED ? worker_of[hash >> BUCKET_SHIFT] : 0;
		if (w >= (unsigned)workers || (own[w] + 1) * 8 > numbers[w].len
		    || (own[w] + 1) * 8 > offsets[w].len) {
			PyErr_Format(PyExc_ValueError, "worker %u: no room for frame %zd", w, index);
			goto buffers_done;
		}
		((int64_t *)numbers[w].buf)[own[w]] = index;
		((int64_t *)offsets[w].buf)[own[w]] = off;
		own[w]++;
		last = off;
		off += 16 + caplen;
		index++;
		if (index % batch == 0) {
			if (n_ends >= ends_room) {
				PyErr_Format(PyExc_ValueError, "ends: no room for batch end %zd", n_ends);
				goto buffers_done;
			}
			end_ts[n_ends++] = record_ts(base, last, little, ns);
		}
	}
	result = Py_BuildValue("nnnn", index, off, last, n_ends);

buffers_done:
	for (i = 0; i < got_offsets; i++)
		PyBuffer_Release(&offsets[i]);
	for (i = 0; i < got_numbers; i++)
		PyBuffer_Release(&numbers[i]);
	PyBuffer_Release(&ends);
owned_done:
	PyBuffer_Release(&owned);
table_done:
	PyBuffer_Release(&table);
map_done:
	PyBuffer_Release(&map);
	return result;
}

static PyMethodDef methods[] = {
	{"count_buckets", count_buckets, METH_VARARGS,
	 "count_buckets(map, off, little, counts) -> offset of the first record not counted"},
	{"assign", assign, METH_VARARGS,
	 "assign(map, off, last, little, ns, index, limit, batch_size, table, numbers, offsets, "
	 "owned, ends, n_ends) -> (index, off, last, n_ends)"},
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
