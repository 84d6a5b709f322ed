//! The scaffolding tools: `retrace new project|workflow|activity`.

use std::path::PathBuf;

use rmcp::schemars::JsonSchema;
use serde::Deserialize;

use super::ToolResult;
use crate::scaffold::{self, Kind, ProjectOptions, RetraceSource};

/// Arguments of `new_project`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct NewProjectArgs {
    /// Package name: lowercase letters, digits, `_` and `-`, starting with a letter (e.g. `shop`).
    pub name: String,
    /// Directory to create (default: ./NAME). A relative path is relative to the MCP server's working directory; prefer an absolute path.
    pub dir: Option<String>,
    /// Depend on the retrace crates at this checkout of the retrace repository (default: the checkout this `retrace` was built from, else its version from crates.io). Not with retrace_version.
    pub retrace_path: Option<String>,
    /// Depend on this version of the retrace crates from crates.io instead (e.g. "0.1"). Not with retrace_path.
    pub retrace_version: Option<String>,
    /// Write into a directory that is not empty, replacing the scaffold's own files.
    #[serde(default)]
    pub force: bool,
}

/// Arguments of `new_workflow` and `new_activity`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct NewItemArgs {
    /// Name in snake_case: `order_payment` gives the type `OrderPayment`.
    pub name: String,
    /// The project's directory, or any directory inside it (default: the MCP server's working directory). Prefer an absolute path.
    pub project: Option<String>,
    /// Replace this item's files if they exist (registrations are added once).
    #[serde(default)]
    pub force: bool,
}

/// `new_project`: what the scaffold wrote, and what to do next.
pub fn new_project(args: NewProjectArgs) -> ToolResult {
    let retrace = match (args.retrace_path, args.retrace_version) {
        (Some(_), Some(_)) => {
            return Err("pass at most one of retrace_path and retrace_version".to_string());
        }
        (Some(path), None) => RetraceSource::Path(PathBuf::from(path)),
        (None, Some(version)) => RetraceSource::Version(version),
        (None, None) => RetraceSource::this_build(),
    };
    let dir = PathBuf::from(args.dir.unwrap_or_else(|| args.name.clone()));
    let options = ProjectOptions {
        name: args.name,
        dir,
        retrace,
        force: args.force,
    };
    let created = scaffold::new_project(&options).map_err(explain)?;
    let root = created.root.display().to_string();
    Ok(format!("{created}next: cd {root} && cargo test"))
}

/// `new_workflow` / `new_activity`: what the scaffold wrote or edited.
pub fn new_item(kind: Kind, args: NewItemArgs) -> ToolResult {
    let project = match args.project {
        Some(project) => PathBuf::from(project),
        None => std::env::current_dir()
            .map_err(|error| format!("cannot read the current directory: {error}"))?,
    };
    let created = scaffold::new_item(kind, &args.name, &project, args.force).map_err(explain)?;
    Ok(created.to_string())
}

/// The scaffold's error, its command-line flags named as this tool's arguments.
fn explain(error: anyhow::Error) -> String {
    [
        ("--force", "`force: true`"),
        ("--dir", "`dir`"),
        ("--retrace-path", "`retrace_path`"),
        ("--retrace-version", "`retrace_version`"),
    ]
    .iter()
    .fold(format!("{error:#}"), |text, (flag, argument)| {
        text.replace(flag, argument)
    })
}
