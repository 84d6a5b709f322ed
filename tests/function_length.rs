//! Functions stay short (TigerBeetle's rule, about 70 lines; 80 here since
//! rustfmt spreads long calls over many lines). A new function past the limit
//! fails this test with its file, line and length.

use std::path::{Path, PathBuf};

/// Lines a function may span, signature to closing brace.
const FUNCTION_LINES_MAX: usize = 80;
/// The source trees checked (tests and benchmarks are exempt).
const ROOTS: [&str; 3] = ["src", "sim/src", "examples/messages/src"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// (name, first line, length) of every function with a body in `text`.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let declaration = [
            "fn ",
            "pub fn ",
            "async fn ",
            "pub async fn ",
            "pub(crate) fn ",
            "pub(super) fn ",
            "pub(crate) async fn ",
            "pub(super) async fn ",
            "const fn ",
            "pub const fn ",
        ]
        .iter()
        .find_map(|prefix| trimmed.strip_prefix(prefix));
        let Some(rest) = declaration else {
            index += 1;
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let closing = " ".repeat(indent) + "}";
        let end = (index..lines.len())
            .find(|&j| lines[j] == closing || (j == index && line.trim_end().ends_with('}')));
        let declares_only = lines[index..]
            .iter()
            .take_while(|l| !l.contains('{'))
            .any(|l| l.trim_end().ends_with(';'));
        match end {
            Some(end) if !declares_only => {
                found.push((name, index + 1, end - index + 1));
                index = end + 1;
            }
            _ => index += 1,
        }
    }
    found
}

#[test]
fn every_function_in_the_crates_fits_in_80_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ROOTS {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(
        files.len() > 40,
        "the scan finds the sources ({} files)",
        files.len()
    );
    let mut long = Vec::new();
    let mut counted = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a readable source file");
        for (name, line, length) in functions(&text) {
            counted += 1;
            if length > FUNCTION_LINES_MAX {
                long.push(format!(
                    "{}:{line} fn {name}: {length} lines",
                    file.strip_prefix(root).unwrap_or(file).display()
                ));
            }
        }
    }
    assert!(counted > 500, "the scan finds the functions ({counted})");
    assert!(
        long.is_empty(),
        "functions over {FUNCTION_LINES_MAX} lines (split them):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_scanner_measures_a_function_from_signature_to_closing_brace() {
    let text = "fn short() {\n    1;\n}\n\npub async fn longer(\n    a: u8,\n) -> u8 {\n    a\n}\nfn declared();\n";
    assert_eq!(
        functions(text),
        vec![("short".to_string(), 1, 3), ("longer".to_string(), 5, 5)]
    );
}
