//! The layout's rules, checked over the source tree: no import circle
//! between the top-level modules of `src/`, and the development tools
//! (`devtools`) used by nothing in the gateway but the command line.
//!
//! A module's dependencies are the `crate::x` paths its files name (in `use`
//! lines and in code, `crate::{a, b}` groups included), comments and string
//! literals aside. The files of a module are the ones its `mod` declarations
//! reach from `src/lib.rs`, so the binaries' own files are not part of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One top-level module and, for each module it names, where it first does.
struct Module {
    files: Vec<PathBuf>,
    uses: BTreeMap<String, String>,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The module graph of the library in `root` (a `src` directory).
fn graph(root: &Path) -> BTreeMap<String, Module> {
    let lib = read(&root.join("lib.rs"));
    let names = mod_declarations(&strip(&lib));
    assert!(
        !names.is_empty(),
        "no `mod` declarations in {}",
        root.join("lib.rs").display()
    );
    let mut modules = BTreeMap::new();
    for name in &names {
        let mut files = Vec::new();
        collect(root, name, &mut files);
        let mut uses = BTreeMap::new();
        for file in &files {
            let code = strip(&read(file));
            for (line, target) in crate_paths(&code) {
                if target != *name && names.contains(&target) {
                    let rel = file
                        .strip_prefix(root.parent().unwrap_or(root))
                        .unwrap_or(file);
                    uses.entry(target)
                        .or_insert_with(|| format!("{}:{line}", rel.display()));
                }
            }
        }
        modules.insert(name.clone(), Module { files, uses });
    }
    modules
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The file of module `name` under `dir`, and every file its `mod`s reach.
fn collect(dir: &Path, name: &str, files: &mut Vec<PathBuf>) {
    let flat = dir.join(format!("{name}.rs"));
    let nested = dir.join(name).join("mod.rs");
    let file = if flat.is_file() { flat } else { nested };
    let children = mod_declarations(&strip(&read(&file)));
    files.push(file);
    for child in children {
        collect(&dir.join(name), &child, files);
    }
}

/// Names of `mod x;` declarations (out-of-line modules only), any visibility.
fn mod_declarations(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for statement in code.split([';', '{', '}']) {
        let words: Vec<&str> = statement.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "mod") {
            // `mod x;` ends at the `;`; an inline `mod x { … }` is part of its file.
            let declared = code_after(code, statement).starts_with(';');
            if declared && i + 2 == words.len() {
                names.push(words[i + 1].to_owned());
            }
        }
    }
    names
}

/// What follows `part`, a slice of `code`.
fn code_after<'a>(code: &'a str, part: &str) -> &'a str {
    let start = part.as_ptr() as usize - code.as_ptr() as usize;
    &code[start + part.len()..]
}

/// `(line, module)` for every `crate::module` path and every module of a
/// `crate::{a, b::c}` group.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = &code[..code.len() - rest.len() + at];
        let boundary = before
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        rest = &rest[at + "crate::".len()..];
        if !boundary {
            continue;
        }
        let line = before.matches('\n').count() + 1;
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item = String::new();
            let mut first = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        first = true;
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if first {
                    if c.is_alphanumeric() || c == '_' {
                        item.push(c);
                    } else if !item.is_empty() {
                        found.push((line, item.clone()));
                        first = false;
                    }
                }
            }
            if first && !item.is_empty() {
                found.push((line, item));
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push((line, name));
        }
    }
    found
}

/// The code with comments and string literals blanked out (newlines kept,
/// so line numbers stay right).
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('#' | '"')) && !ident_before(&chars, i) {
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            i += 2 + hashes;
            while i < chars.len() {
                if chars[i] == '"'
                    && chars[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|c| **c == '#')
                        .count()
                        == hashes
                {
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&c) = chars.get(i) {
                    out.push(blank(c));
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' && next.is_some() && chars.get(i + 2) == Some(&'\'') {
            // A one-character literal such as '"' or '{'.
            i += 3;
        } else if c == '\'' && next == Some('\\') {
            // An escaped character literal: '\'', '\n', '\u{7f}'.
            i += 3;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// The import cycles of the graph as `a → b (where a names b) → … → a`: for
/// each group of modules that reach each other, a shortest cycle through
/// each member, each cycle once.
fn cycles(modules: &BTreeMap<String, Module>) -> Vec<String> {
    let names: Vec<&String> = modules.keys().collect();
    let index_of = |n: &str| names.iter().position(|m| m.as_str() == n);
    let edges: Vec<Vec<usize>> = names
        .iter()
        .map(|n| {
            modules[*n]
                .uses
                .keys()
                .filter_map(|t| index_of(t))
                .collect()
        })
        .collect();
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for component in strongly_connected(&edges)
        .into_iter()
        .filter(|c| c.len() > 1)
    {
        let mut members = component.clone();
        members.sort_unstable();
        for &start in &members {
            let mut path = path_back(&edges, &component, start);
            path.pop();
            // One cycle, whichever member it is found from.
            let lowest = (0..path.len()).min_by_key(|&i| path[i]).unwrap_or(0);
            path.rotate_left(lowest);
            if !seen.insert(path.clone()) {
                continue;
            }
            path.push(path[0]);
            let mut text = names[path[0]].clone();
            for pair in path.windows(2) {
                let (from, to) = (names[pair[0]], names[pair[1]]);
                text.push_str(&format!(" → {to} ({})", modules[from].uses[to]));
            }
            found.push(text);
        }
    }
    found
}

fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        edges: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.edges[v] {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(i) if s.on_stack[w] => s.low[v] = s.low[v].min(i),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let n = edges.len();
    let mut s = State {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out
}

/// A shortest path from `start` back to `start` inside `component` (breadth first).
fn path_back(edges: &[Vec<usize>], component: &[usize], start: usize) -> Vec<usize> {
    let mut came_from: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in edges[v].iter().filter(|w| component.contains(w)) {
            if w == start {
                let mut path = vec![start, v];
                let mut at = v;
                while at != start {
                    at = came_from[&at];
                    path.push(at);
                }
                path.reverse();
                return path;
            }
            if let std::collections::btree_map::Entry::Vacant(e) = came_from.entry(w) {
                e.insert(v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("a strongly connected component has a cycle through each member")
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let modules = graph(&src());
    let found = cycles(&modules);
    assert!(
        found.is_empty(),
        "import cycles between top-level modules of src/ (each step names where it is used):\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_command_line_uses_the_development_tools() {
    let modules = graph(&src());
    let users: BTreeSet<&str> = modules
        .iter()
        .filter(|(name, m)| m.uses.contains_key("devtools") && name.as_str() != "cli")
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        users.is_empty(),
        "the gateway uses devtools from: {users:?}"
    );
}

#[test]
fn the_checker_sees_modules_groups_and_cycles() {
    // A throwaway tree: a → b through a `crate::{…}` group, b → a through a
    // path in code; comments and strings name c, which must not count.
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("src");
    std::fs::create_dir_all(root.join("b")).unwrap();
    std::fs::write(
        root.join("lib.rs"),
        "pub mod a;\nmod b;\npub(crate) mod c;\nmod inline { }\n",
    )
    .unwrap();
    std::fs::write(
        root.join("a.rs"),
        "use crate::{c as _, b::{x, y}};\n// crate::c\n",
    )
    .unwrap();
    std::fs::write(root.join("b").join("mod.rs"), "mod x;\npub fn y() {}\n").unwrap();
    std::fs::write(
        root.join("b").join("x.rs"),
        "fn f() { crate::a::g(); let _ = \"crate::c\"; }\n",
    )
    .unwrap();
    std::fs::write(root.join("c.rs"), "/* crate::a */\n").unwrap();
    let modules = graph(&root);
    assert_eq!(modules.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(modules["b"].files.len(), 2, "b/x.rs is part of b");
    assert_eq!(modules["a"].uses.keys().collect::<Vec<_>>(), ["b", "c"]);
    assert_eq!(modules["b"].uses.keys().collect::<Vec<_>>(), ["a"]);
    assert!(modules["c"].uses.is_empty(), "comments do not count");
    let found = cycles(&modules);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("a → b (src/a.rs:1) → a (src/b/x.rs:1)"),
        "{found:?}"
    );
}
