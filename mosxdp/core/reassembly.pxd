# Compiled declarations of reassembly.py (setup.py): StreamBuffer as an extension type whose
# fields are C members holding Python objects, its insert callable from C (the stream
# delivery's typed path), and the in-order append's copy as one memcpy.
import cython
from cpython.buffer cimport Py_buffer

cdef class StreamBuffer:
    cdef public object _capacity, _policy, _max_fragments, _ring, _ring_len, _view
    cdef public object head, next_offset, _starts, _ends, _tail, refused_fragments
    cdef public object last_insert_refused, _lost_starts, _lost_ends
    cpdef insert(self, offset, data)

@cython.locals(view=Py_buffer, copied=bint)
cdef bint _copy_into(bytearray ring, Py_ssize_t pos, data, Py_ssize_t n)
