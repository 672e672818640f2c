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
 *     run(dir_fd, fds, groups, ops) -> [(op index, errno, bytes not written), ...]
 *
 * fds: a writable buffer of C ints (array('i')), a file's descriptor at its slot (-1: none).
 * groups: the same for groups of files that share a suffix: the suffix's number, -1 while
 * the group has made no file. A suffix number n is "" for 0, "c<n>" above (tcpflow's).
 * ops: a list of (kind, slot, arg, offset) tuples:
 *     CREATE (0): arg the name (bytes), made in dir_fd O_CREAT|O_EXCL|O_NOFOLLOW, mode 644;
 *                 fds[slot] is its descriptor, or -1 when that failed;
 *     WRITE  (1): arg the bytes, all written at offset of fds[slot]; a slot at -1 (its
 *                 create or an earlier write failed) writes nothing, and says so;
 *     CLOSE  (2): fds[slot] closed, set to -1;
 *     GROUP  (3): arg (group slot, (base names as bytes), index): the file base[index] +
 *                 the group's suffix. A group's first file takes the first suffix that no
 *                 base has (lstat), and the next one if its name is taken meanwhile
 *                 (EEXIST); the others take that suffix, and fail if it is taken.
 * Each failed operation is in the returned list (errno 0: a write to a failed file).
 * A write that fails closes its file and sets its slot to -1: it keeps what it has.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { OP_CREATE = 0, OP_WRITE = 1, OP_CLOSE = 2, OP_GROUP = 3 };

#define MAX_BASES 8
#define MAX_SUFFIX 1000000    /* suffix numbers tried before a group's file fails */

struct op {
	int kind;
	Py_ssize_t slot;
	const char *data;     /* the name (CREATE) or the bytes (WRITE) */
	Py_ssize_t len;
	long long offset;
	Py_ssize_t group;     /* GROUP: the group's slot, its bases and this file's index */
	const char *bases[MAX_BASES];
	int nbases, index;
	int err;              /* out: errno, or -1 for a write to a failed file */
	Py_ssize_t unwritten; /* out: bytes of a WRITE not written */
};

static int open_new(int dir_fd, const char *name)
{
	return openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
}

static void suffixed(char *out, const char *base, int n)
{
	if (n)
		snprintf(out, PATH_MAX, "%sc%d", base, n);
	else
		snprintf(out, PATH_MAX, "%s", base);
}

/* The group's file at op->index: its suffix found (a first file) or taken (the others). */
static int open_in_group(int dir_fd, int *groups, struct op *op)
{
	char name[PATH_MAX];
	struct stat st;
	int *n = &groups[op->group], fd, i;

	if (*n >= 0) {
		suffixed(name, op->bases[op->index], *n);
		fd = open_new(dir_fd, name);
		op->err = fd < 0 ? errno : 0;
		return fd;
	}
	for (int c = 0; c < MAX_SUFFIX; c++) {
		for (i = 0; i < op->nbases; i++) {
			suffixed(name, op->bases[i], c);
			if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
				break;              /* taken, by anything: a dangling link too */
			if (errno != ENOENT) {
				op->err = errno;
				*n = c;
				return -1;
			}
		}
		if (i < op->nbases)
			continue;
		suffixed(name, op->bases[op->index], c);
		fd = open_new(dir_fd, name);
		if (fd < 0 && errno == EEXIST)
			continue;                   /* made meanwhile by someone else */
		*n = c;
		op->err = fd < 0 ? errno : 0;
		return fd;
	}
	op->err = EEXIST;
	return -1;
}

static void run_op(int dir_fd, int *fds, int *groups, struct op *op)
{
	int *fd = &fds[op->slot];

	op->err = 0;
	op->unwritten = 0;
	switch (op->kind) {
	case OP_CREATE:
		*fd = open_new(dir_fd, op->data);
		if (*fd < 0)
			op->err = errno;
		break;
	case OP_GROUP:
		*fd = open_in_group(dir_fd, groups, op);
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

static int int_array(PyObject *obj, Py_buffer *view, const char *what)
{
	if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0)
		return -1;
	if (view->itemsize != sizeof(int) || !view->format || strcmp(view->format, "i") != 0) {
		PyBuffer_Release(view);
		PyErr_Format(PyExc_TypeError, "%s must be an array('i')", what);
		return -1;
	}
	return 0;
}

/* A GROUP op's arg: (group slot, (bases...), index). */
static int parse_group(PyObject *arg, struct op *op, Py_ssize_t ngroups, Py_ssize_t i)
{
	PyObject *bases;
	Py_ssize_t k;

	if (!PyTuple_Check(arg) || PyTuple_GET_SIZE(arg) != 3
	    || !PyTuple_Check(bases = PyTuple_GET_ITEM(arg, 1))) {
		PyErr_Format(PyExc_TypeError, "op %zd: a group's (slot, (bases), index)", i);
		return -1;
	}
	op->group = PyLong_AsSsize_t(PyTuple_GET_ITEM(arg, 0));
	op->index = (int)PyLong_AsLong(PyTuple_GET_ITEM(arg, 2));
	op->nbases = (int)PyTuple_GET_SIZE(bases);
	if (PyErr_Occurred())
		return -1;
	if (op->group < 0 || op->group >= ngroups || op->nbases < 1 || op->nbases > MAX_BASES
	    || op->index < 0 || op->index >= op->nbases) {
		PyErr_Format(PyExc_ValueError, "op %zd: bad group slot, bases or index", i);
		return -1;
	}
	for (k = 0; k < op->nbases; k++) {
		PyObject *b = PyTuple_GET_ITEM(bases, k);

		if (!PyBytes_Check(b) || PyBytes_GET_SIZE(b) > PATH_MAX - 16) {
			PyErr_Format(PyExc_TypeError, "op %zd: a base name must be bytes, short", i);
			return -1;
		}
		op->bases[k] = PyBytes_AS_STRING(b);
	}
	return 0;
}

static PyObject *batchio_run(PyObject *self, PyObject *args)
{
	int dir_fd;
	PyObject *fds_obj, *groups_obj, *ops_obj, *result = NULL;
	Py_buffer fds_buf, groups_buf;
	struct op *ops = NULL;
	Py_ssize_t n, i, nfds, ngroups;

	(void)self;
	if (!PyArg_ParseTuple(args, "iOOO!", &dir_fd, &fds_obj, &groups_obj, &PyList_Type, &ops_obj))
		return NULL;
	if (int_array(fds_obj, &fds_buf, "fds") < 0)
		return NULL;
	if (int_array(groups_obj, &groups_buf, "groups") < 0) {
		PyBuffer_Release(&fds_buf);
		return NULL;
	}
	nfds = fds_buf.len / (Py_ssize_t)sizeof(int);
	ngroups = groups_buf.len / (Py_ssize_t)sizeof(int);
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
		if (op->slot < 0 || op->slot >= nfds || op->kind < OP_CREATE || op->kind > OP_GROUP
		    || op->offset < 0) {
			PyErr_Format(PyExc_ValueError, "op %zd: bad kind, slot or offset", i);
			goto out;
		}
		arg = PyTuple_GET_ITEM(t, 2);
		if (op->kind == OP_GROUP) {
			if (parse_group(arg, op, ngroups, i) < 0)
				goto out;
		} else if (op->kind != OP_CLOSE) {
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
		run_op(dir_fd, (int *)fds_buf.buf, (int *)groups_buf.buf, &ops[i]);
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
	PyBuffer_Release(&groups_buf);
	PyBuffer_Release(&fds_buf);
	return result;
}

static PyMethodDef batchio_methods[] = {
	{"run", batchio_run, METH_VARARGS,
	 "run(dir_fd, fds, groups, ops) -> [(op index, errno, bytes not written)]: a batch of file "
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
