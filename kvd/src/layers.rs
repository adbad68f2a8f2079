//! The crate's layering, checked: no module reaches back into one that
//! reaches it (see the map in lib.rs), and only the composition root knows
//! every layer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules (a file or a directory under src/) and the modules
/// each names as `crate::NAME` in its code (comments and test modules left
/// out).
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(src).expect("read src").flatten() {
        let p = e.path();
        let name = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        if p.is_dir() {
            let inner = std::fs::read_dir(&p).expect("read module dir").flatten().map(|e| e.path());
            files.entry(name).or_default().extend(inner.filter(|f| f.extension().is_some_and(|x| x == "rs")));
        } else if p.extension().is_some_and(|x| x == "rs") && name != "lib" && name != "main" {
            files.entry(name).or_default().push(p);
        }
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, paths) in &files {
        let mut uses = BTreeSet::new();
        for path in paths {
            let text = std::fs::read_to_string(path).expect("read source");
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let rest = &line[i + "crate::".len()..];
                    let names: Vec<&str> = match rest.strip_prefix('{') {
                        Some(group) => {
                            group.split([',', '}']).map(|n| n.trim().split("::").next().unwrap_or("")).collect()
                        }
                        None => vec![rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("")],
                    };
                    uses.extend(names.into_iter().filter(|n| modules.contains(*n) && n != module).map(str::to_owned));
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

/// A cycle of `graph`, if it has one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut c = path[i..].to_vec();
            c.push(m.to_owned());
            return Some(c);
        }
        if !done.insert(m.to_owned()) {
            return None;
        }
        path.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|m| visit(m, graph, &mut done, &mut Vec::new()))
}

#[test]
fn no_module_imports_one_that_imports_it() {
    let graph = imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.len() > 10 && graph.contains_key("node") && graph.contains_key("api"), "{graph:?}");
    if let Some(c) = cycle(&graph) {
        panic!("import circle: {}", c.join(" -> "));
    }
}

#[test]
fn only_the_composition_root_knows_the_apis() {
    let graph = imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    for (module, uses) in &graph {
        assert!(!uses.contains("boot"), "{module} uses the composition root");
        if module != "boot" {
            assert!(!uses.contains("api") && !uses.contains("peer"), "{module} uses an API adapter: {uses:?}");
        }
    }
}

#[test]
fn the_cycle_finder_finds_a_circle() {
    let g: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), BTreeSet::from([v.to_owned()])))
        .collect();
    assert_eq!(cycle(&g).map(|c| c.len()), Some(4), "a -> b -> c -> a");
    let tree: BTreeMap<String, BTreeSet<String>> =
        [("a", "b"), ("b", "c")].into_iter().map(|(k, v)| (k.to_owned(), BTreeSet::from([v.to_owned()]))).collect();
    assert_eq!(cycle(&tree), None);
}
