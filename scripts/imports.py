#!/usr/bin/env python3
"""The crate's file-level module import graph over src/, and its cycles.

    python3 scripts/imports.py [--edges] [--dirs]

A node is a source file, named by its path under src/ without `.rs` (`lib`, `ring/mod`,
`buf/pool`). There is an edge A -> B when file A names an item defined in file B:

* a path in code that starts with `crate::`, `$crate::`, `super::`, `self::`, a child
  module or an imported name (`crate::ring::Ring`, `super::Entry`, `op::next_gen(..)`);
* a private `use` of such a path (any `use` inside a function counts too);
* a `use ..::*` glob: an edge to the file of the module it empties.

A path is resolved to the file that defines its item, through every `use` on the way: a
name a module imports (or re-exports) resolves to where it is defined, so naming
`crate::Error` is an edge to error.rs, not to lib.rs. Naming a module itself (`use
crate::ring;`) is no edge; the paths written through it are.

Not edges: `mod x;` declarations (they contain, they do not use) and `pub use` /
`pub(crate) use` re-exports whose name the file does not use in its own code. So lib.rs
and a mod.rs of only declarations and re-exports depend on nothing, and a re-export in a
mod.rs with code (ring/mod.rs) is an edge only when that code uses the name. Comments,
doc links, strings and `#[cfg]` are ignored: test-only code counts like the rest. A
method call names no path, so it is no edge (an `impl Ring` block in ring/x.rs is an edge
x -> ring/mod, through the name `Ring`; ring/mod calling its methods is none).

Prints the edges (all of them with --edges; by default the ones inside cycles, each with
the first line that makes it) and every strongly connected component of more than one
file. Exits 1 when a cycle other than `buf/pool <-> buf/pooled` exists. --dirs also lists,
for information only, the cycles between top-level modules (a folder counts as one node).
"""

import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
ALLOWED = [{"buf/pool", "buf/pooled"}]
DEFS = {"fn", "struct", "enum", "trait", "type", "const", "static", "union"}


def lex(text):
    """Tokens (kind, value, line): kind is 'id' or 'p' (punctuation, `::` is one)."""
    out, i, n, line = [], 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    line += text[i] == "\n"
                    i += 1
        elif re.match(r'b?r#*"', text[i : i + 8]):
            m = re.match(r'b?r(#*)"', text[i:])
            end = text.index('"' + m.group(1), i + len(m.group(0)))
            line += text.count("\n", i, end)
            i = end + 1 + len(m.group(1))
        elif c == '"' or text.startswith('b"', i):
            i += 1 if c == '"' else 2
            while text[i] != '"':
                line += text[i] == "\n"
                i += 2 if text[i] == "\\" else 1
            i += 1
        elif c == "'" or text.startswith("b'", i):
            j = i + (1 if c == "'" else 2)
            if text[j] == "\\":
                i = text.index("'", j + 2) + 1
            elif j + 1 < n and text[j + 1] == "'":
                i = j + 2
            else:  # a lifetime
                i = j
        elif c.isalpha() or c == "_" or (c == "$" and text.startswith("$crate", i)):
            m = re.match(r"\$?(?:r#)?[A-Za-z_][A-Za-z0-9_]*", text[i:])
            word = m.group(0).lstrip("$")
            out.append(("id", word[2:] if word.startswith("r#") else word, line))
            i += len(m.group(0))
        elif c.isdigit():
            m = re.match(r"[0-9][0-9A-Za-z_]*", text[i:])
            i += len(m.group(0))
        elif text.startswith("::", i):
            out.append(("p", "::", line))
            i += 2
        else:
            out.append(("p", c, line))
            i += 1
    return out


class Module:
    def __init__(self, name, file, parent, dirpath):
        self.name, self.file, self.parent = name, file, parent
        self.dir = dirpath  # where `mod x;` inside it looks for x.rs / x/mod.rs
        self.children = {}
        self.imports = {}  # local name -> (path, line, public)
        self.globs = []  # (path, line, public)
        self.defs = set()
        self.paths = []  # (path, line) written in code


def parse_use(toks, i):
    """Parse a use tree at toks[i]; returns ([(segments, alias|'*', line)], next index)."""
    out = []

    def tree(i, prefix):
        segs = list(prefix)
        if toks[i][1] == "::":
            i += 1
        while True:
            kind, v, line = toks[i]
            if v == "{":
                i += 1
                while toks[i][1] != "}":
                    i = tree(i, segs)
                    if toks[i][1] == ",":
                        i += 1
                return i + 1
            if v == "*":
                out.append((segs, "*", line))
                return i + 1
            segs.append(v)
            i += 1
            if toks[i][1] == "::":
                i += 1
                continue
            alias = v
            if toks[i][1] == "as":
                alias = toks[i + 1][1]
                i += 2
            if v == "self":
                segs.pop()
                alias = alias if alias != "self" else segs[-1]
            out.append((segs, alias, line))
            return i

    i = tree(i, [])
    return out, i


def load(path, name, parent, dirpath, modules):
    m = Module(name, path, parent, dirpath)
    modules.append(m)
    rel = os.path.relpath(path, SRC)[:-3]
    m.file = rel
    with open(path, encoding="utf-8") as f:
        toks = lex(f.read())
    scope = [(m, -1)]  # (module, brace depth of its body)
    depth, i, idents = 0, 0, set()
    while i < len(toks):
        kind, v, line = toks[i]
        cur = scope[-1][0]
        prev = toks[i - 1][1] if i else ""
        if v == "{":
            depth += 1
        elif v == "}":
            depth -= 1
            if scope[-1][1] == depth:
                scope.pop()
        elif v == "mod" and kind == "id" and prev != "::" and toks[i + 1][0] == "id":
            child = toks[i + 1][1]
            if toks[i + 2][1] == ";":
                base = os.path.join(cur.dir, child)
                f = base + ".rs" if os.path.exists(base + ".rs") else os.path.join(base, "mod.rs")
                cur.children[child] = load(f, child, cur, base, modules)
                i += 3
                continue
            if toks[i + 2][1] == "{":
                sub = Module(child, rel, cur, os.path.join(cur.dir, child))
                sub.defs = set()
                cur.children[child] = sub
                scope.append((sub, depth))
                depth += 1
                i += 3
                continue
        elif v == "use" and kind == "id" and prev != "::":
            j = i - 1
            if toks[j][1] == ")":
                while toks[j][1] != "(":
                    j -= 1
                j -= 1
            public = j >= 0 and toks[j][1] == "pub"
            items, i = parse_use(toks, i + 1)
            inner = depth > scope[-1][1] + 1
            for segs, alias, ln in items:
                if alias == "*":
                    cur.globs.append((segs, ln, public and not inner))
                elif inner:  # a `use` inside a function: an edge, not a module name
                    cur.paths.append((segs, ln))
                else:
                    cur.imports[alias] = (segs, ln, public)
            continue
        elif kind == "id" and v in DEFS and toks[i + 1][0] == "id" and depth == scope[-1][1] + 1:
            cur.defs.add(toks[i + 1][1])
        elif v == "macro_rules" and toks[i + 2][0] == "id":
            cur.defs.add(toks[i + 2][1])
        if kind == "id":
            idents.add(v)
            if prev != "::" and i + 2 < len(toks) and toks[i + 1][1] == "::" and toks[i + 2][0] == "id":
                segs, j = [v], i + 1
                while j + 1 < len(toks) and toks[j][1] == "::" and toks[j + 1][0] == "id":
                    segs.append(toks[j + 1][1])
                    j += 2
                cur.paths.append((segs, line))
                idents.update(segs)
                i = j
                continue
        i += 1
    m.idents = idents
    return m


class Graph:
    def __init__(self):
        self.modules = []
        self.root = load(os.path.join(SRC, "lib.rs"), "crate", None, SRC, self.modules)
        self.files = sorted({m.file for m in self.modules})
        self.idents = {m.file: m.idents for m in self.modules if hasattr(m, "idents")}

    def absolute(self, mod, segs, depth=0):
        """(module, rest) a path written in `mod` starts from, or None (another crate)."""
        if not segs or depth > 20:
            return None
        head = segs[0]
        if head == "crate":
            return self.root, segs[1:]
        if head in ("self", "super"):
            k = 0
            while k < len(segs) and segs[k] in ("self", "super"):
                if segs[k] == "super":
                    mod = mod.parent
                    if mod is None:
                        return None
                k += 1
            return mod, segs[k:]
        if head in mod.children:
            return mod, segs
        if head in mod.imports:
            t = self.absolute(mod, mod.imports[head][0], depth + 1)
            return t and (t[0], t[1] + segs[1:])
        return None

    def resolve(self, mod, segs, depth=0):
        """The file defining the item `segs` names from module `mod` (absolute), or None."""
        if depth > 30:
            return None
        for k, seg in enumerate(segs):
            if seg in mod.children:
                mod = mod.children[seg]
                continue
            if seg in mod.imports and seg not in mod.defs:
                t = self.absolute(mod, mod.imports[seg][0])
                return t and self.resolve(t[0], t[1] + segs[k + 1 :], depth + 1)
            if seg not in mod.defs:
                for g, _, _ in mod.globs:
                    t = self.absolute(mod, g + [seg])
                    if t:
                        f = self.resolve(t[0], t[1] + segs[k + 1 :], depth + 1)
                        if f:
                            return f
            return mod.file if seg in mod.defs or not mod.globs else None
        return None  # a module itself

    def edges(self):
        """{(a, b): (line, text)} for a != b: the first line of a that names b."""
        e = {}

        def add(m, segs, line, glob=False):
            t = self.absolute(m, segs)
            if not t:
                return
            if glob:
                mod = t[0]
                for s in t[1]:
                    mod = mod.children.get(s)
                    if mod is None:
                        return
                f = mod.file
            else:
                f = self.resolve(*t)
            first = e.get((m.file, f))
            if f and f != m.file and (first is None or first[0] > line):
                e[(m.file, f)] = (line, "::".join(segs) + ("::*" if glob else ""))

        for m in self.modules:
            for segs, line in m.paths:
                add(m, segs, line)
            for alias, (segs, line, public) in m.imports.items():
                if public and alias not in self.idents.get(m.file, ()):
                    continue
                add(m, segs, line)
            for segs, line, public in m.globs:
                if not public:
                    add(m, segs, line, glob=True)
        return e


def sccs(nodes, adj):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(adj.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def main():
    g = Graph()
    edges = g.edges()
    adj = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
    cycles = [c for c in sccs(g.files, adj) if len(c) > 1]
    if "--edges" in sys.argv:
        print("import graph (file -> files it names items of):")
        for f in g.files:
            print(f"  {f} -> {', '.join(sorted(adj.get(f, ()))) or '-'}")
    bad = 0
    print(f"{len(g.files)} files, {len(edges)} edges, {len(cycles)} cycle(s)")
    for c in sorted(cycles):
        allowed = set(c) in ALLOWED
        bad += not allowed
        print(("cycle (allowed): " if allowed else "cycle: ") + " <-> ".join(c))
        for (a, b), (line, text) in sorted(edges.items()):
            if a in c and b in c:
                print(f"    {a} -> {b}  (src/{a}.rs:{line}: {text})")
    if "--dirs" in sys.argv:
        top = {}
        for a, b in edges:
            a, b = a.split("/")[0], b.split("/")[0]
            if a != b:
                top.setdefault(a, set()).add(b)
        nodes = sorted({f.split("/")[0] for f in g.files})
        for c in sccs(nodes, top):
            if len(c) > 1:
                print("module cycle (not checked): " + " <-> ".join(c))
                for (a, b), (line, text) in sorted(edges.items()):
                    ta, tb = a.split("/")[0], b.split("/")[0]
                    if ta != tb and ta in c and tb in c:
                        print(f"    {a} -> {b}  (src/{a}.rs:{line}: {text})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
