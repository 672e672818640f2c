"""What the counting test apps (dropsyn, overwrite, reset) share: the --log counters file,
rewritten whenever the counters change (the tests read it while the monitor runs), and the
--ready file, created at the first CONN_START (see streamhash.py). An app file imports
it after putting its own folder on sys.path (`mosxdp run` loads apps by path)."""
import json
import os


def add_arguments(parser):
    parser.add_argument("--log", required=True, help="JSON counters, rewritten on change")
    parser.add_argument("--ready", help="file created at the first CONN_START")


class CountingApp:
    def __init__(self, args, **counters):
        self.args = args
        self.ready = args.ready
        self.counters = counters

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n
        self.save()

    def save(self) -> None:
        tmp = self.args.log + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.counters, f)
        os.replace(tmp, self.args.log)

    def mark_ready(self) -> None:
        if self.ready:
            open(self.ready, "w").close()
            self.ready = None


def teardown(app):
    app.save()
