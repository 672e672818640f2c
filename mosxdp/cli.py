"""The mosxdp command line: run, detach, status, demo."""
import argparse
import errno
import gc
import importlib
import logging
import os
import signal
import sys
import traceback

from . import apps as apps_package

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_OUTPUT = 3     # the run went to its end, but an output lost data (docs/faults.md)


class CliError(Exception):
    """A user-facing error: printed as one line, no traceback."""

    def __init__(self, message, code=EXIT_FAILURE):
        super().__init__(message)
        self.code = code


# --debug or MOSXDP_DEBUG=1 (set by main): errors and callback exceptions with their traceback.
_debug = False


def _debug_wanted(argv):
    return "--debug" in argv or os.environ.get("MOSXDP_DEBUG", "") not in ("", "0")


def one_line(text):
    """``text`` with its control characters (a newline in a value) escaped: one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block): exit 2, as every usage error."""

    def error(self, message):
        prog = self.prog.removeprefix("mosxdp ")
        raise CliError(one_line(f"{prog}: {message} (see 'mosxdp {prog} --help')"), EXIT_USAGE)


def _app_error(name, what, exc):
    """One line for an exception out of an app's code: where it was raised, and what."""
    from .core.events import exception_site
    text = str(exc).splitlines()[0] if str(exc).strip() else ""
    return (f"app {name}: {what} raised {type(exc).__name__}{': ' + text if text else ''} "
            f"at {exception_site(exc)}")


def builtin_apps():
    import pkgutil
    names = {}
    for info in pkgutil.iter_modules(apps_package.__path__):
        if not info.name.startswith("_"):
            names[info.name] = f"{apps_package.__name__}.{info.name}"
    return names


def load_app(name):
    """A built-in app by name, or a Python file that defines setup(mctx, args)."""
    if name.endswith(".py") or os.sep in name:
        if os.path.isdir(name):
            raise CliError(f"app {name!r} is a directory, not a .py file", EXIT_USAGE)
        if not os.path.isfile(name):
            raise CliError(f"app file {name!r} does not exist", EXIT_USAGE)
        if not name.endswith(".py"):
            raise CliError(f"app {name!r} is not a .py file (an app is a built-in app's name "
                           "or a Python file that defines setup(mctx, args))", EXIT_USAGE)
        from importlib.util import module_from_spec, spec_from_file_location
        spec = spec_from_file_location(
            "mosxdp_user_app_" + os.path.splitext(os.path.basename(name))[0], name)
        module = module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            raise CliError(f"app {exc.filename or name}:{exc.lineno}: {exc.msg} "
                           f"({type(exc).__name__})", EXIT_USAGE) from exc
        except OSError as exc:
            raise CliError(f"app {name}: cannot read: {exc.strerror or exc}", EXIT_USAGE) from exc
        except (Exception, SystemExit) as exc:
            raise CliError(_app_error(name, "loading", exc), EXIT_USAGE) from exc
    else:
        # The app's module straight away (listing the apps costs every start-up pkgutil).
        module_name = f"{apps_package.__name__}.{name}"
        try:
            if not name.isidentifier() or name.startswith("_"):
                raise ModuleNotFoundError(name=module_name)
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise                   # the app's own import of something missing
            known = builtin_apps()
            raise CliError(f"unknown app {name!r} (apps: {', '.join(sorted(known))}; "
                           "or give a path to a .py file)", EXIT_USAGE) from None
    if not hasattr(module, "setup"):
        raise CliError(f"app {name!r} has no setup(mctx, args) function", EXIT_USAGE)
    return module


def _apps_epilog():
    lines = ["apps:"]
    for name, module_name in sorted(builtin_apps().items()):
        module = importlib.import_module(module_name)
        lines.append(f"  {name:<16} {getattr(module, 'DESCRIPTION', '')}")
    lines.append("  PATH.py          your own app: a file with setup(mctx, args)")
    lines.append("")
    lines.append("'mosxdp run APP --help' shows the app's own options.")
    return "\n".join(lines)


def _workers_arg(text):
    """--workers: "auto" or a count (its range is checked with the config's)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: \"auto\" or a count of processes") from None


def _datapath_options(parser):
    group = parser.add_argument_group("input and datapath")
    group.add_argument("--pcap", metavar="IN", help="offline: read frames from a pcap/pcapng file")
    group.add_argument("--write", metavar="OUT",
                       help="offline: write what inline mode would transmit to a pcap file")
    group.add_argument("--no-progress", action="store_true",
                       help="offline: no progress line (it shows on a terminal for runs "
                            "longer than a second)")
    group.add_argument("--iface", metavar="A", help="live: the monitored interface")
    group.add_argument("--peer", metavar="B",
                       help="live inline: the other interface (A's frames go out of B and back)")
    group.add_argument("--config", metavar="FILE",
                       help="configuration file: TOML, or mOS's mos.conf (see docs/config.md)")
    group.add_argument("--xdp-mode", choices=("native", "generic", "auto"), help="XDP attach mode")
    group.add_argument("--bind", choices=("copy", "zerocopy"), help="AF_XDP bind mode")
    group.add_argument("--fail-closed", action="store_true", default=None,
                       help="drop instead of forwarding when the monitor process is gone")
    group.add_argument("--force", action="store_true", default=None,
                       help="replace an XDP program that is not ours")
    group.add_argument("--detach-on-exit", action="store_true", default=None,
                       help="live inline: detach the XDP program at exit, which cuts the link "
                            "(default: it stays attached and forwards in the kernel, fail-open)")
    group.add_argument("--observe", action="store_true", default=None,
                       help="live: observe-only; the kernel forwards every frame and the app "
                            "reads copies (for apps that never drop, modify or send frames)")
    group.add_argument("--observe-snap", type=int, metavar="N",
                       help="with --observe: copy each frame's first N-1 bytes (N a power of "
                            "two, 128 to 16384; default 2048, a 1500-MTU frame whole); with "
                            "128, flows are tracked from their headers and the payload beyond "
                            "the copy is counted missed")
    group.add_argument("--full-inspection", action="store_true", default=None,
                       help="every frame of every flow through the monitor, also for apps "
                            "that need only counters and states (connlog, midstat: by default "
                            "the kernel forwards and counts their flows' data frames live, "
                            "and offline the engine counts their regular frames)")
    group.add_argument("--batch-size", type=int, metavar="N", help="frames per batch")
    group.add_argument("--workers", type=_workers_arg, metavar="N",
                       help="split the run over N processes by flow: offline the outputs are "
                            "those of one; live worker w owns the RX queues q with q %% N == w "
                            "(--observe: the ring of the flows its hash gives it, N <= 8; "
                            "docs/workers.md). Default auto: live one per RX queue up to the "
                            "CPUs, offline 1")
    group.add_argument("--on-callback-error", choices=("forward", "drop", "stop"),
                       help="what a callback exception does to its packet (default forward)")
    group.add_argument("--metrics-port", type=int, metavar="N",
                       help="live: serve Prometheus metrics on http://127.0.0.1:N/metrics")
    group.add_argument("--keep-privileges", action="store_true", default=None,
                       help="live: keep every capability for the whole run (default: after "
                            "set-up keep only CAP_NET_ADMIN, to detach at exit, and set "
                            "no_new_privs)")
    group.add_argument("--stats", action="store_true",
                       help="print counters on stderr: live a status line every second and "
                            "a summary at exit; offline a summary at the end")
    group.add_argument("--stats-json", metavar="FILE",
                       help="at exit, write the counters as JSON: the core's, and live the "
                            "datapath's (XDP program, kernel verdicts, UMEM accounting)")
    group.add_argument("--debug", action="store_true",
                       help="errors and callback exceptions with their Python traceback "
                            "(also MOSXDP_DEBUG=1)")


class _RunParser(_Parser):
    """`mosxdp run`'s parser: the list of apps in its help is made when the help is shown
    (it imports every app)."""

    def format_help(self):
        if self.epilog is None:
            self.epilog = _apps_epilog()
        return super().format_help()


def _run_parser():
    parser = _RunParser(
        prog="mosxdp run", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a monitor app on a pcap file (offline) or an interface (live).")
    parser.add_argument("app", help="app name or path to a .py file")
    _datapath_options(parser)
    return parser


def parse_run(argv):
    """`mosxdp run APP ARGS...` read (without running anything): ``(app name, app module,
    parsed arguments, configuration overrides)``; CliError for bad usage. What the
    configuration then makes of the overrides is load_config's (mtcp_init's) to check."""
    app_name = argv[0]
    module = load_app(app_name)
    app_parser = _Parser(
        prog=f"mosxdp run {app_name}", description=getattr(module, "DESCRIPTION", None),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _datapath_options(app_parser)
    app_group = app_parser.add_argument_group(f"{app_name} options")
    if hasattr(module, "add_arguments"):
        try:
            module.add_arguments(app_group)
        except Exception as exc:
            raise CliError(_app_error(app_name, "add_arguments", exc), EXIT_USAGE) from exc
    args = app_parser.parse_args(argv[1:])
    if args.pcap is None and args.iface is None:
        app_parser.error("give --pcap IN (offline) or --iface A [--peer B] (live)")
    if args.pcap is not None and args.iface is not None:
        app_parser.error("--pcap and --iface are exclusive")
    if args.peer is not None and args.iface is None:
        app_parser.error("--peer needs --iface")
    overrides = {
        "pcap": args.pcap, "write": args.write, "iface": args.iface, "peer": args.peer,
        "xdp_mode": args.xdp_mode, "bind": args.bind, "fail_closed": args.fail_closed,
        "force": args.force, "batch_size": args.batch_size,
        "on_callback_error": args.on_callback_error, "metrics_port": args.metrics_port,
        "keep_privileges": args.keep_privileges, "detach_on_exit": args.detach_on_exit,
        "observe": args.observe, "observe_snap": args.observe_snap, "workers": args.workers,
        "full_inspection": args.full_inspection,
    }
    if args.iface is not None:
        overrides["mode"] = "inline" if args.peer else "passive"
    return app_name, module, args, overrides


def cmd_run(argv):
    parser = _run_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    app_name, module, args, overrides = parse_run(argv)

    from . import api
    from .engine.run import run
    try:
        api.mtcp_init(args.config, **overrides)
    except OSError as exc:
        raise CliError(exc.strerror, EXIT_USAGE) from None
    mctx = api.mtcp_create_context(0)
    from .config import AUTO_WORKERS
    if mctx.config.workers == AUTO_WORKERS:
        from .engine.worker_count import auto_workers
        mctx.config.workers = auto_workers(mctx.config, module)
    split = mctx.config.workers > 1
    # Before the app's set-up creates its outputs, and before anything is attached.
    from .engine.run import preflight
    try:
        if split and getattr(module, "ONE_WORKER", None):
            raise OSError(errno.EINVAL, f"--workers {mctx.config.workers}: app {app_name} "
                                        f"runs on one worker: {module.ONE_WORKER}")
        preflight(mctx.config)
        if mctx.config.iface is not None:
            from .io.xdp.owner import check_free
            check_free([n for n in (mctx.config.iface, mctx.config.peer) if n])
    except OSError as exc:
        api.mtcp_destroy()
        raise CliError(exc.strerror or str(exc),
                       EXIT_USAGE if exc.errno in (errno.EINVAL, errno.ENODEV) else EXIT_FAILURE
                       ) from None
    except BaseException:
        api.mtcp_destroy()
        raise
    print_stats = args.stats or mctx.config.stats
    stats_json = None
    if args.stats_json:
        # Opened now, also because at exit a live monitor has dropped CAP_DAC_OVERRIDE and
        # could not create a file in a directory root does not own (sudo in a home directory).
        try:
            stats_json = mctx.outputs.open_file(args.stats_json)
        except OSError as exc:
            api.mtcp_destroy()
            raise CliError(f"--stats-json {exc.filename}: {exc.strerror}", EXIT_USAGE) from None
    failed = False
    callbacks_failed = False
    workers_failed = False
    try:
        try:
            app = module.setup(mctx, args)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise CliError(f"{app_name}: {where}{exc.strerror or exc}", EXIT_USAGE) from None
        except Exception as exc:
            raise CliError(_app_error(app_name, "setup", exc)) from exc
        if args.iface is not None:
            # The XDP program is attached before the live loop installs its own SIGTERM
            # handler: a SIGTERM (or SIGHUP) meanwhile must unwind like Ctrl-C, not kill.
            signal.signal(signal.SIGTERM, _sigterm_unwinds)
            if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:  # nohup: stay ignored
                signal.signal(signal.SIGHUP, _sigterm_unwinds)
        result = None
        try:
            # Only for a person watching: nothing in a log or a pipe.
            progress = args.pcap is not None and not args.no_progress and _is_terminal(sys.stderr)
            if split and args.iface is not None:
                from .engine.live_workers import LiveSplitRun, WorkersFailed
                try:
                    result = LiveSplitRun(mctx, module, app, print_stats).run()
                except WorkersFailed as exc:
                    result = exc.result
                    workers_failed = True
            elif split:
                from .engine.workers import SplitRun
                result = SplitRun(mctx, module, app, print_stats, progress).run()
            else:
                result = run(mctx, print_stats=print_stats, progress=progress)
        finally:
            # A split run's workers ran the app's teardown, each on its own state.
            if hasattr(module, "teardown") and not split:
                try:
                    module.teardown(app)
                except Exception as exc:
                    if _debug:
                        traceback.print_exc()
                    print(f"mosxdp: error: {one_line(_app_error(app_name, 'teardown', exc))}",
                          file=sys.stderr)
                    failed = True
            # The network sinks drain (for a bounded time) before their counts are said.
            mctx.outputs.close_sinks()
            from .engine.report import print_live_summary, write_stats_json
            if print_stats and args.iface is not None:
                print_live_summary(mctx, result)
            for line in mctx.outputs.sink_lines(every=print_stats):
                print(line, file=sys.stderr)
            if stats_json is not None:
                write_stats_json(stats_json, mctx, result)
            # A callback that raised is an app bug: the run went on (the policy applied to
            # its packets), and ends non-zero.
            callbacks_failed = _print_callback_errors(mctx)
            failed = _report_output_failures(mctx) or failed
    finally:
        api.mtcp_destroy()
    if failed:
        return EXIT_OUTPUT
    return EXIT_FAILURE if callbacks_failed or workers_failed else 0


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # replaced by an object without one, or closed
        return False


def _report_output_failures(mctx):
    """At exit, every output closed: one line per output that lost data (its path, the
    first error, how much was lost); True if there was one."""
    outputs = mctx.outputs
    outputs.close()
    lines = outputs.failure_lines()
    for line in lines:
        print(f"mosxdp: error: {line}", file=sys.stderr)
    return bool(lines)


def _sigterm_unwinds(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _print_callback_errors(mctx):
    """At exit: how often each callback raised (its first exception was logged); True if
    one did."""
    from .engine.callback_log import counts_line
    line = counts_line(mctx.stack)
    if line:
        print(line, file=sys.stderr)
    return line is not None


def _command_parser(name, description):
    parser = _Parser(prog=f"mosxdp {name}", description=description)
    parser.add_argument("--debug", action="store_true",
                        help="errors with their Python traceback (also MOSXDP_DEBUG=1)")
    return parser


def cmd_detach(argv):
    parser = _command_parser(
        "detach", "Remove an XDP program left attached to an interface (after a monitor "
                  "stopped or died). On an inline link this cuts the link.")
    parser.add_argument("--iface", required=True, action="append", help="interface (repeatable)")
    parser.add_argument("--force", action="store_true",
                        help="also remove a program that is not mosxdp's, or one a running "
                             "monitor holds")
    args = parser.parse_args(argv)
    from .io import xdp
    for ifname in args.iface:
        peer = xdp.inline_peer(ifname)
        removed = xdp.detach(ifname, force=args.force)
        print(f"{ifname}: {'detached ' + removed if removed else 'no XDP program attached'}")
        if removed and peer:
            print(f"mosxdp: warning: {ifname} was inline to {peer}: frames arriving on {ifname} "
                  f"are no longer forwarded to {peer}, the inline link is cut", file=sys.stderr)
    return 0


def cmd_status(argv):
    parser = _command_parser(
        "status", "Show the XDP programs attached to the interfaces and, for mosxdp's, "
                  "their counters (summed over the CPUs) and verdict map occupancy.")
    parser.add_argument("--iface", action="append", help="only this interface (repeatable)")
    parser.add_argument("--netns", help="look in this network namespace (ip netns name)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    from .io import xdp
    state = xdp.status(args.iface, netns=args.netns)
    if args.json:
        import json
        print(json.dumps(state, indent=1, sort_keys=True))
        return 0
    for line in status_lines(state, all_ifaces=bool(args.iface)):
        print(line)
    return 0


def status_lines(state, all_ifaces=False):
    """`mosxdp status` as text: attached programs per interface, then per mosxdp program
    its verdict-map occupancy, interfaces and non-zero counters."""
    lines = []
    names = {v["ifindex"]: k for k, v in state["interfaces"].items()}
    for ifname, info in sorted(state["interfaces"].items()):
        progs = info["programs"]
        if not progs:
            if all_ifaces:
                lines.append(f"{ifname}: no XDP program")
            continue
        lines.append(f"{ifname}: " + ", ".join(
            f"{p['mode']} program id {p['id']} {p['name']!r}" + (" (mosxdp)" if p["ours"] else "")
            for p in progs) + _owner_text(info.get("owner")))
    if not lines:
        lines.append("no XDP program attached")
    for pid, prog in sorted(state["programs"].items()):
        if "error" in prog:
            lines.append(f"program {pid}: cannot read its maps: {prog['error']}")
            continue
        lines.append(f"program {pid}: verdict map {prog['verdicts']}/{prog['verdicts_max']} entries")
        for ifindex, cfg in sorted(prog["interfaces"].items(), key=lambda kv: int(kv[0])):
            ifname = names.get(int(ifindex), f"ifindex {ifindex}")
            mode = (f"inline to {names.get(cfg['egress_ifindex'], cfg['egress_ifindex'])}"
                    if cfg["inline"] else "passive")
            extra = "".join(f", {k.replace('_', ' ')}" for k in ("fail_closed", "filter_all_ip")
                            if cfg.get(k))
            lines.append(f"  {ifname}: slot {cfg['slot']}, {mode}{extra}")
        counters = prog["counters"]
        shown = ", ".join(f"{k} {v}" for k, v in counters.items() if v) or "all zero"
        lines.append(f"  counters: {shown}")
    return lines


def _owner_text(owner):
    """`mosxdp status`: who holds an interface, as its lock file says."""
    if not owner or not owner.get("pid"):
        return ""
    if owner["held"]:
        return f", held by monitor PID {owner['pid']}"
    if owner["state"] == "fail-open":
        return f", left fail-open by monitor PID {owner['pid']} (stopped)"
    return f", stale: its monitor PID {owner['pid']} is gone"


def cmd_demo(argv):
    parser = _command_parser(
        "demo", "Build a veth/netns testbed, run real TCP transfers through the inline "
                "monitor, print a summary, and clean up (root).")
    parser.add_argument("--keep", action="store_true", help="keep the demo's files (logs, data)")
    args = parser.parse_args(argv)
    from .demo.run import run_demo
    return run_demo(keep=args.keep)


COMMANDS = {
    "run": (cmd_run, "run a monitor app offline (--pcap) or live (--iface)"),
    "demo": (cmd_demo, "real TCP through the inline monitor on a netns testbed (root)"),
    "detach": (cmd_detach, "remove an XDP program left behind"),
    "status": (cmd_status, "attached XDP programs, their counters and verdict maps"),
}


def _known_errors():
    """Exception types that are user errors: one line, no traceback."""
    from .engine.workers import WorkerFailed
    from .io.pcap import PcapFormatError
    errors = [CliError, PcapFormatError, OSError, WorkerFailed]
    try:
        from .io.xdp import XdpError
        errors.append(XdpError)
    except ImportError:
        pass
    return tuple(errors)


class _CallbackLine(logging.Formatter):
    """A callback's exception as its one line; with --debug, its traceback after it."""

    def format(self, record):
        text = record.getMessage()
        if _debug and record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _StderrHandler(logging.Handler):
    """Writes to the sys.stderr of the moment (tests replace it)."""

    def emit(self, record):
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _log_callbacks_to_stderr():
    logger = logging.getLogger("mosxdp.callbacks")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_CallbackLine())
        logger.addHandler(handler)


def _option(argv, name):
    """The value of option ``name`` on a command line (the last one given), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1:]
    return value


def _begin_plan(argv):
    """A split offline run (``--pcap FILE --workers N``, N > 1): its plan's pass begun
    before anything else is imported (engine/split_feed.py's begin_plan). Only a head
    start: the run checks its options as always, and takes the pass only for its input."""
    pcap, workers = _option(argv, "--pcap"), _option(argv, "--workers")
    if pcap in (None, "-") or workers is None or not workers.isdigit() or int(workers) < 2:
        return
    from .engine.split_feed import begin_plan
    begin_plan(pcap, int(workers))


def main(argv=None):
    global _debug
    argv = sys.argv[1:] if argv is None else argv
    _debug = _debug_wanted(argv)
    _log_callbacks_to_stderr()
    if argv and argv[0] == "--version":
        from importlib.metadata import version

        from .core.compiled import describe
        print(f"mosxdp {version('mosxdp')}: {describe()}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mosxdp [--version] COMMAND [ARGS]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<10} {text}")
        print("\n'mosxdp COMMAND --help' for details.")
        return 0 if argv else EXIT_USAGE
    command = COMMANDS.get(argv[0])
    if argv[0] == "run":
        _begin_plan(argv[1:])
    if command is None:
        print(f"mosxdp: error: unknown command {argv[0]!r} (commands: {', '.join(COMMANDS)})",
              file=sys.stderr)
        return EXIT_USAGE
    from .core.stack import StopMonitor
    try:
        return command[0](argv[1:])
    except KeyboardInterrupt:
        return 130
    except StopMonitor as exc:
        if _debug:
            traceback.print_exc()
        # sys.exit(0) in a callback: a stop the app asked for, not an error.
        print(f"mosxdp: {'' if exc.code == 0 else 'error: '}{one_line(str(exc))}",
              file=sys.stderr)
        return exc.code
    except _known_errors() as exc:
        if _debug:
            traceback.print_exc()
        code = getattr(exc, "code", EXIT_FAILURE)
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, OSError) and getattr(exc, "filename", None):
            message = f"{exc.filename}: {message}"
        print(f"mosxdp: error: {one_line(message)}", file=sys.stderr)
        return code if isinstance(code, int) else EXIT_FAILURE
    except Exception as exc:
        # Not a user error: still one line, where it was raised, and how to see more.
        from .core.events import exception_site
        if _debug:
            traceback.print_exc()
        text = str(exc).splitlines()[0] if str(exc).strip() else ""
        print(f"mosxdp: error: {type(exc).__name__}{': ' + one_line(text) if text else ''} at "
              f"{one_line(exception_site(exc))}"
              + ("" if _debug else " (--debug or MOSXDP_DEBUG=1 shows the traceback)"),
              file=sys.stderr)
        return EXIT_FAILURE


def entry():
    """The `mosxdp` command (pyproject.toml's script, and `python -m mosxdp.cli`): main(),
    then the interpreter's exit without its last walks over every object: what is left
    is frozen (gc.freeze), so that the exit only frees it: 6-10 ms less a run. The
    outputs are closed by then; main() called from Python leaves the collector as it was."""
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(entry())
