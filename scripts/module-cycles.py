#!/usr/bin/env python3
"""Checks that the modules of a crate import each other without cycles.

Usage: scripts/module-cycles.py CRATE_SRC_DIR [--depth N] [--graph]

Every `.rs` file under the directory is a module (`a/b.rs` and `a/b/mod.rs` are `a::b`); its edges
are the `crate::x::y` paths it names outside `#[cfg(test)]` code (test modules may reach anywhere).
Modules are compared at `--depth` path segments (default 2: `can::codec`, `control::plan`, `io`),
and a module never depends on its own parent folder's `mod.rs` re-exports for the check (a folder's
`mod.rs` is its table of contents). Prints the graph with --graph; exits 1 and names every cycle
(strongly connected component with more than one module) when there is one.
"""
import re
import sys
from pathlib import Path

def module_of(src: Path, f: Path, depth: int) -> str:
    parts = list(f.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts in (["lib"], ["main"]) or (parts and parts[0] == "bin"):
        return ""
    return "::".join(parts[:depth])

def full_module(src: Path, f: Path) -> str:
    parts = list(f.relative_to(src).with_suffix("").parts)
    return "::".join(parts[:-1] if parts[-1] == "mod" else parts)

def strip_tests(text: str) -> str:
    # Drop everything from the first `#[cfg(test)]` that opens a module: test modules sit at the
    # end of their file in this code base.
    m = re.search(r"#\[cfg\(test\)\]\s*(#\[[^\]]*\]\s*)*mod\s+\w+", text)
    return text[: m.start()] if m else text

def strip_comments(text: str) -> str:
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())

def edges(src: Path, depth: int):
    graph = {}
    for f in sorted(src.rglob("*.rs")):
        me = module_of(src, f, depth)
        if not me:
            continue
        text = strip_comments(strip_tests(f.read_text()))
        deps = graph.setdefault(me, set())
        # `crate::a::b` and `super::b` paths, including inside `use crate::{a::b, c}` groups.
        parent = "::".join(full_module(src, f).split("::")[:-1])
        for m in re.finditer(r"\b(crate|super)::(\{[^}]*\}|[a-z_0-9]+(?:::[a-z_0-9]+)*)", text):
            base = "" if m.group(1) == "crate" else parent
            body = m.group(2)
            paths = re.findall(r"[a-z_0-9]+(?:::[a-z_0-9]+)*", body) if body.startswith("{") else [body]
            for p in paths:
                p = f"{base}::{p}" if base else p
                target = "::".join(p.split("::")[:depth])
                # Only real modules count (a path may end in a function or constant name).
                while target and target not in known:
                    target = "::".join(target.split("::")[:-1])
                if target and target != me and not me.startswith(target + "::"):
                    deps.add(target)
    return graph

def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out

if __name__ == "__main__":
    args = sys.argv[1:]
    depth = 2
    if "--depth" in args:
        i = args.index("--depth"); depth = int(args[i + 1]); del args[i : i + 2]
    show = "--graph" in args
    args = [a for a in args if a != "--graph"]
    src = Path(args[0] if args else "runtime/src")
    known = {module_of(src, f, d) for f in src.rglob("*.rs") for d in range(1, depth + 1)} - {""}
    graph = edges(src, depth)
    if show:
        for m in sorted(graph):
            print(f"{m:28} -> {', '.join(sorted(graph[m])) or '-'}")
    cycles = [c for c in sccs(graph) if len(c) > 1]
    if cycles:
        for c in cycles:
            print("import cycle: " + " <-> ".join(c), file=sys.stderr)
        sys.exit(1)
    print(f"{src}: {len(graph)} modules, no import cycle")
