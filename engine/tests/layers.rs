//! The engine's modules import one way: each module uses only modules of lower
//! layers (see the layer list in `src/lib.rs`). An upward `crate::` path is a
//! circle in the making and fails here with the file and the path.

use std::path::Path;

/// Layer of each top-level module, bottom first.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("cpu", 0),
    ("dump", 0),
    ("params", 1),
    ("data", 1),
    ("runtime", 2),
    ("api", 3),
    ("registry", 4),
    ("config", 5),
    ("mailbox", 6),
    ("shard", 7),
    ("cluster", 8),
    ("shared", 9),
    ("job", 10),
    ("engine", 11),
    ("jobs", 12),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_import_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut checked = 0;
    let mut upward = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs").to_string();
        if top == "lib" {
            continue;
        }
        let own = layer(&top).unwrap_or_else(|| panic!("{}: module '{top}' is not in LAYERS", rel.display()));
        let text = std::fs::read_to_string(&file).unwrap();
        for (at, _) in text.match_indices("crate::") {
            let name: String = text[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let Some(theirs) = layer(&name) else { continue };
            checked += 1;
            if name != top && theirs >= own {
                upward.push(format!("{} uses crate::{name}", rel.display()));
            }
        }
    }
    assert!(checked > 20, "the scan found only {checked} crate paths: is it reading the sources?");
    assert!(upward.is_empty(), "imports against the layers:\n{}", upward.join("\n"));
}
