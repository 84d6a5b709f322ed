//! A failing seed written to a directory other tools can read:
//!
//! | file                     | what                                                        |
//! |--------------------------|-------------------------------------------------------------|
//! | `report.txt`             | the report as printed                                       |
//! | `seed.json`              | scenario, seed, swarm, plan, violations, reproduction line, trace hash |
//! | `faults.json`            | the fault trace: every fault injected, with its simulated time |
//! | `histories/RUN_ID.json`  | each run's history, canonical JSON (`retrace history check` reads it) |
//! | `failure.html`           | the failure as one self-contained page: timelines with the faults drawn on them |

use std::path::{Path, PathBuf};

use serde_json::json;

use super::Report;

/// The failure page's file name in a failure directory.
pub const FAILURE_PAGE: &str = "failure.html";
/// Histories a failure directory holds, at most.
pub const FAILURE_DIR_HISTORIES_MAX: usize = 1_000;

/// Writes `report` to `root/SCENARIO-SEED/` and returns that directory.
pub fn write_failure_dir(root: &Path, report: &Report) -> std::io::Result<PathBuf> {
    let result = &report.result;
    let dir = root.join(format!("{}-{}", report.scenario, result.seed));
    std::fs::create_dir_all(dir.join("histories"))?;
    std::fs::write(dir.join("report.txt"), report.to_string())?;
    let violations: Vec<_> = result
        .violations
        .iter()
        .map(|v| {
            json!({"invariant": v.invariant, "message": v.message, "run_id": v.run_id,
                   "workflow_id": v.workflow_id, "event_id": v.event_id})
        })
        .collect();
    let seed = json!({
        "scenario": report.scenario, "seed": result.seed, "swarm": result.swarm.to_string(),
        "swarm_as_drawn": report.original_swarm.to_string(),
        "plan": result.plan.in_time_order().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "original_faults": report.original_faults,
        "background": report.background.iter().map(|(k, needed)| json!({"fault": k, "needed": needed})).collect::<Vec<_>>(),
        "violations": violations, "reproduce": report.repro,
        "trace_hash": format!("{:016x}", result.trace_hash), "sim_ms": result.sim_ms, "steps": result.steps,
        "fault_counts": result.faults,
    });
    write_json(&dir.join("seed.json"), &seed)?;
    let faults = json!({
        "events": result.fault_events.iter().map(|e| e.to_json()).collect::<Vec<_>>(),
        "not_kept": result.fault_events_dropped,
    });
    write_json(&dir.join("faults.json"), &faults)?;
    std::fs::write(
        dir.join(FAILURE_PAGE),
        super::failure_page::failure_page(report),
    )?;
    for (run_id, history) in result.histories.iter().take(FAILURE_DIR_HISTORIES_MAX) {
        let name = run_id.replace(['/', '\\'], "_");
        std::fs::write(
            dir.join("histories").join(format!("{name}.json")),
            history.to_json(),
        )?;
    }
    Ok(dir)
}

fn write_json(path: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(path, text)
}
