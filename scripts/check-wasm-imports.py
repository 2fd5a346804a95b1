#!/usr/bin/env python3
"""Fails if a .wasm module imports anything (the core must need nothing from its host).

Reads the import section (id 2) of the module directly; no wasm tooling needed.
"""
import sys


def leb(b, i):
    r = s = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << s
        s += 7
        if x < 0x80:
            return r, i


def imports(path):
    b = open(path, "rb").read()
    if b[:4] != b"\0asm":
        sys.exit(f"{path}: not a wasm module")
    i, out = 8, []
    while i < len(b):
        sid = b[i]
        size, i = leb(b, i + 1)
        end = i + size
        if sid == 2:
            n, j = leb(b, i)
            for _ in range(n):
                ml, j = leb(b, j)
                mod = b[j:j + ml].decode()
                j += ml
                fl, j = leb(b, j)
                name = b[j:j + fl].decode()
                j += fl
                kind = b[j]
                j += 1
                if kind == 0:
                    _, j = leb(b, j)
                elif kind == 1:
                    j += 1
                    flags, j = leb(b, j + 0)
                    _, j = leb(b, j)
                    if flags & 1:
                        _, j = leb(b, j)
                elif kind == 2:
                    flags, j = leb(b, j)
                    _, j = leb(b, j)
                    if flags & 1:
                        _, j = leb(b, j)
                elif kind == 3:
                    j += 2
                else:
                    _, j = leb(b, j + 1)
                out.append(f"{mod}.{name}")
        i = end
    return out


if __name__ == "__main__":
    path = sys.argv[1]
    found = imports(path)
    size = len(open(path, "rb").read())
    if found:
        print(f"FAIL: {path} imports {found}")
        sys.exit(1)
    print(f"ok: {path} ({size} bytes) imports nothing")
