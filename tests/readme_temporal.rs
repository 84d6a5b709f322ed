//! The README's "Replaying Temporal histories" example, compiled and run.
//! `readme_temporal/snippet.rs` is the README's code block byte for byte (a
//! test checks it); the port it replays is `temporal_port/greeting.rs`, shared
//! with `history_temporal_import.rs`.

use std::time::Duration;

use retrace::workflow::{Workflow, WorkflowContext, WorkflowResult};
use serde_json::{Value, json};

include!("readme_temporal/snippet.rs");

include!("temporal_port/greeting.rs");

#[test]
fn the_readme_shows_this_example_verbatim() {
    let readme = include_str!("../README.md");
    let snippet = include_str!("readme_temporal/snippet.rs");
    let block = format!("against it:\n\n```rust\n{snippet}```\n");
    assert!(
        readme.contains(&block),
        "README.md differs from tests/readme_temporal/: paste\n{block}"
    );
}
