//! Tidy: the tree keeps the shape ARCHITECTURE.md describes. Every path
//! the docs name exists; services depend on libraries, never on each
//! other; only `steward-proto` has a build script; each example config
//! loads as its service's config, with no key the service does not know;
//! no source file or function grows past what a reader can hold; and no
//! two modules of a crate import each other; and no log event has a field
//! named `message` (JSON logs would repeat the key).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use steward_integration_tests::workspace_root;
use syn::visit::Visit;

/// The longest a source file may be, not counting its unit tests.
const MAX_FILE_LINES: usize = 700;
/// The longest a function may be, from `fn` to its closing brace.
const MAX_FN_LINES: usize = 120;
/// Where the product's own code lives (the test suite is not held to
/// these sizes).
const SOURCE_DIRS: [&str; 3] = ["services", "libs", "cli"];

/// The `src/` directory of every crate under [`SOURCE_DIRS`].
fn crates() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut crates = vec![root.join("cli")];
    for group in ["services", "libs"] {
        for entry in std::fs::read_dir(root.join(group)).unwrap() {
            let dir = entry.unwrap().path();
            if dir.join("Cargo.toml").exists() {
                crates.push(dir);
            }
        }
    }
    crates.sort();
    crates
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The workspace-relative form of `path`, for messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Backticked paths and link targets in a Markdown file that name
/// something in the tree (`services/…`, `docs/…`, `Makefile`).
fn named_paths(markdown: &str) -> BTreeSet<String> {
    const ROOTS: [&str; 9] = [
        "services/",
        "libs/",
        "cli/",
        "proto/",
        "deploy/",
        "integration-tests/",
        "docs/",
        ".ci/",
        "Makefile",
    ];
    let mut candidates = Vec::new();
    for (i, part) in markdown.split('`').enumerate() {
        if i % 2 == 1 {
            candidates.push(part.to_owned());
        }
    }
    for part in markdown.split("](").skip(1) {
        if let Some(end) = part.find(')') {
            candidates.push(part[..end].to_owned());
        }
    }
    let mut out = BTreeSet::new();
    for candidate in candidates {
        let path = candidate.split(['#', ' ']).next().unwrap_or_default();
        let path = path.split(':').next().unwrap_or_default();
        let path = path.trim_end_matches(['.', ',', ';']);
        if !ROOTS.iter().any(|r| path.starts_with(r)) || path.contains(['*', '<', '…']) {
            continue;
        }
        out.extend(expand_braces(path));
    }
    out
}

/// `a/{b,c}/d` → `a/b/d`, `a/c/d`.
fn expand_braces(path: &str) -> Vec<String> {
    let (Some(open), Some(close)) = (path.find('{'), path.find('}')) else {
        return vec![path.to_owned()];
    };
    path[open + 1..close]
        .split(',')
        .flat_map(|choice| {
            expand_braces(&format!("{}{choice}{}", &path[..open], &path[close + 1..]))
        })
        .collect()
}

#[test]
fn every_path_the_docs_name_exists() {
    let root = workspace_root();
    let mut missing = Vec::new();
    for doc in ["ARCHITECTURE.md", "README.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let named = named_paths(&text);
        assert!(named.len() >= 10, "{doc} names only {named:?}");
        for path in named {
            if !root.join(&path).exists() {
                missing.push(format!("{doc}: {path}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named but missing:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_parser_finds_paths_in_markdown() {
    let found = named_paths(
        "see `services/{audit,inventory}/src` and [the ADR](docs/adr/0001.md#why), not `cargo test` or `docs/adr/*`",
    );
    assert_eq!(
        found,
        BTreeSet::from([
            "services/audit/src".to_owned(),
            "services/inventory/src".to_owned(),
            "docs/adr/0001.md".to_owned(),
        ])
    );
}

/// Every dependency a crate's manifest names, in any section.
fn dependencies(manifest: &toml::Table) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(table) = manifest.get(section).and_then(|s| s.as_table()) {
            names.extend(table.keys().cloned());
        }
    }
    names
}

fn manifest(dir: &Path) -> toml::Table {
    let text = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    text.parse().unwrap()
}

#[test]
fn services_depend_on_libraries_never_on_each_other() {
    let services: BTreeMap<String, PathBuf> = crates()
        .into_iter()
        .filter(|c| c.starts_with(workspace_root().join("services")))
        .map(|dir| {
            let name = manifest(&dir)["package"]["name"]
                .as_str()
                .unwrap()
                .to_owned();
            (name, dir)
        })
        .collect();
    assert_eq!(services.len(), 4, "{services:?}");
    for (name, dir) in &services {
        for dependency in dependencies(&manifest(dir)) {
            assert!(
                !services.contains_key(&dependency),
                "{name} depends on the service {dependency}: share through libs/ instead"
            );
        }
    }
}

#[test]
fn only_steward_proto_has_a_build_script() {
    let proto = workspace_root().join("libs/steward-proto");
    let mut members = crates();
    members.push(workspace_root().join("integration-tests"));
    for dir in members {
        let has_script = dir.join("build.rs").exists()
            || manifest(&dir)["package"]
                .as_table()
                .is_some_and(|p| p.contains_key("build"));
        assert_eq!(has_script, dir == proto, "{}", shown(&dir));
    }
}

/// Keys of a config file the service's defaults do not have. A default
/// that is unset (`null`) or an empty map accepts whatever table its file
/// gives.
fn unknown_keys(file: &toml::Value, defaults: &serde_json::Value, at: &str) -> Vec<String> {
    let (Some(file), Some(defaults)) = (file.as_table(), defaults.as_object()) else {
        return Vec::new();
    };
    let mut unknown = Vec::new();
    for (key, value) in file {
        let path = format!("{at}{key}");
        match defaults.get(key) {
            None => unknown.push(path),
            // Unset, or a map (its keys are the file's to name).
            Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Object(map)) if map.is_empty() => {}
            Some(default) => unknown.extend(unknown_keys(value, default, &format!("{path}."))),
        }
    }
    unknown
}

/// Loads `file` over `defaults` as the service does, and finds no key
/// the service would ignore.
fn loads<T>(file: &Path, defaults: T)
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de>,
{
    let known = serde_json::to_value(&defaults).unwrap();
    steward_server::config::load(defaults, Some(file))
        .unwrap_or_else(|e| panic!("{}: {e}", shown(file)));
    let text = std::fs::read_to_string(file).unwrap();
    let value: toml::Value = text.parse().unwrap();
    let unknown = unknown_keys(&value, &known, "");
    assert!(
        unknown.is_empty(),
        "{}: keys the service does not know: {unknown:?}",
        shown(file)
    );
}

#[test]
fn every_example_config_loads_as_its_services_config() {
    let dir = workspace_root().join("deploy/config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().path();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        match name.as_str() {
            "inventory.example.toml" => loads(&file, steward_inventory::default_config()),
            "authority.example.toml" => loads(&file, steward_authority::default_config()),
            "credential-broker.example.toml" => {
                loads(&file, steward_credential_broker::default_config())
            }
            "audit.example.toml" => loads(&file, steward_audit::default_config()),
            other => panic!("deploy/config/{other}: which service's config is it?"),
        }
        seen += 1;
    }
    assert_eq!(seen, 4, "an example config per service");
}

/// The TOML files a ConfigMap manifest carries, by key (`inventory.toml`):
/// each `  <key>: |` block, unindented.
fn config_map_files(yaml: &str) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in yaml.lines() {
        if let Some(key) = line
            .strip_prefix("  ")
            .and_then(|rest| rest.strip_suffix(": |"))
            .filter(|key| !key.starts_with(' '))
        {
            files.extend(current.take());
            current = Some((key.to_owned(), String::new()));
        } else if let Some((_, text)) = current.as_mut() {
            if line.is_empty() || line.starts_with("    ") {
                text.push_str(line.strip_prefix("    ").unwrap_or(""));
                text.push('\n');
            } else {
                files.extend(current.take());
            }
        }
    }
    files.extend(current);
    files
}

#[test]
fn the_kubernetes_config_map_holds_each_services_config() {
    let yaml =
        std::fs::read_to_string(workspace_root().join("deploy/kubernetes/config.yaml")).unwrap();
    let files = config_map_files(&yaml);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "audit.toml",
            "authority.toml",
            "credential-broker.toml",
            "inventory.toml"
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in &files {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        match name.as_str() {
            "inventory.toml" => loads(&file, steward_inventory::default_config()),
            "authority.toml" => loads(&file, steward_authority::default_config()),
            "credential-broker.toml" => loads(&file, steward_credential_broker::default_config()),
            _ => loads(&file, steward_audit::default_config()),
        }
    }
}

#[test]
fn an_unknown_key_is_found_at_any_depth() {
    let defaults = serde_json::json!({"tls": {"cert": "a"}, "backend": null});
    let file: toml::Value = "tls.cret = 'x'\nbackend.url = 'y'\nlisten = 1"
        .parse()
        .unwrap();
    assert_eq!(
        unknown_keys(&file, &defaults, ""),
        vec!["listen".to_owned(), "tls.cret".to_owned()]
    );
}

/// Lines of `text` before its unit tests (`#[cfg(test)]` at the top level).
fn lines_before_tests(text: &str) -> usize {
    text.lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .count()
}

/// Functions longer than [`MAX_FN_LINES`], outside unit tests.
#[derive(Default)]
struct LongFunctions {
    found: Vec<(String, usize, usize)>,
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("test")
            || (a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test"))
    })
}

impl LongFunctions {
    fn check(&mut self, name: &syn::Ident, fn_token: &syn::token::Fn, block: &syn::Block) {
        let start = fn_token.span.start().line;
        let lines = block.brace_token.span.close().end().line - start + 1;
        if lines > MAX_FN_LINES {
            self.found.push((name.to_string(), start, lines));
        }
    }
}

impl<'ast> Visit<'ast> for LongFunctions {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if !is_test(&item.attrs) {
            syn::visit::visit_item_mod(self, item);
        }
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if !is_test(&item.attrs) {
            self.check(&item.sig.ident, &item.sig.fn_token, &item.block);
            syn::visit::visit_item_fn(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        self.check(&item.sig.ident, &item.sig.fn_token, &item.block);
        syn::visit::visit_impl_item_fn(self, item);
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        if let Some(block) = &item.default {
            self.check(&item.sig.ident, &item.sig.fn_token, block);
        }
        syn::visit::visit_trait_item_fn(self, item);
    }
}

#[test]
fn no_source_file_or_function_is_too_long_to_read() {
    let mut too_long = BTreeMap::new();
    for dir in SOURCE_DIRS {
        for file in rust_files(&workspace_root().join(dir)) {
            if file.components().any(|c| c.as_os_str() == "tests") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let lines = lines_before_tests(&text);
            if lines > MAX_FILE_LINES {
                too_long.insert(shown(&file), format!("{lines} lines"));
            }
            let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", shown(&file)));
            let mut functions = LongFunctions::default();
            functions.visit_file(&ast);
            for (name, line, lines) in functions.found {
                too_long.insert(
                    format!("{}: fn {name}", shown(&file)),
                    format!("line {line}, {lines} lines"),
                );
            }
        }
    }
    let found: Vec<String> = too_long
        .iter()
        .map(|(item, size)| format!("{item} ({size})"))
        .collect();
    assert!(
        found.is_empty(),
        "over {MAX_FILE_LINES} lines a file, {MAX_FN_LINES} a function:\n{}",
        found.join("\n")
    );
}

/// The top-level modules of a crate that each top-level module names
/// (`crate::x`, or `super::x` from one level down).
#[derive(Default)]
struct Names {
    /// How many levels below the crate root this file's module is.
    depth: usize,
    named: BTreeSet<String>,
}

impl Names {
    fn path(&mut self, segments: &[String]) {
        let module = match segments {
            [first, second, ..] if first == "crate" => second,
            [first, second, ..] if first == "super" && self.depth == 1 => second,
            [first, second, third, ..]
                if first == "super" && second == "super" && self.depth == 2 =>
            {
                third
            }
            _ => return,
        };
        self.named.insert(module.clone());
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.path(prefix);
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.path(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => {
                prefix.push("*".to_owned());
                self.path(prefix);
                prefix.pop();
            }
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Names {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if !is_test(&item.attrs) {
            syn::visit::visit_item_mod(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.path(&segments);
        syn::visit::visit_path(self, path);
    }
}

/// `module → modules it names`, for one crate's `src/`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).unwrap();
        let parts: Vec<_> = relative.iter().map(|p| p.to_string_lossy()).collect();
        let top = parts[0].trim_end_matches(".rs").to_owned();
        if parts.len() == 1 && (top == "lib" || top == "main") || top == "bin" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let ast = syn::parse_file(&text).unwrap();
        let mut names = Names {
            depth: parts.len(),
            ..Default::default()
        };
        names.visit_file(&ast);
        graph.entry(top.clone()).or_default().extend(names.named);
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for (module, named) in graph.iter_mut() {
        named.retain(|n| n != module && modules.contains(n));
    }
    graph
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        at: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|m| m == at) {
            let mut found = path[i..].to_vec();
            found.push(at.to_owned());
            return Some(found);
        }
        if done.contains(at) {
            return None;
        }
        path.push(at.to_owned());
        for next in graph.get(at).into_iter().flatten() {
            if let Some(found) = walk(graph, next, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(at.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|start| walk(graph, start, &mut Vec::new(), &mut done))
}

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    let mut cycles = Vec::new();
    for dir in crates() {
        if let Some(found) = cycle(&module_graph(&dir.join("src"))) {
            cycles.push(format!("{}: {}", shown(&dir), found.join(" → ")));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn a_cycle_is_found_through_any_number_of_modules() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(cycle(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    assert_eq!(
        cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

/// The tracing macros: an event's text is its `message` field.
const LOG_MACROS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "event"];

/// The lines of `tokens` where a tracing macro is given a field named
/// `message` (`message = …`, `%message`, `?message`), searching every
/// group, so invocations inside other macros (`select!`) are found too.
fn message_fields(tokens: proc_macro2::TokenStream, found: &mut Vec<usize>) {
    use proc_macro2::TokenTree;
    let trees: Vec<TokenTree> = tokens.into_iter().collect();
    for (i, tree) in trees.iter().enumerate() {
        let TokenTree::Group(group) = tree else {
            continue;
        };
        let invoked = i >= 2
            && matches!(&trees[i - 1], TokenTree::Punct(p) if p.as_char() == '!')
            && matches!(&trees[i - 2], TokenTree::Ident(id) if LOG_MACROS.contains(&id.to_string().as_str()));
        if invoked {
            let inner: Vec<TokenTree> = group.stream().into_iter().collect();
            for (j, token) in inner.iter().enumerate() {
                let TokenTree::Ident(id) = token else {
                    continue;
                };
                if id != "message" {
                    continue;
                }
                let assigned = matches!(inner.get(j + 1), Some(TokenTree::Punct(p)) if p.as_char() == '=' && p.spacing() == proc_macro2::Spacing::Alone);
                let shorthand = j > 0
                    && matches!(&inner[j - 1], TokenTree::Punct(p) if matches!(p.as_char(), '%' | '?'));
                if assigned || shorthand {
                    found.push(id.span().start().line);
                }
            }
        }
        message_fields(group.stream(), found);
    }
}

/// JSON logs put an event's fields beside its text, whose key is
/// `message`: a field of that name would repeat the key, and a parser
/// that keeps the last one would lose the event's text.
#[test]
fn no_log_event_has_a_field_named_message() {
    let mut found = BTreeMap::new();
    for dir in SOURCE_DIRS {
        for file in rust_files(&workspace_root().join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            let tokens: proc_macro2::TokenStream = text.parse().unwrap();
            let mut lines = Vec::new();
            message_fields(tokens, &mut lines);
            if !lines.is_empty() {
                found.insert(shown(&file), lines);
            }
        }
    }
    assert!(found.is_empty(), "rename these fields: {found:?}");
}

#[test]
fn the_message_field_check_finds_what_it_should() {
    let mut found = Vec::new();
    let source = "fn f() {\n tracing::warn!(code = 1, message = m, \"x\");\n select! { message = rx => { debug!(%message, \"y\") } }\n info!(status_message = m, \"z\");\n}";
    message_fields(source.parse().unwrap(), &mut found);
    assert_eq!(found, [2, 3]);
}
