//! Campaigns give the same figures whatever the number of jobs; every seed
//! ends with a verdict within its budget; a failure shows the faults that
//! touched it, shrinks the background faults it does not need, and is written
//! to a directory other tools can read.

use std::time::Duration;

use retrace::client::StartOptions;
use retrace::history::History;
use retrace::workflow::{WorkflowContext, WorkflowRegistry};
use retrace_sim::campaign::{Campaign, CampaignOptions};
use retrace_sim::{Simulation, workloads};
use serde_json::json;

fn campaign(jobs: usize) -> retrace_sim::campaign::CampaignSummary {
    let runners = workloads::all()
        .into_iter()
        .map(|s| s.into_runner())
        .collect();
    let options = CampaignOptions {
        seeds: 0..24,
        jobs,
        keep_going: true,
        ..CampaignOptions::default()
    };
    Campaign::new(runners, options).run(|_| {})
}

#[test]
fn a_campaign_gives_the_same_figures_with_one_job_and_twice_with_two() {
    let one = campaign(1);
    assert_eq!(one.seeds, 24 * workloads::all().len() as u64);
    assert!(one.sim_ms > 0 && one.steps > 0 && !one.faults.is_empty());
    for _ in 0..2 {
        let two = campaign(2);
        assert_eq!(
            two.figures(),
            one.figures(),
            "jobs 2:\n{two}\njobs 1:\n{one}"
        );
    }
}

/// What a seed leaves that must not depend on what ran before it.
fn fingerprint(result: &retrace_sim::SeedResult) -> (u64, u64, u64, Vec<String>) {
    let histories = result
        .histories
        .values()
        .map(|h| format!("{h:?}"))
        .collect();
    (result.trace_hash, result.sim_ms, result.steps, histories)
}

#[test]
fn a_seed_runs_the_same_alone_as_after_other_seeds_on_the_same_thread() {
    for simulation in workloads::all() {
        let runner = simulation.into_runner();
        let after_others: Vec<_> = (0..6)
            .map(|seed| fingerprint(&runner.run_seed(seed)))
            .collect();
        for seed in [5, 2] {
            let alone = std::thread::scope(|scope| {
                // A new caller thread gets a new seed thread: nothing ran on it before.
                scope
                    .spawn(|| fingerprint(&runner.run_seed(seed)))
                    .join()
                    .expect("joined")
            });
            assert_eq!(alone, after_others[seed as usize], "seed {seed}");
        }
    }
}

/// A workflow whose history grows without end: a 10 ms timer, forever.
fn endless() -> Simulation {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("endless", |ctx: WorkflowContext, _: ()| async move {
        loop {
            ctx.sleep(Duration::from_millis(10)).await?;
        }
        #[allow(unreachable_code)]
        Ok(())
    });
    Simulation::new("endless")
        .workflows(registry)
        .safety_ms(30_000)
        .steps_max(4_000)
        .scenario(|client| async move {
            client
                .start_by_name(StartOptions::new("endless", "sim"), "endless", json!(null))
                .await?;
            Ok(())
        })
}

#[test]
fn a_history_that_grows_without_end_stops_the_seed_at_its_step_budget_with_a_verdict() {
    let result = endless().into_runner().run_seed(3);
    let violation = &result.violations[0];
    assert_eq!(violation.invariant, "budget", "{:?}", result.violations);
    assert!(
        violation.message.contains("seed did not finish")
            && violation.message.contains("passed its budget of 4000")
            && violation.message.contains("(workflow endless)")
            && violation.message.contains(" events; "),
        "{}",
        violation.message
    );
    assert!(
        result.sim_ms < 30_000 + 600_000 / 2,
        "stopped long before the liveness phase ended: {} ms",
        result.sim_ms
    );
    assert!(result.steps > 4_000 && result.steps < 4_000 + 1_000);
}

#[test]
fn code_that_spins_at_one_simulated_instant_stops_at_the_step_budget_with_a_verdict() {
    // A clock wait for a moment already past ends at once, without time
    // moving: the shape of a timer refused and re-armed at its own deadline.
    // Before clock waits counted as steps, such a seed never ended.
    let result = Simulation::new("spin")
        .steps_max(10_000)
        .scenario(|client| async move {
            loop {
                client.sleep_ms(0).await;
            }
        })
        .into_runner()
        .run_seed(5);
    let violation = &result.violations[0];
    assert_eq!(violation.invariant, "budget", "{:?}", result.violations);
    assert!(
        violation.message.contains("seed did not finish")
            && violation.message.contains("clock waits and spawns"),
        "{}",
        violation.message
    );
}

#[test]
fn a_history_longer_than_its_event_budget_is_a_violation_even_when_the_seed_finishes() {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("sleepy", |ctx: WorkflowContext, _: ()| async move {
        for _ in 0..40 {
            ctx.sleep(Duration::from_millis(10)).await?;
        }
        Ok(())
    });
    let result = Simulation::new("sleepy")
        .workflows(registry)
        .safety_ms(2_000)
        .history_events_max(100)
        .scenario(|client| async move {
            client
                .start_by_name(StartOptions::new("sleepy", "sim"), "sleepy", json!(null))
                .await?;
            Ok(())
        })
        .swarm(|swarm| *swarm = retrace_sim::Swarm::calm())
        .faults_max(0)
        .into_runner()
        .run_seed(1);
    let budget: Vec<_> = result
        .violations
        .iter()
        .filter(|v| v.invariant == "budget")
        .collect();
    assert_eq!(budget.len(), 1, "{:?}", result.violations);
    assert!(budget[0].message.contains("passed its budget of 100"));
    assert_eq!(budget[0].workflow_id.as_deref(), Some("sleepy"));
}

/// A planted failure that needs lost messages and nothing else: the check
/// fails whenever the network lost a message.
fn needs_loss() -> Simulation {
    let mut registry = WorkflowRegistry::new();
    registry.register_fn("pinger", |ctx: WorkflowContext, _: ()| async move {
        for _ in 0..5 {
            ctx.sleep(Duration::from_millis(500)).await?;
        }
        Ok(())
    });
    Simulation::new("needs_loss")
        .workflows(registry)
        .safety_ms(5_000)
        .faults_max(3)
        .scenario(|client| async move {
            client
                .start_by_name(StartOptions::new("pinger", "sim"), "pinger", json!(null))
                .await?;
            Ok(())
        })
        .check(|finished| match finished.faults.get("net:loss") {
            Some(lost) => Err(format!("planted failure: {lost} messages lost")),
            None => Ok(()),
        })
}

#[test]
fn a_failure_report_lists_its_faults_and_keeps_only_the_background_faults_it_needs() {
    let runner = needs_loss().into_runner();
    let swarm_has_more = |seed: u64| {
        let swarm = retrace_sim::Swarm::from_seed(seed);
        swarm.loss_rate > 0.0 && swarm.duplicate_rate > 0.0 && swarm.buggify
    };
    let (seed, report) = (0..200)
        .filter(|&seed| swarm_has_more(seed))
        .find_map(|seed| runner.check_seed(seed).err().map(|r| (seed, r)))
        .expect("a seed with loss, duplication and BUGGIFY loses a message");
    let needed: Vec<&str> = report
        .background
        .iter()
        .filter(|(_, needed)| *needed)
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(needed, ["message loss"], "{report}");
    let swarm = &report.result.swarm;
    assert!(swarm.loss_rate > 0.0 && swarm.duplicate_rate == 0.0 && !swarm.buggify);
    let text = report.to_string();
    assert!(
        text.contains("needed: message loss") && text.contains("net:loss"),
        "the report shows the lost messages:\n{text}"
    );
    let lost = report.result.faults["net:loss"];
    let traced = report
        .result
        .fault_events
        .iter()
        .filter(|e| e.kind == "net:loss")
        .count() as u64;
    assert_eq!(traced, lost, "every lost message is in the fault trace");

    let root = tempfile::tempdir().expect("temp dir");
    let dir = retrace_sim::write_failure_dir(root.path(), &report).expect("written");
    assert_eq!(dir, root.path().join(format!("needs_loss-{seed}")));
    let seed_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("seed.json")).unwrap()).unwrap();
    assert_eq!(seed_json["seed"], seed);
    assert_eq!(seed_json["violations"][0]["invariant"], "scenario check");
    let faults: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("faults.json")).unwrap()).unwrap();
    assert_eq!(faults["events"].as_array().unwrap().len() as u64, traced);
    let histories: Vec<_> = std::fs::read_dir(dir.join("histories")).unwrap().collect();
    assert!(!histories.is_empty(), "the failing seed's runs are written");
    assert_eq!(histories.len(), report.result.histories.len());
    for entry in histories {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        History::from_json(&text).expect("a written history reads back");
    }
    assert!(std::fs::read_to_string(dir.join("report.txt")).unwrap() == text);
    let page =
        std::fs::read_to_string(dir.join(retrace_sim::FAILURE_PAGE)).expect("a failure page");
    assert!(
        page.contains("<svg class=\"timeline\""),
        "the page draws the timeline"
    );
    let lost_marks = page.matches("net:loss").count() as u64;
    assert!(
        lost_marks >= traced.min(1),
        "the lost messages are marked on the network lane"
    );
    assert!(page.contains("faults: network"), "a network fault lane");
    assert!(
        page.contains("scenario check"),
        "the broken invariant is named"
    );
    assert!(
        page.contains(&retrace::ui::html::escape(&report.repro)),
        "the reproduction line"
    );
    assert!(
        !page.contains("<script"),
        "the page is self-contained and runs no script"
    );
    let linked = report
        .result
        .histories
        .keys()
        .filter(|run_id| page.contains(&format!("href=\"histories/{run_id}.json\"")))
        .count();
    assert!(
        linked >= 1,
        "the page links its runs' history files beside it"
    );
    for history in report.result.histories.values().take(1) {
        let events = history
            .events()
            .iter()
            .filter(|e| page.contains(&format!("id=\"r0-e{}\"", e.event_id)));
        assert_eq!(
            events.count(),
            history.len(),
            "every event of the first run has its row"
        );
    }
    if let Some(dir) = std::env::var_os("RETRACE_UI_SCREENSHOTS") {
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(dir)
            .join("failure.html");
        std::fs::write(target, &page).unwrap();
    }
}
