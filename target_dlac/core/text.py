"""Text from files, made safe to print: a name cannot forge or colour a terminal line."""

from __future__ import annotations


def printable(text) -> str:
    r"""``text`` safe to print on a terminal as (part of) one line: every character that
    ``str.isprintable`` rejects (control characters, newlines, ESC, DEL, C1 controls,
    lone surrogates, bidi overrides and other format characters, line separators) is
    shown as a Python escape, ``\xNN`` / ``\uNNNN`` / ``\UNNNNNNNN`` (as ``repr`` does);
    spaces and printable non-ASCII text stay as they are.  Backslashes are not doubled.

    Every name dlac prints that comes from a file (tensor, layer and op names of a
    binary or a model, npz member names, error messages quoting them) goes through it."""
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        else:
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out)
