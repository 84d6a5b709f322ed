//! The simulation tools: a campaign of the `retrace-sim` binary, and the
//! report of a failing seed it wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use rmcp::schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ToolResult;

/// Seeds one `run_campaign` call may run.
pub const CAMPAIGN_SEEDS_MAX: u64 = 100_000;
/// Threads one campaign may use.
const CAMPAIGN_JOBS_MAX: u32 = 64;
/// Lines of `retrace-sim`'s stderr quoted when it fails.
const STDERR_LINES_QUOTED: usize = 20;
/// Bytes of a report returned at most.
const REPORT_BYTES_MAX: usize = 1_000_000;
/// History files listed under a report, at most.
const HISTORIES_LISTED_MAX: usize = 20;
/// The file `write_failure_dir` writes the report to.
const REPORT_FILE: &str = "report.txt";
/// How to get the simulator.
const HOW_TO_BUILD: &str = "build it in the retrace repository with `cargo build --release -p retrace-sim`, \
then set RETRACE_SIM=/path/to/retrace/target/release/retrace-sim in the MCP server's environment \
(or put retrace-sim next to the retrace binary, or on PATH)";

/// Arguments of `run_campaign`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct CampaignArgs {
    /// Scenario to run: small, transfers or messages (default: every bundled scenario, each over every seed).
    pub scenario: Option<String>,
    /// Seed range START..END, end excluded, at most 100000 seeds (e.g. "0..200").
    pub seeds: String,
    /// Threads running seeds at once (default: the machine's cores, at most 64).
    #[schemars(range(min = 1, max = 64))]
    pub jobs: Option<u32>,
}

/// Arguments of `read_failure_report`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
pub struct FailureReportArgs {
    /// A failure directory, as listed in run_campaign's failure_dirs (it holds report.txt).
    pub dir: String,
}

/// `START..END` (end excluded), non-empty and at most [`CAMPAIGN_SEEDS_MAX`] seeds.
pub fn parse_seeds(text: &str) -> Result<(u64, u64), String> {
    let bad = |why: &str| {
        format!("seeds {text:?}: {why}; pass START..END, end excluded, e.g. \"0..200\"")
    };
    let (start, end) = text.trim().split_once("..").ok_or_else(|| bad("no `..`"))?;
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| bad("not whole numbers"))
    };
    let (start, end) = (number(start)?, number(end)?);
    if start >= end {
        return Err(bad("the range is empty"));
    }
    if end - start > CAMPAIGN_SEEDS_MAX {
        return Err(format!(
            "seeds {text:?}: {} seeds, at most {CAMPAIGN_SEEDS_MAX} per call: split the range",
            end - start
        ));
    }
    Ok((start, end))
}

/// The `retrace-sim` binary: `RETRACE_SIM`, else next to this executable,
/// else on `PATH`.
fn find_simulator() -> Result<PathBuf, String> {
    let name = format!("retrace-sim{}", std::env::consts::EXE_SUFFIX);
    if let Some(path) = std::env::var_os("RETRACE_SIM") {
        let path = PathBuf::from(path);
        return match path.is_file() {
            true => Ok(path),
            false => Err(format!(
                "RETRACE_SIM={} is not a file: {HOW_TO_BUILD}",
                path.display()
            )),
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(&name)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(&name));
    beside
        .into_iter()
        .chain(on_path)
        .find(|path| path.is_file())
        .ok_or_else(|| format!("retrace-sim not found: {HOW_TO_BUILD}"))
}

/// A new, empty directory for a campaign's failures.
fn fresh_failures_dir() -> Result<PathBuf, String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let parent = std::env::temp_dir();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("retrace-campaign-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(format!("cannot create {}: {error}", dir.display())),
        }
    }
}

/// `run_campaign`: runs `retrace-sim` and returns its JSON summary and the
/// directory of each failing seed.
pub async fn run_campaign(args: CampaignArgs) -> ToolResult {
    let (start, end) = parse_seeds(&args.seeds)?;
    let jobs = match args.jobs {
        Some(jobs) if jobs == 0 || jobs > CAMPAIGN_JOBS_MAX => {
            return Err(format!(
                "jobs must be between 1 and {CAMPAIGN_JOBS_MAX}, not {jobs}"
            ));
        }
        Some(jobs) => jobs,
        None => default_jobs(),
    };
    if let Some(scenario) = &args.scenario
        && !scenario
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "scenario {scenario:?}: expected a name such as small, transfers or messages"
        ));
    }
    let simulator = find_simulator()?;
    let failures_dir = fresh_failures_dir()?;
    let mut command_line = vec![
        format!("--seeds={start}..{end}"),
        format!("--jobs={jobs}"),
        "--json".to_string(),
        "--keep-going".to_string(),
        format!("--failures-dir={}", failures_dir.display()),
    ];
    if let Some(scenario) = &args.scenario {
        command_line.push(format!("--scenario={scenario}"));
    }
    let output = run_simulator(&simulator, &command_line).await?;
    summarize(&simulator, &command_line, &output, &failures_dir)
}

fn default_jobs() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cores).unwrap_or(1).min(CAMPAIGN_JOBS_MAX)
}

/// Runs the simulator off the async runtime (it takes seconds to minutes).
async fn run_simulator(simulator: &Path, args: &[String]) -> Result<Output, String> {
    let mut command = Command::new(simulator);
    // stdin stays away from the MCP channel; stdout is captured, never inherited.
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = simulator.display().to_string();
    tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|error| format!("running {shown} failed: {error}"))?
        .map_err(|error| format!("cannot run {shown}: {error}"))
}

/// The campaign's JSON summary and failure directories, or why there is none.
fn summarize(
    simulator: &Path,
    args: &[String],
    output: &Output,
    failures_dir: &Path,
) -> ToolResult {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout.lines().rev().find_map(|line| {
        serde_json::from_str::<Value>(line.trim())
            .ok()
            .filter(Value::is_object)
    });
    let Some(summary) = summary else {
        let _ = std::fs::remove_dir_all(failures_dir);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(STDERR_LINES_QUOTED)..].join("\n");
        return Err(format!(
            "{} {} exited with {} and no JSON summary:\n{tail}",
            simulator.display(),
            args.join(" "),
            output.status
        ));
    };
    let failure_dirs = list_failure_dirs(failures_dir);
    if failure_dirs.is_empty() {
        let _ = std::fs::remove_dir_all(failures_dir);
    }
    let command = format!("{} {}", simulator.display(), args.join(" "));
    let answer = json!({"summary": summary, "failure_dirs": failure_dirs, "command": command});
    Ok(serde_json::to_string_pretty(&answer).expect("JSON values always encode"))
}

/// The subdirectories of `root` (one per failing seed), sorted.
fn list_failure_dirs(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.join(REPORT_FILE).is_file())
        .map(|path| path.display().to_string())
        .collect();
    dirs.sort();
    dirs
}

/// `read_failure_report`: the report, and what else the directory holds.
pub fn read_failure_report(args: FailureReportArgs) -> ToolResult {
    let dir = PathBuf::from(&args.dir);
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let path = dir.join(REPORT_FILE);
    if !path.is_file() {
        return Err(format!(
            "{} has no {REPORT_FILE}: not a failure directory (run_campaign lists them in failure_dirs; \
             each holds {REPORT_FILE}, seed.json, faults.json and histories/)",
            dir.display()
        ));
    }
    let mut report = std::fs::read_to_string(&path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    if report.len() > REPORT_BYTES_MAX {
        let mut cut = REPORT_BYTES_MAX;
        while !report.is_char_boundary(cut) {
            cut -= 1;
        }
        report.truncate(cut);
        report.push_str("\n[report truncated]\n");
    }
    Ok(format!("{report}\n{}", describe_dir(&dir)))
}

/// The failure directory's other files.
fn describe_dir(dir: &Path) -> String {
    let mut text = format!("files in {}:\n", dir.display());
    for name in ["seed.json", "faults.json"] {
        if dir.join(name).is_file() {
            text.push_str(&format!("  {name}\n"));
        }
    }
    let mut histories: Vec<String> = std::fs::read_dir(dir.join("histories"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    histories.sort();
    text.push_str(&format!(
        "  histories/: {} run histories, canonical JSON (`retrace history check FILE` reads one)\n",
        histories.len()
    ));
    for name in histories.iter().take(HISTORIES_LISTED_MAX) {
        text.push_str(&format!("    {name}\n"));
    }
    if histories.len() > HISTORIES_LISTED_MAX {
        text.push_str("    ...\n");
    }
    text
}
