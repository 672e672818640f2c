"""netns tier: the live monitor's outputs, with real traffic through it::

    cli: cli0 <==> A [mon: mosxdp run APP --iface A --peer B] B <==> srv0 :8080 srv

* an --outdir that the monitor could not write once it has dropped its privileges (a
  directory of another user, mode 755: root gets in only through CAP_DAC_OVERRIDE) is
  refused at start with one line, before anything is attached (`ip monitor link` sees no
  XDP change); with --keep-privileges the same directory takes the streams;
* a dangling link planted in the --outdir under the name of a flow's file is not
  followed: nothing is made where it points, the flow's bytes go to the next suffix;
* connlog's line for a flow reaches its file within about a second of the flow's end,
  while the monitor runs;
* on a full disk the first failed write is said at once, the monitor keeps forwarding,
  and its exit after SIGINT is status 3 with the file named.

Skipped when the probe fails (not root, no AF_XDP, no bcc/libxdp, no curl); with
MOSXDP_REQUIRE_PRIVILEGED=1 a failed probe fails instead.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import livekit
import pytest
from livekit import Monitor, sha256_file

from mosxdp.apps.flowdump import endpoint_name

pytestmark = pytest.mark.netns

PORT = 8080
SIZE = 1 << 20
XDP_ATTACHED = re.compile(r"\bxdp\w*/id:\d+")     # in a link line of `ip monitor`


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    livekit.require_live(("curl", "ip"))
    with livekit.serving(tmp_path_factory, {"f1k": 1024, "f1m": SIZE}, (PORT,)) as bed:
        yield bed


class LinkWatch:
    """`ip -o monitor link` in the monitor's namespace: the link changes it saw."""

    def __init__(self, bed):
        self.tb = bed.tb
        self.proc = bed.tb.popen("mon", ["ip", "-o", "monitor", "link"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        time.sleep(0.3)                             # listening before the monitor starts

    def stop(self) -> str:
        time.sleep(0.3)
        self.tb.stop(self.proc, signal.SIGTERM)
        return self.proc.stdout.read()


def test_an_outdir_the_running_monitor_could_not_write_is_refused_before_attaching(bed):
    outdir = bed.out_path("users")
    outdir.mkdir()
    os.chown(outdir, 65534, 65534)
    outdir.chmod(0o755)

    watch = LinkWatch(bed)
    mon = Monitor(bed, "flowdump", "--outdir", outdir, attach=False)
    try:
        rc = mon.wait(60)
    finally:
        mon.close()
    changes = watch.stop()
    log = mon.log()
    assert rc == 2, log
    assert log.splitlines() == [
        f"mosxdp: error: flowdump: {outdir}: not writable by the live monitor once it dropped "
        "its privileges after set-up (Permission denied): use a directory whose permissions "
        "let root in (without CAP_DAC_OVERRIDE), or --keep-privileges"], log
    assert not XDP_ATTACHED.search(changes), changes     # never attached
    assert os.listdir(outdir) == []

    # The check means the drop: without it, the same directory takes the streams (and the
    # watch sees the attach, so it would have seen one above).
    watch = LinkWatch(bed)
    # Ready on a whole request: a warm-up whose SYN and GET took the kernel path before the
    # sockets were in the map leaves a file of the response alone.
    mon = bed.monitor("flowdump", "--outdir", outdir, "--keep-privileges",
                      ready=lambda: any(p.read_bytes().startswith(b"GET /f1k ")
                                        for p in outdir.iterdir()))
    try:
        mon.stop_clean()
    finally:
        mon.close()
    assert XDP_ATTACHED.search(watch.stop())
    assert any(p.read_bytes().startswith(b"GET /f1k ") for p in outdir.iterdir())


def test_a_dangling_link_in_the_outdir_is_not_followed(bed):
    tb = bed.tb
    outdir, outside = bed.out_path("streams"), bed.out_path("outside")
    outdir.mkdir()
    outside.mkdir()
    local_port = 43001
    cli, srv = endpoint_name(tb.cli_ip, local_port), endpoint_name(tb.srv_ip, PORT)
    names = (f"{cli}-{srv}", f"{srv}-{cli}")
    for name in names:
        (outdir / name).symlink_to(outside / name)
    mon = bed.monitor("flowdump", "--outdir", outdir,
                      ready=lambda: any(not p.is_symlink() for p in outdir.iterdir()))
    try:
        r, got = bed.download(4, "f1m", local_port=local_port)
        assert r.returncode == 0, r.stderr
        assert sha256_file(got) == sha256_file(bed.www / "f1m")
        mon.stop_clean()
    finally:
        mon.close()
    assert os.listdir(outside) == []
    for name in names:
        assert os.readlink(outdir / name) == str(outside / name)
    request, response = ((outdir / (name + "c1")).read_bytes() for name in names)
    assert request.startswith(b"GET /f1m HTTP/1.1\r\n")
    assert response.startswith(b"HTTP/1.0 200 OK\r\n")
    assert response.endswith((bed.www / "f1m").read_bytes())


def lines_with_port(path, port):
    if not path.exists():
        return []
    return [record for record in map(json.loads, path.read_text().splitlines())
            if record["id.orig_p"] == port]


def test_a_connlog_line_is_in_its_file_while_the_monitor_runs(bed):
    log = bed.out_path("conn.json")
    mon = bed.monitor("connlog", "--output", log, ready=lambda: log.stat().st_size > 0)
    try:
        local_port = 43002
        r, _ = bed.download(4, "f1m", local_port=local_port)
        assert r.returncode == 0, r.stderr
        ended = time.monotonic()
        # The flow ends at the monitor once it saw the last ACK of the close; its line is
        # written at the next flush, within a second.
        livekit.wait_until("connlog's line of the download",
                           lambda: lines_with_port(log, local_port), 5, mon.alive)
        assert time.monotonic() - ended < 3
        mon.alive()
        (record,) = lines_with_port(log, local_port)
        assert record["resp_bytes"] > SIZE and record["conn_state"] == "SF"
        mon.stop_clean()
    finally:
        mon.close()


@pytest.fixture
def small_disk(bed):
    where = bed.out_path("disk")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", where], check=True,
                   timeout=30)
    yield where
    subprocess.run(["umount", where], check=False, timeout=30)


def test_a_full_disk_is_said_at_once_and_the_monitor_goes_on(bed, small_disk):
    page = os.sysconf("SC_PAGE_SIZE")
    (small_disk / "pad").write_bytes(b"\0" * (64 * 1024 - page))
    log = small_disk / "conn.json"
    mon = bed.monitor("connlog", "--output", log, ready=lambda: log.stat().st_size > 0)
    try:
        warning = (f"mosxdp: warning: cannot write {log}: No space left on device; "
                   "the run goes on and will exit non-zero")
        for attempt in range(60):                   # a line is ~450 bytes: a page is ~9
            r, _ = bed.download(4, "f1k")
            assert r.returncode == 0, r.stderr      # the monitor forwards all along
            if warning in mon.log():
                break
            time.sleep(0.1)
        assert warning in mon.log(), mon.log()
        r, got = bed.download(4, "f1m")             # and after the failure too
        assert r.returncode == 0 and sha256_file(got) == sha256_file(bed.www / "f1m")
        rc = mon.stop(signal.SIGINT)
    finally:
        mon.close()
    lines = mon.log().splitlines()
    assert rc == 3, lines
    errors = [line for line in lines if line.startswith("mosxdp: error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"mosxdp: error: cannot write {log}: No space left on device ("), lines
    text = log.read_text()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())
