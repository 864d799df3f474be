#!/usr/bin/env python3
"""How cantools reads a DBC file, for runtime/tests/dbc_cantools.rs (the DBC field cases).

usage: dbc_layout.py FILE.dbc CASES.txt OUT.txt

Loads FILE.dbc as `cantools.database.load_file(path, strict=True)` does by default (cp1252 for
a .dbc file), then writes to OUT.txt one line per message and signal:
  M <name> <frame id> <extended 0/1> <length>
  S <name> <start> <length> <byte order> <signed 0/1> <scale> <offset> <min> <max> <unit>
    <multiplexer signal or -> <multiplexer ids, comma-separated, or ->
(the unit as a Python repr, to keep spaces and non-ASCII text), then one line per case of
CASES.txt (`D <message> <HEX>`): `OK <signal>=<value> ...`, the signals the payload holds
(decode_choices=False), multiplexed signals the multiplexers do not select left out.
"""

import sys

import cantools


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    dbc_path, cases_path, out_path = sys.argv[1:]
    db = cantools.database.load_file(dbc_path, strict=True)
    out = []
    for m in db.messages:
        out.append(f"M {m.name} {m.frame_id} {int(m.is_extended_frame)} {m.length}")
        for s in m.signals:
            ids = ",".join(str(i) for i in s.multiplexer_ids) if s.multiplexer_ids else "-"
            out.append(
                f"S {s.name} {s.start} {s.length} {s.byte_order} {int(s.is_signed)} "
                f"{s.scale!r} {s.offset!r} {s.minimum!r} {s.maximum!r} {s.unit or ''!r} "
                f"{s.multiplexer_signal or '-'} {ids}"
            )
    with open(cases_path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            message = db.get_message_by_name(fields[1])
            decoded = message.decode(bytes.fromhex(fields[2]), decode_choices=False)
            out.append("OK " + " ".join(f"{k}={v!r}" for k, v in decoded.items()))
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
