"""The progress line of an offline run (mosxdp/engine/progress.py): on a terminal (stderr a
pseudo-terminal of 100 columns, as a shell in a terminal window has) for a run longer than
a second, not for a shorter one, not when stderr is a pipe or a file, not with
--no-progress; standard output (the app's records) is never touched."""
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time

from integ_helpers import APPS, DATA, REPO, mosxdp_command

HTTP = DATA / "http_sizes.pcap"          # 1540 frames, 1279515 bytes
SLOW = [str(APPS / "slow.py"), "--ms", "1.5"]   # about 2.5 s over HTTP


def on_a_terminal(args):
    """Run mosxdp with stderr on a pseudo-terminal: (exit code, what the terminal got,
    seconds). Standard output goes to a pipe."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    started = time.monotonic()
    proc = subprocess.Popen(mosxdp_command() + [str(a) for a in args], cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:      # EIO: the last writer closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        stdout = proc.communicate(timeout=60)[0]
    finally:
        os.close(master)
    return proc.returncode, seen.decode(errors="replace"), time.monotonic() - started, stdout


def progress_lines(text):
    return re.findall(r"http_sizes\.pcap: +(\d+)%\|[^|]*\| ([\d.]+[kMG]?)B/([\d.]+[kMG]?)B "
                      r"\[[\d:]+<[\d:?]+, ([\d.]+) kpps, flows (\d+)\]", text)


def test_progress_line_on_a_terminal_for_a_long_run():
    code, seen, seconds, stdout = on_a_terminal(["run", *SLOW, "--pcap", HTTP])
    assert code == 0 and seconds > 1.5, (code, seen)
    found = progress_lines(seen)
    assert found, repr(seen)
    percents = [int(p) for p, *_ in found]
    assert percents == sorted(percents) and percents[-1] == 100
    assert found[-1][2] == "1.28M" and found[-1][1] == "1.28M"     # 1279515 bytes
    assert int(found[-1][4]) == 4 and float(found[-1][3]) > 0
    # cleared at the end: the last thing on the terminal is a blank line returned over
    assert seen.endswith("\r") and seen.rsplit("\r", 2)[-2].strip() == ""
    assert stdout == b""


def test_no_progress_line_for_a_short_run_or_with_no_progress():
    code, seen, seconds, _ = on_a_terminal(["run", "connlog", "--pcap", HTTP,
                                            "--output", os.devnull])
    assert code == 0 and seconds < 5 and seen == "", repr(seen)
    code, seen, _, _ = on_a_terminal(["run", *SLOW, "--pcap", HTTP, "--no-progress"])
    assert code == 0 and seen == "", repr(seen)


def test_no_progress_line_when_stderr_is_a_pipe():
    proc = subprocess.run(mosxdp_command() + ["run", *SLOW, "--pcap", str(HTTP), "--stats"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mosxdp: frames in 1540"), proc.stderr
    assert "\r" not in proc.stderr and "%|" not in proc.stderr


def test_progress_line_then_the_summary_on_a_terminal():
    code, seen, _, _ = on_a_terminal(["run", *SLOW, "--pcap", HTTP, "--stats"])
    assert code == 0 and progress_lines(seen)
    # the bar is cleared before the summary is printed
    last = seen.rstrip("\r\n").rsplit("\r", 1)[-1].lstrip("\n")
    assert last.startswith("mosxdp: frames in 1540"), repr(seen[-300:])


def test_progress_line_of_a_run_split_over_workers():
    """Two workers: the line follows the slower one through the file, reaches 100 % and is
    cleared; the flows are both workers'."""
    code, seen, seconds, stdout = on_a_terminal(
        ["run", str(APPS / "slow.py"), "--ms", "3", "--pcap", HTTP, "--workers", "2"])
    assert code == 0 and seconds > 1.5, (code, seen)
    found = progress_lines(seen)
    assert found, repr(seen)
    percents = [int(p) for p, *_ in found]
    assert percents == sorted(percents) and percents[-1] == 100
    assert found[-1][2] == "1.28M" and found[-1][1] == "1.28M"
    assert int(found[-1][4]) == 4
    assert seen.endswith("\r") and seen.rsplit("\r", 2)[-2].strip() == ""
    assert stdout == b""
