"""Suite-wide policy: with MOSXDP_REQUIRE_PRIVILEGED=1 (CI, as root in a VM
with BPF) no test may skip. A skip there means a datapath went untested, so
it is turned into a failure that says why."""
import os

import pytest

REQUIRE_PRIVILEGED = os.environ.get("MOSXDP_REQUIRE_PRIVILEGED") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_PRIVILEGED and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"skipped, but MOSXDP_REQUIRE_PRIVILEGED=1 forbids skips: {reason}")


def pytest_sessionfinish(session, exitstatus):
    # pytest's exit 5 (no tests collected) must never pass as green.
    if exitstatus == 5:
        session.exitstatus = 1


@pytest.fixture
def redis_server(tmp_path_factory):
    """A redis-server of the test's own on a unix socket and a free loopback port
    (tests/redisd.py), started; stopped afterwards whatever happened."""
    from redisd import RedisServer
    server = RedisServer(tmp_path_factory.mktemp("redis"), tcp=True)
    try:
        yield server.start()
    finally:
        server.stop()
