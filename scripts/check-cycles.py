#!/usr/bin/env python3
"""File-level import graph of a crate's src/: edges from `use crate::a::..`, `use super::..`
(and inline `crate::a::` paths, braces included), and from a parent module's code naming a
child's items; reports every cycle (strongly connected components of size > 1).

A parent's `mod child;` and `pub use child::item;` lines are its facade, not a dependency, so
they make no edge: a `mod.rs` that only declares and re-exports its children is fine, one whose
children use helpers it defines while it calls into them is a cycle.

Usage: scripts/check-cycles.py <crate>/src [...]; exit 1 when any crate has a cycle."""
import os, re, sys
sys.setrecursionlimit(10000)


def check(root):
    files = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            if f.endswith('.rs'):
                p = os.path.join(d, f)
                rel = os.path.relpath(p, root)[:-3]
                parts = rel.split(os.sep)
                if parts[-1] in ('mod', 'lib', 'main'):
                    parts = parts[:-1]
                files[tuple(parts)] = p
    def resolve(path):
        # longest module prefix of `path` that is a file
        for n in range(len(path), 0, -1):
            if tuple(path[:n]) in files:
                return tuple(path[:n])
        return None
    edges = {m: set() for m in files}
    for mod, p in files.items():
        src = open(p).read()
        src = re.sub(r'#\[cfg\(test\)\]\s*mod tests\s*\{.*', '', src, flags=re.S)  # test modules use super::*
        src = re.sub(r'//[^\n]*', '', src)
        is_modrs = p.endswith(('mod.rs', 'lib.rs', 'main.rs'))
        for m in re.finditer(r'\b(crate|super)((?:::\{?[A-Za-z_][A-Za-z0-9_]*)+)', src):
            segs = re.findall(r'[A-Za-z_][A-Za-z0-9_]*', m.group(2))
            if m.group(1) == 'crate':
                base = []
            else:
                base = list(mod[:-1]) if True else []
            t = resolve(base + segs)
            if t is None or t == mod:
                continue
            edges[mod].add(t)
        # a parent naming its child's items (`child::item`) in code depends on it too; its facade
        # (`mod child;`, `pub use child::..;`) does not
        src = re.sub(r'(?m)^\s*pub(\([a-z]+\))? use [^;]*;', '', src)
        for child in [c for c in files if len(c) == len(mod) + 1 and c[:len(mod)] == mod]:
            if re.search(r'(?<!::)\b%s::' % child[-1], src):
                edges[mod].add(child)
    # Tarjan SCC
    idx, low, st, on, out, n = {}, {}, [], set(), [], [0]
    def sc(v):
        idx[v] = low[v] = n[0]; n[0] += 1; st.append(v); on.add(v)
        for w in edges[v]:
            if w not in idx:
                sc(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            c = []
            while True:
                w = st.pop(); on.discard(w); c.append(w)
                if w == v: break
            out.append(c)
    for v in edges:
        if v not in idx: sc(v)
    name = lambda m: '/'.join(m) or 'lib'
    cyc = [c for c in out if len(c) > 1]
    print(f"{root}: {len(files)} files, {sum(len(e) for e in edges.values())} edges")
    for c in cyc:
        print("CYCLE:", ', '.join(sorted(name(m) for m in c)))
        for m in c:
            for t in sorted(edges[m]):
                if t in c: print(f"   {name(m)} -> {name(t)}")
    if not cyc: print("no cycles")
    return bool(cyc)


bad = [check(r) for r in sys.argv[1:]]
sys.exit(1 if any(bad) else 0)
