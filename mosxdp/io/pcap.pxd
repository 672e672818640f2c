# Compiled declarations of pcap.py (setup.py): the record header's reader, C functions
# (split_worker.pxd cimports read_header).
cdef void read_header(unsigned char *p, bint little, long long *sec, long long *frac,
                      Py_ssize_t *caplen, Py_ssize_t *origlen)
cdef unsigned int read_u32(unsigned char *p, bint little)
