"""simple_firewall: a line-by-line port of mOS's samples/simple_firewall/simple_firewall.c.

The same functions in the same order, doing the same thing: read the rules file, then on
the first SYN of each connection (a user-defined event on MOS_ON_PKT_IN at MOS_HK_SND)
look the 4-tuple up; DROP drops that SYN, ACCEPT stops monitoring the flow (live, the rest
of it then stays in the kernel). Every second the rule table with each rule's count is
printed. It runs as the C program does, from its own main(), with mOS's options:

    cd examples
    python3 simple_firewall.py -c config/offline.conf     # on a capture (writes a pcap)
    python3 simple_firewall.py -c config/mos.conf         # live, inline between two NICs
    python3 simple_firewall.py -c MOS_CONF -f RULES -n CORES

Differences from the C program are commented where they occur; docs/porting.md walks
through the port.
"""
import getopt
import os
import socket
import struct
import sys
from socket import AF_INET

from mosxdp import *

# ----------------------------------------------------------------------------
# default configuration file path
MOS_CONFIG_FILE = "config/mos.conf"
# max length per line in firewall config file
CONF_MAX_LINE_LEN = 1024
# max number of CPU cores (samples/common/applib.h)
MAX_CPUS = 16
EXIT_SUCCESS = 0
EXIT_FAILURE = 1


# macros to skip spaces, non-space characters, digits: a char * is the rest of the string
def SKIP_SPACES(x):
    return x.lstrip(" \t\n\v\f\r")


def SKIP_CHAR(x):
    i = 0
    while i < len(x) and not isspace(x[i]):
        i += 1
    return x[i:]


def SKIP_DIGIT(x):
    return x.lstrip("0123456789")


def isspace(c):
    return c != "" and c in " \t\n\v\f\r"


# macro to do netmasking with ip address
def IP_NETMASK(x, y):
    # host byte order here, so a real prefix mask; the C macro masks the wrong bits
    # of its network-order values for prefixes that are not a multiple of 8
    return x & (0xFFFFFFFF << (32 - y)) & 0xFFFFFFFF


# macro to dump error and exit
def EXIT_WITH_ERROR(f, *m, exc=None):
    # Python has no errno variable: the OSError that stands for C's -1 return gives it,
    # and its message is added (mosxdp says what was wrong)
    caller = sys._getframe(1)
    msg = f % m if m else f
    if exc is not None:
        msg = "%s (%s)\n" % (msg.rstrip("\n"), exc.strerror or exc)
    sys.stdout.flush()
    sys.stderr.write("[%10s:%4d] errno: %u %s" % (caller.f_code.co_name, caller.f_lineno,
                                                   getattr(exc, "errno", None) or 0, msg))
    sys.exit(EXIT_FAILURE)


def TRACE_INFO(f, *m):
    # util/include/debug.h with -DINFO, as the sample's Makefile builds it
    caller = sys._getframe(1)
    printf("[%10s:%4d] " + f, caller.f_code.co_name, caller.f_lineno, *m)


def printf(f, *m):
    sys.stdout.write(f % m if m else f)


def atoi(s):
    digits = s[:len(s) - len(SKIP_DIGIT(s))]
    return int(digits) if digits else 0


# ----------------------------------------------------------------------------
# firewall rule action
FRA_INVALID, FRA_ACCEPT, FRA_DROP = range(3)   # typedef enum {...} FRAction;
FR_ACCEPT = "ACCEPT"
FR_DROP = "DROP"
FR_SPORT = "sport:"
FR_DPORT = "dport:"
# firewall rule structure
MAX_RULES = 1024


class FirewallRule:
    # all fields are in host byte order (C: network byte order)
    __slots__ = ("fr_srcIP", "fr_srcIPmask", "fr_dstIP", "fr_dstIPmask", "fr_srcPort",
                 "fr_dstPort", "fr_action", "fr_count")

    def __init__(self):
        self.fr_srcIP = 0               # source IP
        self.fr_srcIPmask = 0           # source IP netmask
        self.fr_dstIP = 0               # destination IP
        self.fr_dstIPmask = 0           # destination IP netmask
        self.fr_srcPort = 0             # source port
        self.fr_dstPort = 0             # destination port
        self.fr_action = FRA_INVALID    # action
        self.fr_count = 0               # packet count


# one more than MAX_RULES: C's parser reaches g_FWRules[MAX_RULES] before its limit check
g_FWRules = [FirewallRule() for _ in range(MAX_RULES + 1)]


# ----------------------------------------------------------------------------
class thread_context:
    def __init__(self):
        self.mctx = None          # per-thread mos context
        self.mon_listener = 0     # listening socket for flow monitoring


# ----------------------------------------------------------------------------
# Print the entire firewall rule and status table
def DumpFWRuleTable(mctx, sock, side, events, arg):
    tv_1sec = timeval(tv_sec=1, tv_usec=0)    # 1 second

    printf("-----------------------------------------------------------------------\n")
    printf("Firewall rule table\n")
    printf("idx   flows   target   client             server             port\n")

    for i in range(MAX_RULES):
        fwr = g_FWRules[i]

        # we've searched till the end
        if fwr.fr_action == FRA_INVALID:
            break

        # print out each rule
        try:
            cip_str = socket.inet_ntop(AF_INET, struct.pack("!I", fwr.fr_srcIP))
            sip_str = socket.inet_ntop(AF_INET, struct.pack("!I", fwr.fr_dstIP))
        except (OSError, ValueError):
            EXIT_WITH_ERROR("inet_ntop() error\n")

        if fwr.fr_srcIPmask != 32:
            cip_str = "%s/%d" % (cip_str, fwr.fr_srcIPmask)
        if fwr.fr_dstIPmask != 32:
            sip_str = "%s/%d" % (sip_str, fwr.fr_dstIPmask)
        printf("%-6u%-8u%-9s%-19s%-19s",
               (i + 1), fwr.fr_count,
               FR_DROP if fwr.fr_action == FRA_DROP else FR_ACCEPT,
               cip_str, sip_str)
        if fwr.fr_srcPort:
            printf("sport:%-6d", fwr.fr_srcPort)       # ntohs(): host order already
        if fwr.fr_dstPort:
            printf("dport:%-6d", fwr.fr_dstPort)
        printf("\n")
    printf("-----------------------------------------------------------------------\n")
    sys.stdout.flush()      # C's stdout is line-buffered on a terminal only; flush for pipes too

    # Set a timer for next printing
    try:
        mtcp_settimer(mctx, sock, tv_1sec, DumpFWRuleTable)
    except OSError as e:
        EXIT_WITH_ERROR("mtcp_settimer() error\n", exc=e)


# ----------------------------------------------------------------------------
# in_port_t *sport, *dport are out-parameters: returned, with the rest of buf
def ExtractPort(buf, sport, dport):
    port_of = [sport, dport]
    p = None

    temp = SKIP_CHAR(buf)                   # skip characters
    buf = buf[:len(buf) - len(temp)]        # s = *temp; *temp = 0: buf ends there

    # check if the port format is correct
    if buf.startswith(FR_SPORT):
        p = 0
        buf = buf[len(FR_SPORT):]
    elif buf.startswith(FR_DPORT):
        p = 1
        buf = buf[len(FR_DPORT):]
    else:
        EXIT_WITH_ERROR("Invalid rule in port setup [%s]\n", buf)

    check = buf
    check = SKIP_DIGIT(check)
    if check != "":                         # check != temp: not at the end of the word
        EXIT_WITH_ERROR("Invalid port format [%s]\n", buf)

    # convert to port number
    port = atoi(buf)
    if port < 0 or port > 65536:
        EXIT_WITH_ERROR("Invalid port [%d]\n", port)
    port_of[p] = port & 0xFFFF              # htons(port); in_port_t: 65536 wraps to 0, as in C

    buf = temp                              # move buf pointer to next string
    buf = SKIP_SPACES(buf)

    return buf, port_of[0], port_of[1]


# ----------------------------------------------------------------------------
# in_addr_t *addr, int *addrmask are out-parameters: returned, with the rest of buf
def ExtractIPAddress(buf):
    netmask = 32

    # skip characters which are not '/'
    temp = buf
    while temp and not isspace(temp[0]) and temp[0] != "/":
        temp = temp[1:]

    try:
        addr_conv = socket.inet_aton(buf[:len(buf) - len(temp)])   # *temp = 0
    except OSError:
        EXIT_WITH_ERROR("Invalid IP address [%s]\n", buf[:len(buf) - len(temp)])
    addr = struct.unpack("!I", addr_conv)[0]

    # if the rule contains netmask
    if temp[:1] == "/":
        buf = temp[1:]
        temp = SKIP_CHAR(temp)
        word = buf[:len(buf) - len(temp)]

        # check if the format is correct
        check = word
        check = SKIP_DIGIT(check)
        if check != "":
            EXIT_WITH_ERROR("Invalid netmask format [%s]\n", word)

        # convert to netmask number
        netmask = atoi(word)
        if netmask < 0 or netmask > 32:
            EXIT_WITH_ERROR("Invalid netmask [%s]\n", word)
        addr = IP_NETMASK(addr, netmask)

    # move buf pointer to next string
    buf = temp
    buf = SKIP_SPACES(buf)

    addrmask = netmask

    return buf, addr, addrmask


# ----------------------------------------------------------------------------
def ParseConfigFile(configF):
    i = 0

    # config file path should not be null
    assert configF is not None

    # open firewall rule file
    try:
        fp = open(configF, "r", encoding="latin-1")
    except OSError:
        EXIT_WITH_ERROR("Firewall rule file %s is not found.\n", configF)

    # read each line
    with fp:
        for line in fp:

            # each line represents a rule
            fwr = g_FWRules[i]
            if len(line.rstrip("\n")) >= CONF_MAX_LINE_LEN:   # C's check never fires (fgets splits)
                EXIT_WITH_ERROR("%s has a line longer than %d\n",
                                configF, CONF_MAX_LINE_LEN)

            line = SKIP_SPACES(line)             # remove spaces
            if line == "" or line[0] == "#":
                continue
            p = line.find("#")
            if p >= 0:                           # skip comments in the line
                line = line[:p]
            while isspace(line[-1:]):            # remove spaces
                line = line[:-1]

            # read firewall rule action
            p = line
            if p.startswith(FR_ACCEPT):
                fwr.fr_action = FRA_ACCEPT
                p = p[len(FR_ACCEPT):]
            elif p.startswith(FR_DROP):
                fwr.fr_action = FRA_DROP
                p = p[len(FR_DROP):]
            else:
                EXIT_WITH_ERROR("Unknown rule action [%s].\n", line)

            if not isspace(p[:1]):               # invalid if no space exists after action
                EXIT_WITH_ERROR("Invalid format [%s].\n", line)
            p = SKIP_SPACES(p)

            # read client ip address
            if p:
                p, fwr.fr_srcIP, fwr.fr_srcIPmask = ExtractIPAddress(p)
            else:
                EXIT_WITH_ERROR("Invalid format [%s].\n", line)

            # read server ip address
            if p:
                p, fwr.fr_dstIP, fwr.fr_dstIPmask = ExtractIPAddress(p)
            else:
                EXIT_WITH_ERROR("Invalid format [%s].\n", line)

            # read port filter information
            while p:
                p, fwr.fr_srcPort, fwr.fr_dstPort = ExtractPort(p, fwr.fr_srcPort,
                                                                fwr.fr_dstPort)

            fwr.fr_count = 0
            if i >= MAX_RULES:                   # (i++) >= MAX_RULES
                EXIT_WITH_ERROR("Exceeded max number of rules (%d)\n", MAX_RULES)
            i += 1


# ----------------------------------------------------------------------------
def MatchAddr(ip, fw_ip, netmask):
    ip = IP_NETMASK(ip, netmask)

    # 0 means '*'
    return fw_ip == 0 or ip == fw_ip


# ----------------------------------------------------------------------------
def MatchPort(port, fw_port):
    # 0 means '*'
    return fw_port == 0 or port == fw_port


# ----------------------------------------------------------------------------
def FWRLookup(sip, dip, sp, dp):
    p = g_FWRules

    for i in range(MAX_RULES):
        if p[i].fr_action == FRA_INVALID:
            # We've searched till the end. By default, allow any flow
            return FRA_ACCEPT

        if (MatchAddr(sip, p[i].fr_srcIP, p[i].fr_srcIPmask) and
                MatchAddr(dip, p[i].fr_dstIP, p[i].fr_dstIPmask) and
                MatchPort(sp, p[i].fr_srcPort) and
                MatchPort(dp, p[i].fr_dstPort)):
            p[i].fr_count += 1
            return p[i].fr_action

    # assert(0): compiled out (-DNDEBUG); reached when all MAX_RULES rules are in use
    return FRA_ACCEPT


# ----------------------------------------------------------------------------
def ApplyActionPerFlow(mctx, msock, side, events, arg):
    # this function is called at the first SYN
    p = PktInfo()

    try:
        mtcp_getlastpkt(mctx, msock, side, p)
    except OSError as e:
        EXIT_WITH_ERROR("Failed to get packet context!\n", exc=e)

    # look up the firewall rules (p.iph->saddr, p.iph->daddr, p.tcph->source, p.tcph->dest)
    action = FWRLookup(struct.unpack_from("!I", p.iph, 12)[0], struct.unpack_from("!I", p.iph, 16)[0],
                       struct.unpack_from("!H", p.tcph, 0)[0], struct.unpack_from("!H", p.tcph, 2)[0])

    if action == FRA_DROP:
        mtcp_setlastpkt(mctx, msock, side, 0, None, 0, MOS_DROP)
    else:
        assert action == FRA_ACCEPT
        # no need to monitor this flow any more
        opt = MOS_SIDE_BOTH
        try:
            mtcp_setsockopt(mctx, msock, SOL_MONSOCKET, MOS_STOP_MON, opt)  # &opt, sizeof(opt)
        except OSError as e:
            EXIT_WITH_ERROR("Failed to stop monitoring conn with sockid: %d\n", msock, exc=e)


# ----------------------------------------------------------------------------
def CatchInitSYN(mctx, sockid, side, events, arg):
    p = PktInfo()

    try:
        mtcp_getlastpkt(mctx, sockid, side, p)
    except OSError as e:
        EXIT_WITH_ERROR("Failed to get packet context!!!\n", exc=e)

    return bool(p.tcph[13] & TH_SYN) and not p.tcph[13] & TH_ACK   # p.tcph->syn && !p.tcph->ack


# ----------------------------------------------------------------------------
def CreateAndInitThreadContext(ctx, core, udeForSYN):
    tv_1sec = timeval(tv_sec=1, tv_usec=0)    # 1 second

    ctx.mctx = mtcp_create_context(core)

    # create socket
    try:
        ctx.mon_listener = mtcp_socket(ctx.mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    except OSError as e:
        EXIT_WITH_ERROR("Failed to create monitor listening socket!\n", exc=e)

    # register callback
    try:
        mtcp_register_callback(ctx.mctx, ctx.mon_listener,
                               udeForSYN,
                               MOS_HK_SND,
                               ApplyActionPerFlow)
    except OSError as e:
        EXIT_WITH_ERROR("Failed to register callback func!\n", exc=e)

    # CPU 0 is in charge of printing stats
    try:
        if ctx.mctx.cpu == 0:
            mtcp_settimer(ctx.mctx, ctx.mon_listener, tv_1sec, DumpFWRuleTable)
    except OSError as e:
        EXIT_WITH_ERROR("Failed to register timer callback func!\n", exc=e)


# ----------------------------------------------------------------------------
def WaitAndCleanupThreadContext(ctx):
    # wait for the TCP thread to finish
    try:
        mtcp_app_join(ctx.mctx)
    except (OSError, RuntimeError, ValueError) as e:   # mosxdp sets the datapath up here
        EXIT_WITH_ERROR("mtcp_app_join() failed\n", exc=e)

    # close the monitoring socket
    mtcp_close(ctx.mctx, ctx.mon_listener)

    # tear down
    mtcp_destroy_context(ctx.mctx)


# ----------------------------------------------------------------------------
def GetNumCPUs():
    return os.sysconf("SC_NPROCESSORS_ONLN")


def main(argv):
    fname = MOS_CONFIG_FILE    # path to the default mos config file
    mcfg = MtcpConf()
    simple_firewall_file = "config/simple_firewall.conf"
    ctx = [thread_context() for _ in range(MAX_CPUS)]    # init all fields to 0

    # get the total # of cpu cores
    num_cpus = GetNumCPUs()

    try:
        opts, _ = getopt.getopt(argv[1:], "c:f:n:")
    except getopt.GetoptError:
        opts = [("?", None)]
    for opt, optarg in opts:
        if opt == "-c":
            fname = optarg
        elif opt == "-f":
            simple_firewall_file = optarg
        elif opt == "-n":
            rc = atoi(optarg)
            if rc > num_cpus:
                EXIT_WITH_ERROR("Available number of CPU cores is %d "
                                "while requested cores is %d\n",
                                num_cpus, rc)
            num_cpus = rc
        else:
            printf("Usage: %s [-c mos_config_file] "
                   "[-f simple_firewall_config_file]\n",
                   argv[0])
            return 0

    # parse mos configuration file
    try:
        mtcp_init(fname)
    except OSError as e:
        EXIT_WITH_ERROR("Failed to initialize mtcp.\n", exc=e)

    # set the core limit
    mtcp_getconf(mcfg)
    mcfg.num_cores = num_cpus
    mtcp_setconf(mcfg)

    # parse simple firewall-specfic startup file
    ParseConfigFile(simple_firewall_file)

    # populate local mos-specific mcfg struct for later usage
    mtcp_getconf(mcfg)

    # event for the initial SYN packet
    try:
        initSYNEvent = mtcp_define_event(MOS_ON_PKT_IN, CatchInitSYN, None)
    except OSError as e:     # C: initSYNEvent == MOS_NULL_EVENT
        EXIT_WITH_ERROR("mtcp_define_event() failed!", exc=e)

    # initialize monitor threads
    for i in range(mcfg.num_cores):
        CreateAndInitThreadContext(ctx[i], i, initSYNEvent)

    # wait until all threads finish
    for i in range(mcfg.num_cores):
        WaitAndCleanupThreadContext(ctx[i])
        TRACE_INFO("Message test thread %d joined.\n", i)

    mtcp_destroy()

    return EXIT_SUCCESS


# ----------------------------------------------------------------------------
if __name__ == "__main__":
    sys.exit(main(sys.argv))
