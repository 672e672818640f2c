# Compiled declarations of split_worker.py (setup.py): the pcap record header's reader, and
# the types the worker's loop declares.
from mosxdp.io.pcap cimport read_header
from mosxdp.core.flow cimport Flow
from mosxdp.core.stack_state cimport StackState
