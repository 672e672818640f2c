"""The demo's monitor: simple_firewall, scrub and connlog in one context.

Each sample app registers its own monitoring socket, so the three see every
flow side by side, as three mOS apps sharing one stack would.
"""
import argparse

from mosxdp.apps import connlog, scrub, simple_firewall

DESCRIPTION = "simple_firewall + scrub + connlog together (used by `mosxdp demo`)"


def add_arguments(parser):
    parser.add_argument("--rules", required=True, help="simple_firewall rules file")
    parser.add_argument("--fw-stats", required=True, help="simple_firewall per-rule counts (JSON)")
    parser.add_argument("--pattern", required=True, help="scrub pattern")
    parser.add_argument("--scrub-log", required=True, help="scrub hits (JSON lines)")
    parser.add_argument("--conn-log", required=True, help="connlog output (JSON lines)")


def _app_args(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def setup(mctx, args):
    apps = []
    for module, argv in (
            (simple_firewall, ["--rules", args.rules, "--output", "/dev/null",
                               "--stats-output", args.fw_stats]),
            (scrub, ["--pattern", args.pattern, "--mask", "X", "--side", "server",
                     "--log", args.scrub_log]),
            (connlog, ["--output", args.conn_log])):
        apps.append((module, module.setup(mctx, _app_args(module, argv))))
    return apps


def teardown(apps):
    for module, app in reversed(apps):
        if hasattr(module, "teardown"):
            module.teardown(app)
