/*
 * _kerneltwin: the per-frame step of mosxdp/engine/kernel_twin.py in C (that module has the
 * same function in Python for when this one is absent or MOSXDP_PURE_PYTHON=1).
 *
 *     claim(table, frame, ts_us, stamp) -> the flow, or None
 *
 * table: a dict {key: (record, flow)}, the key the 40 bytes of struct mx_flow_key
 * (bpf/mosxdp.h) and the record a bytearray holding struct kt_record: struct mx_verdict
 * and the TCP flags OR-ed per direction. For a TCP frame of an entry the record is
 * updated as bpf/mosxdp.c's verdict path updates the entry (ACK watch, history stamps,
 * counters, sequence end), with last_seen_ns = ts_us * 1000 and the stamps `stamp`
 * (the frame's number: only their order counts). The flow is returned when the frame is
 * one the kernel keeps (counted, no SYN, FIN or RST, no ACK the watch waits for); None
 * sends the frame to the emulation, as the program sends it to user space.
 *
 * An entry of action FAST_FORWARD (offline only: no kernel has it) stands for a flow the
 * emulation follows in full whose sockets need no packet and no payload. It takes the
 * flow's regular frames: no SYN, FIN, RST or URG, with ACK, at the sequence number that
 * direction's stream expects next, acknowledging no byte not seen, within the window the
 * other side advertised. For those the emulation would only count, advance both streams
 * and move the window's edge, which the record does (ff_*); with ff_stream the engine
 * then delivers the payload (ff_last_*: where it lies in the frame). Any other frame of
 * the entry clears ff_ok and goes to the emulation, which is brought up to date before it
 * processes the frame (the flow's ff_catch_up hook), and loads the record again after.
 *
 * Only frames that mosxdp/core/packet.py's parse_frame reads whole and to the same values
 * are looked up: Ethernet with up to two VLAN tags (ids not 0), IPv4 (not a fragment) or
 * IPv6 without extension headers, TCP, the IP packet inside the frame. Any other frame
 * goes to the emulation, which handles it as it handles every frame without the twin.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10
#define TH_URG 0x20
#define WATCH_ANY 2
#define WATCH_ARMED 1

struct kt_key {                 /* struct mx_flow_key */
	uint8_t lo_addr[16];
	uint8_t hi_addr[16];
	uint8_t lo_port[2];     /* network order */
	uint8_t hi_port[2];
	uint16_t vlan_outer;
	uint16_t vlan_inner;
	uint8_t ip_version;
	uint8_t ip_proto;
	uint8_t pad[2];
};

struct kt_record {              /* struct mx_verdict, then what only the twin keeps */
	uint32_t action;
	uint32_t pad;
	uint64_t last_seen_ns;
	uint64_t packets[2];
	uint64_t bytes[2];
	uint64_t frame_bytes[2];
	uint64_t ip_bytes[2];
	uint32_t ack_watch[2];
	uint32_t watch_armed[2];
	uint64_t first_data_ns[2];
	uint64_t first_ack_ns[2];
	uint32_t seq_end[2];
	uint8_t tcp_flags[2];
	uint8_t pad2[6];
	/* FAST_FORWARD: per direction of the data, the sequence number its stream expects
	 * next and the right edge of the window the receiver advertised (known or not); per
	 * direction of the ACK, the shift of its window field; whether ACKs move the edges */
	uint32_t ff_next[2];
	uint32_t ff_edge[2];
	uint8_t ff_ok;
	uint8_t ff_edge_known[2];
	uint8_t ff_edge_moves;
	uint8_t ff_shift[2];
	/* per direction of the data: whether frames with payload are taken (the engine
	 * delivers their payload when ff_stream: the receiver's buffer must exist) */
	uint8_t ff_data_ok[2];
	uint8_t ff_stream;
	/* the last frame taken: its direction, and its payload's offset and length in it;
	 * the client's direction (for the engine's delivery) */
	uint8_t ff_last_dir;
	uint8_t ff_cli_dir;
	uint8_t pad3;
	uint32_t ff_last_off;
	uint32_t ff_last_len;
	uint8_t pad4[4];
};

#define ACTION_BYPASS 1
#define ACTION_DROP 2
#define ACTION_STATE_ONLY 3
#define ACTION_FAST_FORWARD 4

static inline unsigned be16(const uint8_t *p) { return ((unsigned)p[0] << 8) | p[1]; }
static inline uint32_t be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* The TCP frame's key, direction and fields; 0 when it is not one to look up. */
struct kt_frame {
	unsigned flags, window;
	uint32_t seq, ack;
	uint64_t ip_len, payload_len, payload_off;
};

static int parse(const uint8_t *p, Py_ssize_t len, struct kt_key *key, int *dir,
		 struct kt_frame *f)
{
	Py_ssize_t off = 14, l4, ip_end, doff;
	unsigned et, vlan[2] = {0, 0};
	int tags = 0, alen;
	const uint8_t *src, *dst;
	uint8_t a[18], b[18];

	if (len < 14)
		return 0;
	et = be16(p + 12);
	while (et == 0x8100 || et == 0x88A8 || et == 0x9100) {
		unsigned id;

		if (tags == 2 || off + 4 > len)
			return 0;
		id = be16(p + off) & 0xFFF;
		if (!id)
			return 0;
		vlan[tags++] = id;
		et = be16(p + off + 2);
		off += 4;
	}
	if (et == 0x0800) {
		unsigned ihl, ip_len;

		if (off + 20 > len || p[off] >> 4 != 4)
			return 0;
		ihl = (p[off] & 0xF) * 4;
		ip_len = be16(p + off + 2);
		if (ihl < 20 || ip_len < ihl || off + ip_len > len)
			return 0;
		if (be16(p + off + 6) & 0x3FFF || p[off + 9] != 6)
			return 0;
		src = p + off + 12;
		dst = p + off + 16;
		alen = 4;
		l4 = off + ihl;
		ip_end = off + ip_len;
		f->ip_len = ip_len;
	} else if (et == 0x86DD) {
		unsigned plen;

		if (off + 40 > len || p[off] >> 4 != 6 || p[off + 6] != 6)
			return 0;
		plen = be16(p + off + 4);
		if (off + 40 + plen > len)
			return 0;
		src = p + off + 8;
		dst = p + off + 24;
		alen = 16;
		l4 = off + 40;
		ip_end = off + 40 + plen;
		f->ip_len = 40 + plen;
	} else {
		return 0;
	}
	if (l4 + 20 > ip_end)
		return 0;
	doff = (p[l4 + 12] >> 4) * 4;
	if (doff < 20 || l4 + doff > ip_end)
		return 0;
	f->flags = p[l4 + 13];
	f->seq = be32(p + l4 + 4);
	f->ack = be32(p + l4 + 8);
	f->window = be16(p + l4 + 14);
	f->payload_len = ip_end - l4 - doff;
	f->payload_off = l4 + doff;

	/* (address, port) as big-endian byte strings: the lower one is the key's lo */
	memset(a, 0, sizeof(a));
	memset(b, 0, sizeof(b));
	memcpy(a, src, alen);
	memcpy(a + 16, p + l4, 2);
	memcpy(b, dst, alen);
	memcpy(b + 16, p + l4 + 2, 2);
	*dir = memcmp(a, b, 18) > 0;
	memcpy(key->lo_addr, *dir ? b : a, 16);
	memcpy(key->hi_addr, *dir ? a : b, 16);
	memcpy(key->lo_port, (*dir ? b : a) + 16, 2);
	memcpy(key->hi_port, (*dir ? a : b) + 16, 2);
	key->vlan_outer = vlan[0];
	key->vlan_inner = vlan[1];
	key->ip_version = alen == 4 ? 4 : 6;
	key->ip_proto = 6;
	key->pad[0] = key->pad[1] = 0;
	return 1;
}

/* A frame of a FAST_FORWARD entry: 1 when it is regular (counted, both streams moved on),
 * else 0 and the entry stops taking frames until the engine loads it again. */
static int fast_forward(struct kt_record *vd, const struct kt_frame *f, int dir,
			Py_ssize_t frame_len, unsigned long long stamp)
{
	uint32_t end = f->seq + (uint32_t)f->payload_len;
	if (!vd->ff_ok || (f->flags & (TH_SYN | TH_FIN | TH_RST | TH_URG)) || !(f->flags & TH_ACK) ||
	    f->seq != vd->ff_next[dir] || (int32_t)(f->ack - vd->ff_next[dir ^ 1]) > 0 ||
	    (f->payload_len && (!vd->ff_data_ok[dir] ||
				(vd->ff_edge_known[dir] && (int32_t)(end - vd->ff_edge[dir]) > 0)))) {
		vd->ff_ok = 0;
		return 0;
	}
	if (vd->ff_edge_moves) {
		/* the ACK's window: the edge for the data coming the other way */
		uint32_t edge = f->ack + (f->window << vd->ff_shift[dir]);
		if (!vd->ff_edge_known[dir ^ 1] || (int32_t)(edge - vd->ff_edge[dir ^ 1]) > 0) {
			vd->ff_edge[dir ^ 1] = edge;
			vd->ff_edge_known[dir ^ 1] = 1;
		}
	}
	vd->ff_next[dir] = end;
	vd->ff_last_dir = dir;
	vd->ff_last_off = (uint32_t)f->payload_off;
	vd->ff_last_len = (uint32_t)f->payload_len;
	if (f->payload_len) {
		if (!vd->first_data_ns[dir])
			vd->first_data_ns[dir] = stamp;
	} else if (!vd->first_ack_ns[dir]) {
		vd->first_ack_ns[dir] = stamp;
	}
	vd->packets[dir] += 1;
	vd->bytes[dir] += f->payload_len;
	vd->frame_bytes[dir] += frame_len;
	vd->ip_bytes[dir] += f->ip_len;
	vd->tcp_flags[dir] |= f->flags;
	return 1;
}

static PyObject *claim(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *table, *entry, *kbytes, *record, *flow;
	Py_buffer view;
	struct kt_key key;
	struct kt_frame f;
	struct kt_record *vd;
	unsigned long long ts_us, stamp, now;
	Py_ssize_t frame_len;
	int dir, ok, watched;

	if (nargs != 4 || !PyDict_Check(args[0])) {
		PyErr_SetString(PyExc_TypeError, "claim(table: dict, frame, ts_us, stamp)");
		return NULL;
	}
	table = args[0];
	if (!PyDict_GET_SIZE(table))
		Py_RETURN_NONE;
	ts_us = PyLong_AsUnsignedLongLong(args[2]);
	stamp = PyLong_AsUnsignedLongLong(args[3]);
	if (PyErr_Occurred())
		return NULL;
	if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
		return NULL;
	ok = parse(view.buf, view.len, &key, &dir, &f);
	frame_len = view.len;
	PyBuffer_Release(&view);
	if (!ok)
		Py_RETURN_NONE;
	kbytes = PyBytes_FromStringAndSize((const char *)&key, sizeof(key));
	if (!kbytes)
		return NULL;
	entry = PyDict_GetItemWithError(table, kbytes);
	Py_DECREF(kbytes);
	if (!entry) {
		if (PyErr_Occurred())
			return NULL;
		Py_RETURN_NONE;
	}
	if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2 ||
	    !PyByteArray_Check(PyTuple_GET_ITEM(entry, 0)) ||
	    PyByteArray_GET_SIZE(PyTuple_GET_ITEM(entry, 0)) != (Py_ssize_t)sizeof(struct kt_record)) {
		PyErr_SetString(PyExc_TypeError, "a table entry is (bytearray record, flow)");
		return NULL;
	}
	record = PyTuple_GET_ITEM(entry, 0);
	flow = PyTuple_GET_ITEM(entry, 1);
	vd = (struct kt_record *)PyByteArray_AS_STRING(record);
	if (vd->action == ACTION_FAST_FORWARD) {
		now = ts_us * 1000;
		if (fast_forward(vd, &f, dir, frame_len, stamp)) {
			vd->last_seen_ns = now;
			Py_INCREF(flow);
			return flow;
		}
		Py_RETURN_NONE;
	}
	if (vd->action < ACTION_BYPASS || vd->action > ACTION_STATE_ONLY)
		Py_RETURN_NONE;      /* as the program: an entry of another action is ignored */
	now = ts_us * 1000;

	watched = vd->watch_armed[dir] && (f.flags & TH_ACK) &&
		  (vd->watch_armed[dir] == WATCH_ANY || (int32_t)(f.ack - vd->ack_watch[dir]) >= 0);
	vd->last_seen_ns = now;
	if (!(f.flags & (TH_SYN | TH_FIN | TH_RST))) {
		if (f.payload_len) {
			if (!vd->first_data_ns[dir])
				vd->first_data_ns[dir] = stamp;
		} else if ((f.flags & TH_ACK) && !vd->first_ack_ns[dir]) {
			vd->first_ack_ns[dir] = stamp;
		}
		if (!watched) {
			uint32_t end = f.seq + (uint32_t)f.payload_len;

			if (!vd->packets[dir] || (int32_t)(end - vd->seq_end[dir]) > 0)
				vd->seq_end[dir] = end;
			vd->packets[dir] += 1;
			vd->bytes[dir] += f.payload_len;
			vd->frame_bytes[dir] += frame_len;
			vd->ip_bytes[dir] += f.ip_len;
			vd->tcp_flags[dir] |= f.flags;
			Py_INCREF(flow);
			return flow;
		}
		vd->watch_armed[dir] = 0;
	} else if (vd->action != ACTION_DROP) {
		if (watched)
			vd->watch_armed[dir] = 0;
		if (f.flags & (TH_SYN | TH_FIN)) {
			vd->ack_watch[dir ^ 1] = f.seq + (uint32_t)f.payload_len +
						 ((f.flags & TH_SYN) ? 1 : 0) + ((f.flags & TH_FIN) ? 1 : 0);
			vd->watch_armed[dir ^ 1] = WATCH_ARMED;
		}
	}
	Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
	{"claim", (PyCFunction)(void (*)(void))claim, METH_FASTCALL,
	 "claim(table, frame, ts_us, stamp) -> the flow whose entry counted the frame, or None"},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_kerneltwin",
	"The per-frame step of mosxdp.engine.kernel_twin in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__kerneltwin(void)
{
	PyObject *m = PyModule_Create(&module);

	if (m && (PyModule_AddIntConstant(m, "KEY_SIZE", sizeof(struct kt_key)) < 0 ||
		  PyModule_AddIntConstant(m, "RECORD_SIZE", sizeof(struct kt_record)) < 0)) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
