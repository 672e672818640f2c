/*
 * _batchio: a batch of file operations in one call with the GIL released, for the writer
 * thread of an output directory (mosxdp/io/filewriter.py, which has the same function in
 * Python for when this module is absent or MOSXDP_PURE_PYTHON=1).
 *
 * A Python thread that makes one system call per write takes the GIL back after each
 * call, and while the packet thread runs that can take a switch interval (5 ms): such a
 * writer falls behind. Here a whole batch (creates, writes, closes) runs between one
 * release of the GIL and one retake.
 *
 *     run(dir_fd, fds, ops) -> [(op index, errno, bytes not written), ...]
 *
 * fds: a writable buffer of C ints (array('i')), a file's descriptor at its slot (-1: none).
 * ops: a list of (kind, slot, arg, offset) tuples:
 *     CREATE (0): arg the name (bytes), made in dir_fd O_CREAT|O_EXCL|O_NOFOLLOW, mode 644;
 *                 fds[slot] is its descriptor, or -1 when that failed;
 *     WRITE  (1): arg the bytes, all written at offset of fds[slot]; a slot at -1 (its
 *                 create or an earlier write failed) writes nothing, and says so;
 *     CLOSE  (2): fds[slot] closed, set to -1.
 * Each failed operation is in the returned list (errno 0: a write to a failed file).
 * A write that fails closes its file and sets its slot to -1: it keeps what it has.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { OP_CREATE = 0, OP_WRITE = 1, OP_CLOSE = 2 };

struct op {
	int kind;
	Py_ssize_t slot;
	const char *data;     /* the name (CREATE) or the bytes (WRITE) */
	Py_ssize_t len;
	long long offset;
	int err;              /* out: errno, or -1 for a write to a failed file */
	Py_ssize_t unwritten; /* out: bytes of a WRITE not written */
};

static void run_op(int dir_fd, int *fds, struct op *op)
{
	int *fd = &fds[op->slot];

	op->err = 0;
	op->unwritten = 0;
	switch (op->kind) {
	case OP_CREATE:
		*fd = openat(dir_fd, op->data, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
		if (*fd < 0)
			op->err = errno;
		break;
	case OP_WRITE: {
		Py_ssize_t done = 0;

		if (*fd < 0) {
			op->err = -1;
			op->unwritten = op->len;
			break;
		}
		while (done < op->len) {
			ssize_t n = pwrite(*fd, op->data + done, (size_t)(op->len - done),
					   (off_t)(op->offset + done));

			if (n < 0) {
				if (errno == EINTR)
					continue;
				op->err = errno;
				break;
			}
			if (n == 0) {
				op->err = EIO;
				break;
			}
			done += n;
		}
		if (op->err) {
			op->unwritten = op->len - done;
			close(*fd);
			*fd = -1;
		}
		break;
	}
	case OP_CLOSE:
		if (*fd >= 0 && close(*fd) < 0 && errno != EINTR)
			op->err = errno;
		*fd = -1;
		break;
	}
}

static PyObject *batchio_run(PyObject *self, PyObject *args)
{
	int dir_fd;
	PyObject *fds_obj, *ops_obj, *result = NULL;
	Py_buffer fds_buf;
	struct op *ops = NULL;
	Py_ssize_t n, i, nfds;

	(void)self;
	if (!PyArg_ParseTuple(args, "iOO!", &dir_fd, &fds_obj, &PyList_Type, &ops_obj))
		return NULL;
	if (PyObject_GetBuffer(fds_obj, &fds_buf, PyBUF_WRITABLE | PyBUF_FORMAT) < 0)
		return NULL;
	if (fds_buf.itemsize != sizeof(int) || !fds_buf.format || strcmp(fds_buf.format, "i") != 0) {
		PyErr_SetString(PyExc_TypeError, "fds must be an array('i')");
		goto out;
	}
	nfds = fds_buf.len / (Py_ssize_t)sizeof(int);
	n = PyList_GET_SIZE(ops_obj);
	ops = PyMem_Calloc(n ? (size_t)n : 1, sizeof(*ops));
	if (!ops) {
		PyErr_NoMemory();
		goto out;
	}
	/* Read every op with the GIL held: the list keeps the bytes alive during the call. */
	for (i = 0; i < n; i++) {
		PyObject *t = PyList_GET_ITEM(ops_obj, i), *arg;
		struct op *op = &ops[i];

		if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 4) {
			PyErr_Format(PyExc_TypeError, "op %zd: a (kind, slot, arg, offset) tuple", i);
			goto out;
		}
		op->kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 0));
		op->slot = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 1));
		op->offset = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 3));
		if (PyErr_Occurred())
			goto out;
		if (op->slot < 0 || op->slot >= nfds || op->kind < OP_CREATE || op->kind > OP_CLOSE
		    || op->offset < 0) {
			PyErr_Format(PyExc_ValueError, "op %zd: bad kind, slot or offset", i);
			goto out;
		}
		arg = PyTuple_GET_ITEM(t, 2);
		if (op->kind != OP_CLOSE) {
			if (!PyBytes_Check(arg)) {
				PyErr_Format(PyExc_TypeError, "op %zd: the name or data must be bytes", i);
				goto out;
			}
			op->data = PyBytes_AS_STRING(arg);
			op->len = PyBytes_GET_SIZE(arg);
		}
	}
	Py_BEGIN_ALLOW_THREADS
	for (i = 0; i < n; i++)
		run_op(dir_fd, (int *)fds_buf.buf, &ops[i]);
	Py_END_ALLOW_THREADS
	result = PyList_New(0);
	if (!result)
		goto out;
	for (i = 0; i < n; i++) {
		PyObject *item;

		if (!ops[i].err)
			continue;
		item = Py_BuildValue("(nin)", i, ops[i].err < 0 ? 0 : ops[i].err, ops[i].unwritten);
		if (!item || PyList_Append(result, item) < 0) {
			Py_XDECREF(item);
			Py_CLEAR(result);
			goto out;
		}
		Py_DECREF(item);
	}
out:
	PyMem_Free(ops);
	PyBuffer_Release(&fds_buf);
	return result;
}

static PyMethodDef batchio_methods[] = {
	{"run", batchio_run, METH_VARARGS,
	 "run(dir_fd, fds, ops) -> [(op index, errno, bytes not written)]: a batch of file "
	 "operations with the GIL released (see the module's source)."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef batchio_module = {
	PyModuleDef_HEAD_INIT, "_batchio",
	"A batch of file creates, writes and closes in one call without the GIL.", -1,
	batchio_methods,
};

PyMODINIT_FUNC PyInit__batchio(void)
{
	return PyModule_Create(&batchio_module);
}
