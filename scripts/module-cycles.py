#!/usr/bin/env python3
"""Fails when a crate's modules depend on each other in a cycle.

A module is a source file (`a/b.rs` or `a/b/mod.rs` is `a::b`). Module `m` depends on `n` when
its code names `crate::n::…` (or `super::…` reaching `n`), outside `#[cfg(test)] mod tests`.
A module and the modules nested in it (`a` and `a::b`) are one unit and may name each other.
Prints each cycle found, names the edges, and exits 1; prints nothing and exits 0 when there
are none. Usage: scripts/module-cycles.py CRATE_SRC_DIR...
"""
import os
import re
import sys


def module_name(rel):
    parts = rel[:-3].split("/")
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts in (["lib"], ["main"]):
        return ""
    return "::".join(parts)


def dependencies(root):
    files = {}
    for directory, _, names in os.walk(root):
        if os.path.relpath(directory, root).split("/")[0] == "bin":
            continue  # binaries are crates of their own
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(directory, name)
                files[module_name(os.path.relpath(path, root))] = path
    graph = {}
    for module, path in files.items():
        src = open(path, encoding="utf-8").read()
        src = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", src, flags=re.S)
        src = re.sub(r"//[^\n]*", "", src)
        refs = re.findall(r"crate::((?:[a-z_0-9]+::)*[A-Za-z_0-9]+)", src)
        for prefix, body in re.findall(r"use crate::((?:[a-z_0-9]+::)*)\{([^}]*)\}", src, flags=re.S):
            refs += [prefix + item.strip() for item in body.split(",") if item.strip()]
        parent = module.split("::")[:-1]
        refs += ["::".join(parent + [r]) for r in re.findall(r"super::((?:[a-z_0-9]+::)*[A-Za-z_0-9]+)", src)]
        deps = set()
        for ref in refs:
            parts = ref.split("::")
            target = next(
                ("::".join(parts[:k]) for k in range(len(parts), 0, -1) if "::".join(parts[:k]) in files), None
            )
            nested = target is not None and (
                target == module or module.startswith(target + "::") or target.startswith(module + "::")
            )
            if target is not None and not nested:
                deps.add(target)
        graph[module] = deps
    return graph


def cycles(graph):
    sys.setrecursionlimit(100_000)
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def main(roots):
    failed = False
    for root in roots:
        graph = dependencies(root)
        for component in cycles(graph):
            failed = True
            print(f"{root}: modules in a cycle: {', '.join(component)}")
            for m in component:
                inside = sorted(d for d in graph[m] if d in component)
                print(f"  {m} -> {', '.join(inside)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
