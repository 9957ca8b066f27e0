#!/usr/bin/env python3
"""The longest functions of the operator's modules: `scripts/longest-functions.py [-n N] [--over L] [paths...]`.

Counts the lines of every `fn` with a body (from its `fn` line to its closing brace), test
modules and `*tests.rs` files left out, and lists the N longest per module (the directory under
crates/operator/src, or the file for leaves). `--over L` lists every function longer than L lines
instead and exits 1 when there is one (a check for CI). Braces inside strings, chars and comments
do not count.
"""
import argparse
import os
import re
import sys

FN = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")


def code_only(text):
    """`text` with strings, chars and comments blanked (newlines kept, so line numbers hold)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            end = '"' + hashes
            j = text.find(end, i + 2 + len(hashes))
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def test_ranges(code):
    """Line ranges of `#[cfg(test)] mod … { … }` blocks."""
    ranges = []
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub\s+)?mod\s+\w+\s*\{", code):
        start = m.end() - 1
        end = match_brace(code, start)
        ranges.append((code.count("\n", 0, m.start()) + 1, code.count("\n", 0, end) + 1))
    return ranges


def match_brace(code, open_at):
    depth = 0
    for j in range(open_at, len(code)):
        if code[j] == "{":
            depth += 1
        elif code[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(code) - 1


def functions(path):
    code = code_only(open(path, encoding="utf-8").read())
    tests = test_ranges(code)
    for m in FN.finditer(code):
        # The body opens at the first `{` after the signature, unless a `;` ends it first.
        j = m.end()
        depth = 0
        while j < len(code):
            ch = code[j]
            if ch in "(<[":
                depth += 1
            elif ch in ")>]":
                depth -= 1
            elif ch == ";" and depth <= 0:
                j = -1
                break
            elif ch == "{" and depth <= 0:
                break
            j += 1
        if j < 0 or j >= len(code):
            continue
        end = match_brace(code, j)
        first = code.count("\n", 0, m.start()) + 1
        last = code.count("\n", 0, end) + 1
        if any(a <= first <= b for a, b in tests):
            continue
        yield m.group(1), first, last - first + 1


def module_of(path, root):
    rel = os.path.relpath(path, root)
    parts = rel.split(os.sep)
    return parts[0] if len(parts) > 1 else rel


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3, help="functions listed per module")
    ap.add_argument("--over", type=int, help="list every function longer than this, exit 1 if any")
    ap.add_argument("paths", nargs="*", default=["crates/operator/src"])
    args = ap.parse_args()
    found = []
    for root in args.paths:
        for dirpath, _, files in os.walk(root):
            for f in sorted(files):
                if not f.endswith(".rs") or f.endswith("tests.rs"):
                    continue
                path = os.path.join(dirpath, f)
                for name, line, length in functions(path):
                    found.append((module_of(path, root), length, f"{os.path.relpath(path, root)}:{line}", name))
    if args.over is not None:
        long = sorted((x for x in found if x[1] > args.over), key=lambda x: -x[1])
        for module, length, where, name in long:
            print(f"{length:4}  {name:32} {where}")
        sys.exit(1 if long else 0)
    modules = sorted({x[0] for x in found})
    for module in modules:
        mine = sorted((x for x in found if x[0] == module), key=lambda x: -x[1])[: args.n]
        print(f"{module}: " + ", ".join(f"{name} {length}" for _, length, _, name in mine))


if __name__ == "__main__":
    main()
