//! The suite itself: every test in it runs. A measurement belongs in `benches/`
//! (docs/performance.md), not behind `#[ignore]`, where `cargo test` would report
//! it as skipped.

use std::path::Path;

use crate::single_writer::rust_files;

#[test]
fn no_test_in_the_suite_is_ignored() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("tests"), &mut files);
    assert!(files.len() > 50, "the walk found the sources: {}", files.len());
    // Built from parts, so this file does not match itself.
    let attribute = format!("#[{}", "ignore");
    let ignored: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.trim_start().starts_with(&attribute))
                .map(|(i, _)| format!("{}:{}", f.strip_prefix(root).unwrap().display(), i + 1))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(ignored.is_empty(), "ignored tests (move a measurement to benches/): {ignored:?}");
}
