# Compiled declarations of pcap.py (setup.py): the record header's reader, a C function
# (split_worker.pxd cimports it).
cdef unsigned int read_u32(unsigned char *p, bint little)
