"""Zeek's TSV log format (its ASCII writer's default), as text: the header, one line per
record, the closing line. Zeek's tools (zeek-cut) and the pipelines that ingest Zeek logs
(Security Onion, Malcolm, Filebeat's Zeek module ...) read it.

The header::

    #separator \\x09
    #set_separator	,
    #empty_field	(empty)
    #unset_field	-
    #path	conn
    #open	2026-12-05-01-02-03
    #fields	ts	uid	id.orig_h ...
    #types	time	string	addr ...

then one line per record, its values in the order of ``#fields`` joined by tabs, and at
the end ``#close`` with the time the log was closed (``#open`` and ``#close`` are local
wall-clock times, as Zeek writes them). Values: ``time`` and ``interval`` with six
decimals (seconds), a missing value as ``-``, an empty string as ``(empty)``; in a string
a tab, a backslash or a non-printable character is written ``\\xNN`` (so a line is always
one record of single-tab-separated fields), and a string that is exactly ``-`` or
``(empty)`` has its first character written so, as Zeek does, so that it does not read as
unset or empty. The types are those conn.log's fields have (no sets or vectors).
"""
from __future__ import annotations

import time

__all__ = ["SEPARATOR", "SET_SEPARATOR", "EMPTY_FIELD", "UNSET_FIELD", "TYPES",
           "header_lines", "record_line", "close_line", "zeek_time"]

SEPARATOR = "\t"
SET_SEPARATOR = ","
EMPTY_FIELD = "(empty)"
UNSET_FIELD = "-"
#: the Zeek types a field may have here
TYPES = frozenset(("time", "interval", "string", "enum", "addr", "port", "count"))


def zeek_time(seconds: float) -> str:
    """``#open``/``#close``: local time, Zeek's ``%Y-%m-%d-%H-%M-%S``."""
    return time.strftime("%Y-%m-%d-%H-%M-%S", time.localtime(seconds))


def check_types(types) -> None:
    """ValueError naming a type that is not one of TYPES."""
    for name in types:
        if name not in TYPES:
            raise ValueError(f"Zeek type {name!r} is not one of {', '.join(sorted(TYPES))}")


def header_lines(path: str, fields, types, open_seconds: float) -> list[str]:
    """The header of a log named ``path`` (conn, ...) opened at ``open_seconds`` (wall
    clock), each line ending with a newline."""
    check_types(types)
    if len(fields) != len(types):
        raise ValueError(f"{len(fields)} fields but {len(types)} types")
    return [
        "#separator \\x09\n",
        f"#set_separator{SEPARATOR}{_escape(SET_SEPARATOR)}\n",
        f"#empty_field{SEPARATOR}{_escape(EMPTY_FIELD)}\n",
        f"#unset_field{SEPARATOR}{_escape(UNSET_FIELD)}\n",
        f"#path{SEPARATOR}{_escape(path)}\n",
        f"#open{SEPARATOR}{zeek_time(open_seconds)}\n",
        "#fields" + SEPARATOR + SEPARATOR.join(fields) + "\n",
        "#types" + SEPARATOR + SEPARATOR.join(types) + "\n",
    ]


def close_line(close_seconds: float) -> str:
    return f"#close{SEPARATOR}{zeek_time(close_seconds)}\n"


def _escape(text: str) -> str:
    """``text`` with a backslash, a tab or another non-printable character written as
    ``\\xNN``, byte by byte of its UTF-8 (printable UTF-8 is kept, as Zeek keeps it)."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for c in text:
        if c == "\\" or not c.isprintable():
            out.extend(f"\\x{b:02x}" for b in c.encode("utf-8", "surrogatepass"))
        else:
            out.append(c)
    return "".join(out)


def _value(value, kind: str) -> str:
    if value is None:
        return UNSET_FIELD
    if kind in ("time", "interval"):
        return f"{value:.6f}"
    if kind in ("count", "port"):
        return str(int(value))
    text = str(value)
    if not text:
        return EMPTY_FIELD
    text = _escape(text)
    if text in (UNSET_FIELD, EMPTY_FIELD):
        text = f"\\x{ord(text[0]):02x}" + text[1:]
    return text


def record_line(record: dict, fields, types) -> str:
    """One record as a log line (a field absent from ``record`` is unset: ``-``)."""
    return SEPARATOR.join(_value(record.get(name), kind)
                          for name, kind in zip(fields, types)) + "\n"
