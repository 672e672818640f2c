#!/bin/sh
# Idempotent root setup for a fresh Debian 12 machine: apt packages, the
# kernel-headers link bcc needs, and the project venv (.venv) built from
# Debian's /usr/bin/python3 so that bcc (python3-bpfcc) is importable.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/.venv"

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs apt packages and links kernel headers)" >&2
    exit 1
fi

PKGS="python3-bpfcc python3-venv libxdp1 xdp-tools linux-headers-amd64 iproute2 ethtool
      tshark tcpdump tcpflow curl iperf3 procps gcc python3-dev iputils-ping redis-server"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup.sh: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -q
    # The tests start redis-server themselves (on a socket of their own): the package's
    # own service must not start. Where no policy says so, one does for this install.
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get install -y -q --no-install-recommends $missing
    if [ -n "$policy" ]; then rm -f "$policy"; trap - EXIT; fi
fi

# bcc compiles against /lib/modules/$(uname -r)/build. When the running kernel
# has no headers package, point build and source at Debian's newest headers:
# the XDP program uses only stable UAPI.
KDIR="/lib/modules/$(uname -r)"
if [ ! -e "$KDIR/build/include" ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$hdr" ]; then
        echo "setup.sh: no /usr/src/linux-headers-*-amd64 after installing linux-headers-amd64" >&2
        exit 1
    fi
    mkdir -p "$KDIR"
    ln -sfn "$hdr" "$KDIR/build"
    common=$(echo "$hdr" | sed 's/-amd64$/-common/')
    if [ -d "$common" ]; then ln -sfn "$common" "$KDIR/source"; else ln -sfn "$hdr" "$KDIR/source"; fi
    echo "setup.sh: linked $KDIR/build -> $hdr"
fi

if [ ! -x "$VENV/bin/python" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
# An editable install as a path in a .pth file (compat): the default one imports an import
# finder (pathlib, urllib.parse, ipaddress) at every Python start, ~10 ms of each run.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test]" \
    --config-settings editable_mode=compat
# The package's byte-code now (an editable install compiles none): where
# PYTHONDONTWRITEBYTECODE is set (CI, containers) every start would otherwise compile each
# module from source, 60 ms of an 80 ms start.
"$VENV/bin/python" -m compileall -q "$ROOT/mosxdp"
echo "setup.sh: ready ($VENV)"
