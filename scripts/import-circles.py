#!/usr/bin/env python3
"""Import circles between the files of a crate's `src/`, in non-test code.

    python3 scripts/import-circles.py oai-resilience/src

An edge A -> B means that file A names an item defined in file B: a `use` line or an inline
`crate::…`/`super::…` path, resolved through `pub use` re-exports to the file that defines the
item. A module's own `pub use` lines (its facade) are not edges, and `#[cfg(test)]` modules
are left out. Prints each circle with its edges, then the count; exits 1 if there is one.
It reads the code as text (a heuristic, not the compiler's resolution)."""
import os, re, sys
root = sys.argv[1]
files = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'):
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)[:-3].split(os.sep)
            if rel[-1] in ('mod', 'lib'):
                rel = rel[:-1]
            files[tuple(rel)] = p
def strip_tests(src):
    src = re.sub(r'//[^\n]*', '', src)
    m = re.search(r'#\[cfg\(test\)\]\s*mod \w+\s*\{', src)
    if m: src = src[:m.start()]
    # drop other cfg(test) items (one line or mod decl)
    src = re.sub(r'#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s*)?mod \w+;', '', src)
    return src
text = {m: strip_tests(open(p).read()) for m, p in files.items()}
defs = {m: set(re.findall(r'\b(?:struct|enum|fn|trait|const|static|type|union|macro_rules!)\s+(\w+)', t)) for m, t in text.items()}
# re-exports: name -> path inside module
reexp = {m: {} for m in text}
def expand(body):
    body = re.sub(r'\s+', '', body)
    def go(prefix, s):
        out = []
        if '{' in s:
            i = s.index('{')
            head = s[:i]; inner = s[i+1:-1]
            depth = 0; cur = ''; parts = []
            for ch in inner:
                if ch == '{': depth += 1
                if ch == '}': depth -= 1
                if ch == ',' and depth == 0: parts.append(cur); cur = ''
                else: cur += ch
            if cur: parts.append(cur)
            for part in parts: out += go(prefix + head, part)
        else:
            out.append(prefix + s)
        return out
    return go('', body)
for m, t in text.items():
    for body in re.findall(r'pub(?:\([^)]*\))?\s+use\s+([^;]+);', t):
        for full in expand(body):
            full = full.split(' as ')[0]
            name = full.split('::')[-1]
            reexp[m][name] = full
def resolve(m, path, depth=0):
    segs = path.split('::')
    if segs[0] == 'crate': cur = (); segs = segs[1:]
    elif segs[0] == 'super':
        cur = m
        while segs and segs[0] == 'super': cur = cur[:-1]; segs = segs[1:]
    elif segs[0] == 'self': cur = m; segs = segs[1:]
    else:
        # relative to current module: child module?
        if (m + (segs[0],)) in files: cur = m
        else: return None
    while segs and (cur + (segs[0],)) in files:
        cur = cur + (segs[0],); segs = segs[1:]
    if not segs or segs[0] in ('*', 'self'): return cur
    name = segs[0]
    if name in defs.get(cur, ()) or depth > 5: return cur
    if name in reexp.get(cur, {}):
        r = resolve(cur, reexp[cur][name], depth + 1)
        return r if r is not None else cur
    return cur
edges = {m: set() for m in files}
for m, t in text.items():
    paths = []
    t2 = re.sub(r'pub(?:\([^)]*\))?\s+use\s+[^;]+;', '', t)  # re-exports are the module's facade
    for body in re.findall(r'\buse\s+([^;]+);', t2):
        paths += [p.split(' as ')[0] for p in expand(body)]
    t = t2
    paths += re.findall(r'\b((?:crate|super)(?:::\w+)+)', t)
    for p in paths:
        r = resolve(m, p)
        if r is not None and r != m and r in files:
            # a parent declaring/re-exporting its child is the only parent->child edge allowed
            edges[m].add(r)
# Tarjan
index = {}; low = {}; st = []; on = set(); sccs = []; c = [0]
sys.setrecursionlimit(10000)
def sc(v):
    index[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in edges[v]:
        if w not in index: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(comp)
for v in files:
    if v not in index: sc(v)
name = lambda m: files[m].replace(root + '/', '')
for comp in sccs:
    print('CIRCLE:', ', '.join(sorted(name(x) for x in comp)))
    for a in comp:
        for b in edges[a]:
            if b in comp: print('   ', name(a), '->', name(b))
print(len(sccs), 'circles among', len(files), 'files')
sys.exit(1 if sccs else 0)
