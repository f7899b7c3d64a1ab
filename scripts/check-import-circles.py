#!/usr/bin/env python3
"""Fails when two source files of one crate import each other (directly or round a longer loop).

An edge runs from a module file to the file of every module it names through `crate::` or
`super::` (tests excluded). Each strongly connected set of more than one file is printed."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else '.'
crates = []
for d, dirs, files in os.walk(root):
    if 'target' in d.split(os.sep) or '/.git' in d: continue
    if 'Cargo.toml' in files and os.path.isdir(os.path.join(d, 'src')):
        crates.append(os.path.join(d, 'src'))
def modpath(src, f):
    rel = os.path.relpath(f, src)[:-3].split(os.sep)
    if rel[-1] in ('mod', 'lib', 'main'): rel = rel[:-1]
    return rel
found = False
for src in crates:
    files = {}
    for d, dirs, fs in os.walk(src):
        if '/bin' in d: continue
        for f in fs:
            if f.endswith('.rs'):
                p = os.path.join(d, f); files[tuple(modpath(src, p))] = p
    edges = {k: set() for k in files}
    for k, p in files.items():
        text = re.sub(r'//.*', '', open(p).read())
        # strip test modules
        text = re.split(r'#\[cfg\(test\)\]\s*mod tests', text)[0]
        for m in re.finditer(r'\bcrate((?:::[a-z_][a-z0-9_]*)+)', text):
            parts = m.group(1).strip(':').split('::')
            for n in range(len(parts), 0, -1):
                t = tuple(parts[:n])
                if t in files and t != k: edges[k].add(t); break
        for m in re.finditer(r'\bsuper((?:::[a-z_][a-z0-9_]*)+)', text):
            parts = m.group(1).strip(':').split('::')
            base = list(k[:-1]) if not files[k].endswith(('mod.rs','lib.rs')) else list(k[:-1])
            for n in range(len(parts), -1, -1):
                t = tuple(base + parts[:n])
                if t in files and t != k: edges[k].add(t); break
    # Tarjan
    idx = {}; low = {}; st = []; on = set(); res = []; c = [0]
    sys.setrecursionlimit(10000)
    def sc(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in edges[v]:
            if w not in idx: sc(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: res.append(comp)
    for v in edges:
        if v not in idx: sc(v)
    for comp in res:
        found = True
        print(src, ' <-> '.join(os.path.relpath(files[x], src) for x in comp))
sys.exit(1 if found else 0)
