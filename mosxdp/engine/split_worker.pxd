# Compiled declarations of split_worker.py (setup.py): the pcap record header's reader.
from mosxdp.io.pcap cimport read_header
