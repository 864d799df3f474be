#!/usr/bin/env python3
"""Encodes and decodes CAN payloads with cantools: the reference for reflex's DBC codec
(runtime/src/can/dbc.rs, checked by runtime/tests/it/dbc_cantools.rs).

usage: dbc_cantools.py FILE.dbc CASES.txt OUT.txt

CASES.txt has one case a line:
  E <message> <signal>=<value> ...   encode these physical values with
                                     `encode_message(..., strict=True)`, then decode the bytes
  D <message> <HEX>                  decode a payload

OUT.txt gets one line per case:
  OK <HEX> <signal>=<value> ...      (E) the payload and cantools' decoding of it
  OK <signal>=<value> ...            (D) the decoded values
  ERR <reason>                       cantools refused the values (out of range, too many bits)

Values are written with repr(): floats round-trip exactly, integers are exact.
"""

import sys

import cantools

PINNED = "45.1.0"


def values(decoded):
    return " ".join(f"{name}={value!r}" for name, value in decoded.items())


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    dbc_path, cases_path, out_path = sys.argv[1:]
    if cantools.__version__ != PINNED:
        print(
            f"dbc_cantools.py: cantools {cantools.__version__}, the tests were written against "
            f"{PINNED} (scripts/setup.sh)",
            file=sys.stderr,
        )
    db = cantools.database.load_file(dbc_path)
    out = []
    with open(cases_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            kind, name, rest = fields[0], fields[1], fields[2:]
            message = db.get_message_by_name(name)
            if kind == "E":
                signals = {}
                for item in rest:
                    signal, value = item.split("=", 1)
                    signals[signal] = float(value)
                try:
                    data = db.encode_message(name, signals, strict=True)
                except Exception as e:  # EncodeError, or bitstruct's OverflowError
                    reason = " ".join(f"{type(e).__name__}: {e}".split())
                    out.append(f"ERR {reason}")
                    continue
                decoded = message.decode(data, decode_choices=False)
                out.append(f"OK {data.hex().upper()} {values(decoded)}")
            elif kind == "D":
                decoded = message.decode(bytes.fromhex(rest[0]), decode_choices=False)
                out.append(f"OK {values(decoded)}")
            else:
                sys.exit(f"{cases_path} line {n}: unknown case kind {kind!r}")
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
