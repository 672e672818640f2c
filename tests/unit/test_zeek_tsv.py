"""connlog --format tsv: Zeek's TSV log (mosxdp/core/zeeklog.py), read back with a small
reader written here from Zeek's format (the #separator line, then the meta lines it
announces, #fields and #types, the rows, #close), on every capture of tests/data: the
header parses, every row has every field, and every value equals the JSON line's.
"""
import json
import re
import time
from pathlib import Path

import pytest

from mosxdp import cli
from mosxdp.core import zeeklog

DATA = Path(__file__).resolve().parents[1] / "data"
CAPTURES = sorted(DATA.glob("*.pcap"))
ZEEK_TIME = re.compile(r"\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d")


def unescape(text):
    """Zeek's \\xNN escapes back to characters (of the UTF-8 they spell)."""
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode())
    return raw.decode("utf-8", "surrogatepass")


def read_zeek(text):
    """(meta {name: value}, [record dict]) of a Zeek TSV log; values typed per #types."""
    lines = text.split("\n")
    assert lines[-1] == "", "the log ends with a newline"
    first = lines[0]
    assert first.startswith("#separator ")
    sep = unescape(first[len("#separator "):])
    meta, records = {}, []
    for line in lines[1:-1]:
        if line.startswith("#"):
            name, _, value = line[1:].partition(sep)
            meta[name] = value.split(sep) if name in ("fields", "types") else unescape(value)
            continue
        assert "close" not in meta, "nothing after #close"
        values = line.split(sep)
        assert len(values) == len(meta["fields"]) == len(meta["types"]), line
        record = {}
        for name, kind, value in zip(meta["fields"], meta["types"], values):
            if value == meta["unset_field"]:
                record[name] = None
            elif value == meta["empty_field"]:
                record[name] = ""
            elif kind in ("time", "interval"):
                record[name] = float(value)
            elif kind in ("count", "port"):
                record[name] = int(value)
            else:
                record[name] = unescape(value)
        records.append(record)
    return meta, records


def run_connlog(path, fmt, out, capsys):
    code = cli.main(["run", "connlog", "--pcap", str(path), "--output", str(out),
                     "--format", fmt, "--on-callback-error", "stop"])
    assert code == 0, capsys.readouterr().err
    return out.read_text()


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_tsv_parses_and_equals_the_json_lines(path, tmp_path, capsys):
    before = time.time()
    text = run_connlog(path, "tsv", tmp_path / "conn.log", capsys)
    after = time.time()
    lines = [json.loads(line) for line in
             run_connlog(path, "json", tmp_path / "conn.json", capsys).splitlines()]
    meta, records = read_zeek(text)
    assert text.startswith("#separator \\x09\n")
    assert (meta["set_separator"], meta["empty_field"], meta["unset_field"], meta["path"]) == \
        (",", "(empty)", "-", "conn")
    for key in ("open", "close"):
        assert ZEEK_TIME.fullmatch(meta[key])
        opened = time.mktime(time.strptime(meta[key], "%Y-%m-%d-%H-%M-%S"))
        assert int(before) - 1 <= opened <= after + 1
    assert meta["fields"] == list(lines[0])       # JSON keys, in the same order
    assert dict(zip(meta["fields"], meta["types"]))["ts"] == "time"
    assert len(records) == len(lines) > 0
    for record, line in zip(records, lines):
        for name, value in line.items():
            if isinstance(value, float):
                assert record[name] == pytest.approx(value, abs=5e-7), name
            else:
                assert record[name] == value, name


@pytest.mark.parametrize("value, kind, written", [
    ("", "string", "(empty)"),
    (None, "string", "-"),
    (None, "count", "-"),
    ("-", "string", "\\x2d"),
    ("(empty)", "string", "\\x28empty)"),
    ("a\tb", "string", "a\\x09b"),
    ("back\\slash", "string", "back\\x5cslash"),
    ("new\nline", "string", "new\\x0aline"),
    ("caf\u00e9", "string", "caf\u00e9"),
    ("\u2028", "string", "\\xe2\\x80\\xa8"),
    (1.5, "interval", "1.500000"),
    (1795384418.682865, "time", "1795384418.682865"),
    (443, "port", "443"),
    ("tcp", "enum", "tcp"),
    ("fd77::1", "addr", "fd77::1"),
])
def test_values_are_written_and_read_back_as_zeek_does(value, kind, written):
    line = zeeklog.record_line({"f": value}, ["f"], [kind])
    assert line == written + "\n"
    header = "".join(zeeklog.header_lines("x", ["f"], [kind], 0))
    _meta, (record,) = read_zeek(header + line + zeeklog.close_line(0))
    assert record["f"] == value


def test_unknown_types_and_formats_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Zeek type 'table' is not one of"):
        zeeklog.header_lines("conn", ["a"], ["table"], 0)
    with pytest.raises(ValueError, match="1 fields but 2 types"):
        zeeklog.header_lines("conn", ["a"], ["count", "count"], 0)


def test_bad_format_option_is_one_line(capsys):
    code = cli.main(["run", "connlog", "--pcap", str(DATA / "refused.pcap"), "--format", "xml"])
    err = capsys.readouterr().err
    assert code == 2 and "--format: invalid choice: 'xml'" in err
    assert len(err.strip().splitlines()) == 1
