//! The layout's rules, checked on the source text (`src/`), so that breaking
//! one fails the build's tests and names the file and line:
//!
//! - the engine (`src/engine/`) is pure: no path into the daemon, the lab,
//!   the CLI, config, replay or the clock, and no I/O crate (tokio, rdkafka,
//!   axum, reqwest, prometheus, tracing ...), whole files including their
//!   test modules;
//! - no import circle, neither between top-level modules (cli, config,
//!   engine, daemon ...) nor between the files of one folder
//!   (`engine/window -> engine/baseline -> engine/window`).
//!
//! It reads text, not the compiler's view: comments and string literals are
//! blanked first, then every path that starts at `crate`, `super`, `self`,
//! a child module or an external crate is resolved to the file it names
//! (seeing through a folder's mod.rs re-exports). A macro that builds paths from pieces is
//! invisible to it. `src/main.rs` is the binary, another crate (it reaches
//! the library as `driftd::`), and is not read.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// Top-level modules the engine may not use.
const OUTER: &[&str] = &["daemon", "lab", "cli", "config", "replay", "clock"];

/// Crates that do I/O, run async, log or keep metrics: not in the engine.
const IO_CRATES: &[&str] = &[
    "tokio",
    "rdkafka",
    "axum",
    "reqwest",
    "prometheus",
    "tracing",
    "tracing_subscriber",
    "hyper",
    "ureq",
];

#[test]
fn the_engine_uses_no_outer_module_and_no_io_crate() {
    let tree = Tree::read(&src_dir());
    let found = engine_violations(&tree);
    assert!(
        found.is_empty(),
        "the engine must stay pure (src/engine/mod.rs says why); move the code to the daemon or \
         the lab, or pass what it needs in as a parameter:\n{}",
        found.join("\n")
    );
}

#[test]
fn no_import_circles_between_modules_or_files_of_a_folder() {
    let tree = Tree::read(&src_dir());
    let found = circles_report(&tree);
    assert!(
        found.is_empty(),
        "arrows must go one way (cli -> lab -> daemon -> engine); break each circle where an \
         arrow points back:\n{}",
        found.join("\n")
    );
}

/// The two checks above would also pass on a tree they failed to read:
/// this one is read, with the arrows everyone knows are there.
#[test]
fn the_checker_sees_the_known_arrows() {
    let tree = Tree::read(&src_dir());
    assert!(tree.engine_files().count() >= 5);
    let edges = edges(&tree);
    let has = |folder: &str, from: &str, to: &str| {
        edges
            .get(folder)
            .is_some_and(|e| e.contains_key(&(from.to_owned(), to.to_owned())))
    };
    assert!(has("", "daemon", "engine"), "{edges:#?}");
    assert!(has("", "config", "daemon"), "{edges:#?}");
    assert!(
        has("engine", "engine/pipeline", "engine/window"),
        "{edges:#?}"
    );
    assert!(has("engine", "engine/mod", "engine/pipeline"), "{edges:#?}");
    // Re-exported by engine/mod.rs from pipeline.
    let engine = tree.file_of(&["engine".to_owned(), "Engine".to_owned()]);
    assert_eq!(
        engine.map(|f| f.shown.as_str()),
        Some("src/engine/pipeline.rs")
    );
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

// ---------------------------------------------------------------------------
// The rules, on a tree that has been read.

/// One line per place an engine file names an outer module or an I/O crate.
fn engine_violations(tree: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for file in tree.engine_files() {
        for r in &file.refs {
            let why = match tree.resolve(r) {
                Target::Crate(p) if p.first().is_some_and(|m| OUTER.contains(&m.as_str())) => {
                    format!("uses crate::{}", p[0])
                }
                Target::External(name) if IO_CRATES.contains(&name.as_str()) => {
                    format!("uses the I/O crate `{name}`")
                }
                _ => continue,
            };
            let (at, text) = file.cite(r.line);
            let line = format!("  {at} {why}: {text}");
            if out.last() != Some(&line) {
                out.push(line);
            }
        }
    }
    out
}

/// One paragraph per circle: the circle as a path, then where each arrow
/// comes from.
fn circles_report(tree: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (folder, arrows) in edges(tree) {
        let graph: BTreeSet<(String, String)> = arrows.keys().cloned().collect();
        for circle in circles(&graph) {
            let level = if folder.is_empty() {
                "top-level modules".to_owned()
            } else {
                format!("files of src/{folder}/")
            };
            let mut s = format!("  circle between {level}: {}", circle.join(" -> "));
            for pair in circle.windows(2) {
                let why = &arrows[&(pair[0].clone(), pair[1].clone())];
                s.push_str(&format!("\n    {} -> {}: {why}", pair[0], pair[1]));
            }
            out.push(s);
        }
    }
    out
}

/// Arrows per folder ("" for the top level), each with the first place that
/// draws it.
type Edges = BTreeMap<String, BTreeMap<(String, String), String>>;

/// Every arrow between two files, drawn at the level where their module
/// paths part: `engine/window` naming `engine::baseline` is an arrow in
/// folder `engine`; `daemon/app` naming `engine::window` is `daemon ->
/// engine` at the top.
fn edges(tree: &Tree) -> Edges {
    let mut out = Edges::new();
    for file in &tree.files {
        for r in &file.refs {
            let Target::Crate(path) = tree.resolve(r) else {
                continue;
            };
            let Some(target) = tree.file_of(&path) else {
                continue;
            };
            if target.module == file.module {
                continue;
            }
            let common = file
                .module
                .iter()
                .zip(&target.module)
                .take_while(|(a, b)| a == b)
                .count();
            let folder = file.module[..common].join("/");
            let arrow = (node(&file.module, common), node(&target.module, common));
            out.entry(folder)
                .or_default()
                .entry(arrow)
                .or_insert_with(|| {
                    let (at, text) = file.cite(r.line);
                    format!("{at}: {text}")
                });
        }
    }
    out
}

/// The name of the module at `module` seen from its ancestor at depth
/// `level`: its child there (`engine/window`), or the ancestor's own file
/// (`engine/mod`, `lib`).
fn node(module: &[String], level: usize) -> String {
    let child = module.get(level).map_or("mod", String::as_str);
    match (level, module.is_empty()) {
        (_, true) => "lib".to_owned(),
        (0, _) => child.to_owned(),
        _ => format!("{}/{child}", module[..level].join("/")),
    }
}

/// One circle per strongly connected group of nodes (and per node with an
/// arrow to itself), as a path that starts and ends at the group's first
/// node: the shortest way round.
fn circles(graph: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in graph {
        next.entry(a).or_default().push(b);
        next.entry(b).or_default();
    }
    let mut out = Vec::new();
    for group in strongly_connected(&next) {
        let start = group[0];
        let looped = next[start].contains(&start);
        if group.len() > 1 || looped {
            out.push(shortest_way_round(&next, start, &group));
        }
    }
    out
}

/// Kosaraju: the nodes in groups that can all reach each other, each group
/// sorted.
fn strongly_connected<'a>(next: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<Vec<&'a str>> {
    fn finish<'a>(
        u: &'a str,
        g: &BTreeMap<&'a str, Vec<&'a str>>,
        seen: &mut BTreeSet<&'a str>,
        order: &mut Vec<&'a str>,
    ) {
        if seen.insert(u) {
            for &v in &g[u] {
                finish(v, g, seen, order);
            }
            order.push(u);
        }
    }
    let mut back: BTreeMap<&str, Vec<&str>> = next.keys().map(|&k| (k, vec![])).collect();
    for (&a, bs) in next {
        for &b in bs {
            back.get_mut(b).expect("every node is a key").push(a);
        }
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for &u in next.keys() {
        finish(u, next, &mut seen, &mut order);
    }
    let mut assigned = BTreeSet::new();
    let mut groups = Vec::new();
    for &u in order.iter().rev() {
        let mut group = Vec::new();
        finish(u, &back, &mut assigned, &mut group);
        if !group.is_empty() {
            group.sort();
            groups.push(group);
        }
    }
    groups.sort();
    groups
}

/// Breadth first from `start` back to it, inside `group`.
fn shortest_way_round<'a>(
    next: &BTreeMap<&'a str, Vec<&'a str>>,
    start: &'a str,
    group: &[&'a str],
) -> Vec<String> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(u) = queue.pop_front() {
        for &v in &next[u] {
            if v == start {
                let mut path = vec![start.to_owned(), u.to_owned()];
                let mut at = u;
                while at != start {
                    at = came_from[at];
                    path.push(at.to_owned());
                }
                path.reverse();
                return path;
            }
            if group.contains(&v) && !came_from.contains_key(v) {
                came_from.insert(v, u);
                queue.push_back(v);
            }
        }
    }
    unreachable!("{start} is in a strongly connected group")
}

// ---------------------------------------------------------------------------
// The tree: every file's module path and the paths it names.

struct Tree {
    files: Vec<File>,
    /// Every module: one per file, and the inline `mod x { }` ones.
    modules: BTreeSet<Vec<String>>,
}

struct File {
    /// `src/engine/window.rs`.
    shown: String,
    /// `engine::window` as segments; `engine` for engine/mod.rs; empty for lib.rs.
    module: Vec<String>,
    lines: Vec<String>,
    refs: Vec<RawRef>,
}

/// What a path resolves to.
#[derive(Debug, PartialEq)]
enum Target {
    /// Segments from the crate root.
    Crate(Vec<String>),
    /// The external crate it starts at.
    External(String),
}

impl Tree {
    fn read(src: &Path) -> Tree {
        let mut paths = Vec::new();
        collect_rs(src, &mut paths);
        paths.sort();
        let mut files = Vec::new();
        let mut modules = BTreeSet::new();
        for path in paths {
            let rel = path.strip_prefix(src).expect("under src");
            let Some(module) = module_of(rel) else {
                continue;
            };
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            let read = read_code(&blank(&text), &module);
            modules.insert(module.clone());
            modules.extend(read.inline_modules);
            files.push(File {
                shown: format!("src/{}", rel.display()),
                module,
                lines: text.lines().map(str::to_owned).collect(),
                refs: read.refs,
            });
        }
        assert!(!files.is_empty(), "no .rs files under {}", src.display());
        Tree { files, modules }
    }

    fn engine_files(&self) -> impl Iterator<Item = &File> {
        self.files
            .iter()
            .filter(|f| f.module.first().map(String::as_str) == Some("engine"))
    }

    /// Where a path starts: the crate (segments from its root), or an
    /// external crate.
    fn resolve(&self, r: &RawRef) -> Target {
        let mut segs = r.segs.iter().map(String::as_str).peekable();
        let first = *segs.peek().expect("a path has a segment");
        let mut at: Vec<String> = match first {
            _ if r.global => return Target::External(first.to_owned()),
            "crate" => {
                segs.next();
                vec![]
            }
            "self" | "super" => {
                let mut at = r.scope.clone();
                while let Some(s) = segs.next_if(|s| *s == "self" || *s == "super") {
                    if s == "super" {
                        at.pop();
                    }
                }
                at
            }
            _ => {
                let mut child = r.scope.clone();
                child.push(first.to_owned());
                if !self.modules.contains(&child) {
                    return Target::External(first.to_owned());
                }
                r.scope.clone()
            }
        };
        at.extend(segs.map(str::to_owned));
        Target::Crate(at)
    }

    /// The file that `path` names. A folder's facade (`pub use` in a mod.rs
    /// of its own children) is seen through: `crate::engine::Engine` is
    /// engine/pipeline.rs. Any other re-export is an arrow of its own:
    /// `crate::config::Config` is config.rs, which names daemon/app.rs.
    fn file_of(&self, path: &[String]) -> Option<&File> {
        let mut path = path.to_vec();
        for _ in 0..8 {
            let file = self
                .files
                .iter()
                .filter(|f| path.starts_with(&f.module))
                .max_by_key(|f| f.module.len())?;
            let Some(name) = path.get(file.module.len()) else {
                return Some(file);
            };
            let reexport = file
                .refs
                .iter()
                .find(|r| r.exported_as.as_ref() == Some(name));
            let source = match reexport.map(|r| self.resolve(r)) {
                Some(Target::Crate(source)) if source.starts_with(&file.module) => source,
                _ => return Some(file),
            };
            let rest = path[file.module.len() + 1..].to_vec();
            path = source;
            path.extend(rest);
        }
        None
    }
}

impl File {
    /// `src/engine/x.rs:12` and that line's text.
    fn cite(&self, line: usize) -> (String, &str) {
        let text = self.lines.get(line - 1).map_or("", |l| l.trim());
        (format!("{}:{line}", self.shown), text)
    }
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under src/ (`engine/window.rs` is
/// `engine::window`, `engine/mod.rs` is `engine`, `lib.rs` the root); None
/// for main.rs, the binary's crate.
fn module_of(rel: &Path) -> Option<Vec<String>> {
    let mut segs: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    match segs.as_slice() {
        [only] if only == "main" => return None,
        [only] if only == "lib" => return Some(vec![]),
        _ => {}
    }
    if segs.last().is_some_and(|s| s == "mod") {
        segs.pop();
    }
    Some(segs)
}

// ---------------------------------------------------------------------------
// Reading code: blanking, tokens, paths and use trees.

/// Comments and the contents of string, byte-string and char literals
/// replaced by spaces, newlines kept (so lines still count): what is left
/// is code.
fn blank(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        let end = comment_end(&c, i)
            .or_else(|| raw_string_end(&c, i))
            .or_else(|| string_end(&c, i))
            .or_else(|| char_end(&c, i));
        match end {
            Some(j) => {
                out.extend(
                    c[i..j]
                        .iter()
                        .map(|&ch| if ch == '\n' { '\n' } else { ' ' }),
                );
                i = j;
            }
            None => {
                out.push(c[i]);
                i += 1;
            }
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `// ...` to the end of the line, or `/* ... */` (they nest).
fn comment_end(c: &[char], i: usize) -> Option<usize> {
    match (c.get(i), c.get(i + 1)) {
        (Some('/'), Some('/')) => Some((i..c.len()).find(|&j| c[j] == '\n').unwrap_or(c.len())),
        (Some('/'), Some('*')) => {
            let (mut depth, mut j) = (0, i);
            while j < c.len() {
                match (c[j], c.get(j + 1)) {
                    ('/', Some('*')) => (depth, j) = (depth + 1, j + 2),
                    ('*', Some('/')) => (depth, j) = (depth - 1, j + 2),
                    _ => j += 1,
                }
                if depth == 0 {
                    return Some(j);
                }
            }
            Some(c.len())
        }
        _ => None,
    }
}

/// `r"..."`, `r#"..."#` (also `br`, `cr`): no escapes inside.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    let starts_word = |k: usize| k == 0 || !is_ident(c[k - 1]);
    let prefixed = i > 0 && matches!(c[i - 1], 'b' | 'c') && starts_word(i - 1);
    if c[i] != 'r' || !(starts_word(i) || prefixed) {
        return None;
    }
    let hashes = c[i + 1..].iter().take_while(|&&h| h == '#').count();
    if c.get(i + 1 + hashes) != Some(&'"') {
        return None;
    }
    let mut j = i + 2 + hashes;
    while j < c.len() {
        if c[j] == '"'
            && c[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&h| h == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(c.len())
}

/// `"..."` with backslash escapes (the `b` or `c` before it stays: it is
/// harmless).
fn string_end(c: &[char], i: usize) -> Option<usize> {
    if c[i] != '"' {
        return None;
    }
    let mut j = i + 1;
    while j < c.len() {
        match c[j] {
            '\\' => j += 2,
            '"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    Some(c.len())
}

/// `'x'`, `'\n'`, `'\''`, `'\u{1F600}'`; not a lifetime (`'a`) or a label.
fn char_end(c: &[char], i: usize) -> Option<usize> {
    if c[i] != '\'' {
        return None;
    }
    match (c.get(i + 1), c.get(i + 2)) {
        (Some('\\'), _) => (i + 3..c.len()).find(|&j| c[j] == '\'').map(|j| j + 1),
        (Some(_), Some('\'')) => Some(i + 3),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    /// A number, or any other character.
    Other(char),
}

/// Tokens of blanked code with their line numbers (from 1).
fn tokens(code: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = code.chars().collect();
    let (mut out, mut line, mut i) = (Vec::new(), 1, 0);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Sep, line));
            i += 2;
        } else if is_ident(ch) {
            let j = (i..c.len()).find(|&j| !is_ident(c[j])).unwrap_or(c.len());
            let word: String = c[i..j].iter().collect();
            let tok = if ch.is_ascii_digit() {
                Tok::Other('0')
            } else {
                Tok::Ident(word)
            };
            out.push((tok, line));
            i = j;
        } else {
            out.push((Tok::Other(ch), line));
            i += 1;
        }
    }
    out
}

/// A path as written, with where it was written.
#[derive(Debug, Clone, PartialEq)]
struct RawRef {
    line: usize,
    /// `["super", "window", "Window"]`; a glob ends in `"*"`.
    segs: Vec<String>,
    /// The module the path is written in (inline `mod x { }` included).
    scope: Vec<String>,
    /// Written with a leading `::` (an external crate).
    global: bool,
    /// For `pub use`: the name it is re-exported as.
    exported_as: Option<String>,
}

#[derive(Debug, Default)]
struct ReadCode {
    refs: Vec<RawRef>,
    inline_modules: Vec<Vec<String>>,
}

/// Every path of blanked code in module `module`: the leaves of `use`
/// trees, `extern crate`s, and paths (`a::b`) anywhere else.
fn read_code(code: &str, module: &[String]) -> ReadCode {
    let toks = tokens(code);
    let ident = |k: usize| match toks.get(k) {
        Some((Tok::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let mut out = ReadCode::default();
    // (module name, brace depth outside it)
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth: usize = 0;
    let mut i = 0;
    while i < toks.len() {
        let line = toks[i].1;
        match (&toks[i].0, ident(i + 1)) {
            (Tok::Other('{'), _) => depth += 1,
            (Tok::Other('}'), _) => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            (Tok::Ident(kw), Some(name)) if kw == "mod" => {
                if toks.get(i + 2).map(|t| &t.0) == Some(&Tok::Other('{')) {
                    inline.push((name.to_owned(), depth));
                    out.inline_modules.push(scope(module, &inline));
                }
                i += 2;
                continue;
            }
            (Tok::Ident(kw), Some("crate")) if kw == "extern" => {
                if let Some(name) = ident(i + 2) {
                    out.refs.push(raw(
                        line,
                        vec![name.to_owned()],
                        scope(module, &inline),
                        true,
                        None,
                    ));
                }
                i += 3;
                continue;
            }
            (Tok::Ident(kw), _) if kw == "use" => {
                let exported = is_pub(&toks, i);
                let mut leaves = Vec::new();
                i += 1;
                use_tree(&toks, &mut i, &[], &mut leaves);
                for (segs, name, global) in leaves {
                    let exported_as = if exported { name } else { None };
                    out.refs
                        .push(raw(line, segs, scope(module, &inline), global, exported_as));
                }
                continue;
            }
            (Tok::Ident(_), _) | (Tok::Sep, _) if starts_path(&toks, i) => {
                let global = toks[i].0 == Tok::Sep;
                let mut j = i + usize::from(global);
                let mut segs = Vec::new();
                while let Some(s) = ident(j) {
                    segs.push(s.to_owned());
                    if toks.get(j + 1).map(|t| &t.0) != Some(&Tok::Sep) {
                        break;
                    }
                    j += 2;
                }
                if segs.len() > 1 || (global && !segs.is_empty()) {
                    out.refs
                        .push(raw(line, segs, scope(module, &inline), global, None));
                }
                i = j.max(i + 1);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The module at a point of a file: the file's, then the inline ones open there.
fn scope(module: &[String], inline: &[(String, usize)]) -> Vec<String> {
    let inner = inline.iter().map(|(m, _)| m.clone());
    module.iter().cloned().chain(inner).collect()
}

fn raw(
    line: usize,
    segs: Vec<String>,
    scope: Vec<String>,
    global: bool,
    exported_as: Option<String>,
) -> RawRef {
    RawRef {
        line,
        segs,
        scope,
        global,
        exported_as,
    }
}

/// Whether the token at `i` begins a path: an identifier after anything
/// but `::`, or a `::` that no identifier or `>` comes before.
fn starts_path(toks: &[(Tok, usize)], i: usize) -> bool {
    let before = |k: usize| i.checked_sub(k).map(|k| &toks[k].0);
    let after_sep = before(1) == Some(&Tok::Sep);
    match &toks[i].0 {
        Tok::Ident(_) => !after_sep,
        Tok::Sep => {
            !after_sep
                && !matches!(before(1), Some(Tok::Ident(_)) | Some(Tok::Other('>')))
                && matches!(toks.get(i + 1).map(|t| &t.0), Some(Tok::Ident(_)))
        }
        Tok::Other(_) => false,
    }
}

/// Whether the `use` at `i` is `pub use` or `pub(...) use`.
fn is_pub(toks: &[(Tok, usize)], i: usize) -> bool {
    let at = |k: usize| i.checked_sub(k).map(|k| &toks[k].0);
    if let Some(Tok::Ident(p)) = at(1) {
        return p == "pub";
    }
    if at(1) != Some(&Tok::Other(')')) {
        return false;
    }
    let open = (1..=i).find(|&k| at(k) == Some(&Tok::Other('(')));
    open.is_some_and(|k| matches!(at(k + 1), Some(Tok::Ident(p)) if p == "pub"))
}

/// The leaves of the use tree starting at `i`, each with the name it binds
/// (None for a glob) and whether it starts with `::`; leaves `i` after the
/// tree's end (past the `;` at the top).
fn use_tree(
    toks: &[(Tok, usize)],
    i: &mut usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, Option<String>, bool)>,
) {
    let global = prefix.is_empty() && toks.get(*i).map(|t| &t.0) == Some(&Tok::Sep);
    if global {
        *i += 1;
    }
    let mut segs = prefix.to_vec();
    loop {
        match toks.get(*i).map(|t| &t.0) {
            Some(Tok::Ident(s)) if s == "as" => {
                let alias = match toks.get(*i + 1).map(|t| &t.0) {
                    Some(Tok::Ident(a)) => Some(a.clone()),
                    _ => None,
                };
                *i += 2;
                push_leaf(out, segs, alias, global);
                break;
            }
            Some(Tok::Ident(s)) => {
                segs.push(s.clone());
                *i += 1;
                if toks.get(*i).map(|t| &t.0) == Some(&Tok::Sep) {
                    *i += 1;
                    continue;
                }
                if !matches!(toks.get(*i).map(|t| &t.0), Some(Tok::Ident(a)) if a == "as") {
                    let name = segs.last().cloned();
                    push_leaf(out, segs, name, global);
                    break;
                }
            }
            Some(Tok::Other('*')) => {
                *i += 1;
                segs.push("*".to_owned());
                out.push((segs, None, global));
                break;
            }
            Some(Tok::Other('{')) => {
                *i += 1;
                while !matches!(toks.get(*i).map(|t| &t.0), Some(Tok::Other('}')) | None) {
                    use_tree(toks, i, &segs, out);
                    if toks.get(*i).map(|t| &t.0) == Some(&Tok::Other(',')) {
                        *i += 1;
                    }
                }
                *i += 1;
                break;
            }
            _ => break,
        }
    }
    if prefix.is_empty() {
        while !matches!(toks.get(*i).map(|t| &t.0), Some(Tok::Other(';')) | None) {
            *i += 1;
        }
        *i += 1;
    }
}

/// A leaf; `a::{self, b}` gives `a` (bound as `a`) and `a::b`.
fn push_leaf(
    out: &mut Vec<(Vec<String>, Option<String>, bool)>,
    mut segs: Vec<String>,
    name: Option<String>,
    global: bool,
) {
    let is_self = segs.len() > 1 && segs.last().is_some_and(|s| s == "self");
    if is_self {
        segs.pop();
    }
    let name = match (is_self, name.as_deref()) {
        (true, Some("self")) => segs.last().cloned(),
        _ => name,
    };
    out.push((segs, name, global));
}

// ---------------------------------------------------------------------------
// The checker's own tests, on small strings.

mod checker {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn paths(code: &str, module: &[&str]) -> Vec<Vec<String>> {
        read_code(&blank(code), &s(module))
            .refs
            .into_iter()
            .map(|r| r.segs)
            .collect()
    }

    #[test]
    fn comments_and_literals_are_blanked_and_lines_kept() {
        let code =
            "a // tokio::x\n/* rdkafka /* nested */ axum */ b\n\"tokio::y \\\" reqwest\" c\n";
        let b = blank(code);
        assert_eq!(b.len(), code.len());
        assert_eq!(b.lines().count(), 3);
        assert_eq!(b.split_whitespace().collect::<Vec<_>>(), ["a", "b", "c"]);
    }

    #[test]
    fn raw_strings_byte_strings_and_chars_are_blanked() {
        let code = r####"x r#"a "quoted" tokio::x"# y br"\" z b"tokio" w '"' v '\'' u r##"#"##"####;
        assert_eq!(
            blank(code).split_whitespace().collect::<Vec<_>>(),
            ["x", "y", "b", "z", "b", "w", "v", "u"]
        );
    }

    #[test]
    fn lifetimes_and_raw_identifiers_stay_code() {
        let code = "fn f<'a>(x: &'a str, r#type: u8) -> char { 'x' }";
        assert_eq!(
            blank(code),
            "fn f<'a>(x: &'a str, r#type: u8) -> char {     }"
        );
    }

    #[test]
    fn use_trees_give_every_leaf_and_its_name() {
        let code = "pub use crate::engine::{self, baseline::{Baseline as B, Layout}, window::*};";
        let read = read_code(&blank(code), &[]);
        let leaves: Vec<(Vec<String>, Option<String>)> = read
            .refs
            .iter()
            .map(|r| (r.segs.clone(), r.exported_as.clone()))
            .collect();
        assert_eq!(
            leaves,
            [
                (s(&["crate", "engine"]), Some("engine".into())),
                (
                    s(&["crate", "engine", "baseline", "Baseline"]),
                    Some("B".into())
                ),
                (
                    s(&["crate", "engine", "baseline", "Layout"]),
                    Some("Layout".into())
                ),
                (s(&["crate", "engine", "window", "*"]), None),
            ]
        );
    }

    #[test]
    fn paths_anywhere_in_code_are_read_but_not_their_tails() {
        let code =
            "fn f() { let x = tokio::spawn(crate::a::b::<u8>::c()); ::hyper::x(); foo.bar(); }";
        assert_eq!(
            paths(code, &[]),
            [
                s(&["tokio", "spawn"]),
                s(&["crate", "a", "b"]),
                s(&["hyper", "x"])
            ]
        );
        let code = "#[tokio::test] async fn t() { tracing::info!(\"tokio::x\"); }";
        assert_eq!(
            paths(code, &[]),
            [s(&["tokio", "test"]), s(&["tracing", "info"])]
        );
    }

    #[test]
    fn inline_modules_scope_super() {
        let code = "use super::a;\nmod tests {\n use super::*;\n use super::super::b::C;\n}\nuse self::d::E;";
        let read = read_code(&blank(code), &s(&["engine", "x"]));
        let scopes: Vec<(usize, Vec<String>)> = read
            .refs
            .iter()
            .map(|r| (r.line, r.scope.clone()))
            .collect();
        assert_eq!(
            scopes,
            [
                (1, s(&["engine", "x"])),
                (3, s(&["engine", "x", "tests"])),
                (4, s(&["engine", "x", "tests"])),
                (6, s(&["engine", "x"])),
            ]
        );
        assert_eq!(read.inline_modules, [s(&["engine", "x", "tests"])]);
    }

    fn tree(files: &[(&str, &str)]) -> Tree {
        let dir = tempfile::tempdir().unwrap();
        for (path, code) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, code).unwrap();
        }
        Tree::read(dir.path())
    }

    #[test]
    fn paths_resolve_through_super_children_and_reexports() {
        let t = tree(&[
            ("lib.rs", "pub mod engine; pub mod daemon;"),
            (
                "engine/mod.rs",
                "mod pipeline; pub mod window;\npub use pipeline::Engine;",
            ),
            (
                "engine/pipeline.rs",
                "use super::window::W;\npub struct Engine;",
            ),
            (
                "engine/window.rs",
                "pub struct W; fn f() { ::tokio::spawn(); }",
            ),
            ("daemon/mod.rs", "use crate::engine::Engine;"),
        ]);
        let pipeline = &t.files[2];
        assert_eq!(
            t.resolve(&pipeline.refs[0]),
            Target::Crate(s(&["engine", "window", "W"]))
        );
        let window = &t.files[3];
        assert_eq!(t.resolve(&window.refs[0]), Target::External("tokio".into()));
        let daemon = &t.files[0];
        assert_eq!(daemon.shown, "src/daemon/mod.rs");
        let Target::Crate(p) = t.resolve(&daemon.refs[0]) else {
            panic!()
        };
        assert_eq!(t.file_of(&p).unwrap().module, s(&["engine", "pipeline"]));
    }

    #[test]
    fn the_engine_rule_names_file_line_and_what() {
        let t = tree(&[
            ("lib.rs", "pub mod engine; pub mod lab;"),
            ("engine/mod.rs", "//! Says tokio::spawn in a comment.\npub mod a;"),
            ("engine/a.rs", "fn f() {}\n#[cfg(test)]\nmod tests { use crate::lab::{G, H}; fn g() { prometheus::x(); let s = \"tracing::x\"; } }"),
            ("lab/mod.rs", "pub struct G; pub struct H;"),
        ]);
        let found = engine_violations(&t);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(
            found[0].starts_with("  src/engine/a.rs:3 uses crate::lab: mod tests {"),
            "{found:#?}"
        );
        assert!(
            found[1].starts_with("  src/engine/a.rs:3 uses the I/O crate `prometheus`: "),
            "{found:#?}"
        );
    }

    #[test]
    fn circles_are_found_as_paths() {
        let g = |edges: &[(&str, &str)]| -> BTreeSet<(String, String)> {
            edges
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert!(circles(&g(&[("a", "b"), ("b", "c"), ("a", "c")])).is_empty());
        assert_eq!(
            circles(&g(&[("a", "b"), ("b", "a")])),
            [s(&["a", "b", "a"])]
        );
        assert_eq!(circles(&g(&[("a", "a")])), [s(&["a", "a"])]);
        assert_eq!(
            circles(&g(&[
                ("x", "a"),
                ("a", "b"),
                ("b", "c"),
                ("c", "a"),
                ("c", "b"),
                ("d", "e"),
                ("e", "d")
            ])),
            [s(&["a", "b", "c", "a"]), s(&["d", "e", "d"])]
        );
    }

    #[test]
    fn a_circle_between_files_of_a_folder_is_reported_with_its_arrows() {
        let t = tree(&[
            ("lib.rs", "pub mod engine; pub mod daemon;"),
            ("engine/mod.rs", "pub mod window; pub mod baseline;"),
            ("engine/window.rs", "use crate::engine::baseline::Layout;"),
            (
                "engine/baseline.rs",
                "pub struct Layout;\nfn f() { super::window::g() }",
            ),
            ("daemon/mod.rs", "use crate::engine::window;"),
        ]);
        let found = circles_report(&t);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].starts_with(
            "  circle between files of src/engine/: engine/baseline -> engine/window -> engine/baseline\n"
        ), "{}", found[0]);
        assert!(found[0].contains("engine/baseline -> engine/window: src/engine/baseline.rs:2: fn f() { super::window::g() }"), "{}", found[0]);
    }
}
