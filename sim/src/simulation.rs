//! `Simulation`: the user's entry point. Describe workflows, activities,
//! simulated services, a scenario and a seed range; `run()` simulates every
//! seed and panics with a reproducible report at the first broken invariant.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use retrace::activity::Activity;
use retrace::api::RunOutcome;
use retrace::client::Client;
use retrace::env::{BoxFuture, Env, RunRecord, RunStatus, Storage};
use retrace::history::History;
use retrace::worker::WorkerOptions;
use retrace::workflow::{Replayer, Workflow, WorkflowRegistry};

use crate::checks::{self as check, Violation};
use crate::faults::swarm::{KNOBS, Swarm};
use crate::faults::{FaultPlan, Topology, plan_strategy, plan_tree};
use crate::nodes::CLIENT;
use crate::report::{Report, SeedResult, repro_line};
use crate::world::cluster::{Cluster, NodeCtx, NodeSpec, Speculations, Upgrade};
use crate::world::services::{EffectLedger, ServiceHost, ServiceState, SimService};
use crate::world::{FaultCounts, World};

type ServiceFactory = Arc<dyn Fn(&ServiceHost, &str) + Send + Sync>;
type ScenarioFn = Arc<dyn Fn(SimClient) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;
type CheckFn = Arc<dyn Fn(&Finished) -> Result<(), String> + Send + Sync>;
type SwarmFn = Arc<dyn Fn(&mut Swarm) + Send + Sync>;

/// Attempts of a scenario client's call (the service may be down for seconds).
pub const SCENARIO_CALL_ATTEMPTS_MAX: u32 = 40;
/// Steps (messages sent and storage writes) a seed may take by default.
pub const STEPS_MAX_DEFAULT: u64 = 200_000;
/// Events a run's history may hold at the end of a seed, by default.
pub const HISTORY_EVENTS_MAX_DEFAULT: u64 = 5_000;
/// Most re-runs spent shrinking a failing fault plan.
pub const SHRINK_RUNS_MAX: usize = 300;

/// What a run set up, shared by its nodes.
pub struct Setup {
    pub name: String,
    /// What runs on the service and worker nodes.
    pub nodes: Arc<NodeSpec>,
    pub services: Vec<(String, ServiceFactory)>,
    pub scenario: Option<ScenarioFn>,
    pub checks: Vec<CheckFn>,
    pub safety_ms: u64,
    pub liveness_ms_max: u64,
    pub faults_max: Option<usize>,
    pub swarm: Option<SwarmFn>,
    /// Steps (messages and storage writes) a seed may take.
    pub steps_max: u64,
    /// Events a history may hold at the end of a seed.
    pub history_events_max: u64,
    /// The outcomes the scenario expects (`None`: completed or canceled).
    pub expected_outcomes: Option<check::outcomes::ExpectedOutcomes>,
    /// Workflow types the scenario drives by hand (no code: not replayed).
    pub raw_workflow_types: BTreeSet<String>,
    /// A planted bug, for the simulator's own tests: the storage of a
    /// cluster does not fence writes.
    pub plant_no_fencing: bool,
    /// Every seed runs on a cluster of service nodes.
    pub cluster: bool,
}

/// The scenario's client: the engine's `Client` on the client node, retrying
/// long enough to outlast a service crash, plus the node's clock.
#[derive(Clone)]
pub struct SimClient {
    client: Client,
    env: Env,
}

impl std::ops::Deref for SimClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl SimClient {
    /// Sleeps on the client node's clock.
    pub async fn sleep_ms(&self, duration_ms: u64) {
        self.env.sleep_ms(duration_ms).await;
    }

    /// The client node's environment.
    pub fn env(&self) -> &Env {
        &self.env
    }
}

/// What the run left behind, for user checks.
pub struct Finished {
    /// Every run's history, by run id.
    pub histories: BTreeMap<String, History>,
    /// How each workflow id's latest run closed.
    pub outcomes: BTreeMap<String, RunOutcome>,
    /// Effects applied and acknowledged.
    pub ledger: EffectLedger,
    /// Faults injected, by kind.
    pub faults: FaultCounts,
    /// At most how far apart two service nodes' clocks read during the run
    /// (0 with one service): in a cluster, events of different runs are
    /// stamped by different members.
    pub service_clock_spread_ms: u64,
    services: BTreeMap<String, ServiceState>,
}

impl Finished {
    /// Simulated service `name` as it was left, to check its state (a
    /// bank's balances, a store's keys); `None` if there is no service of
    /// that name and type.
    ///
    /// ```no_run
    /// # use retrace_sim::{Accounts, Finished};
    /// # fn check(finished: &Finished) -> Result<(), String> {
    /// let bank = finished.service::<Accounts>("bank").ok_or("no bank")?;
    /// let total: i64 = bank.balances().values().sum();
    /// if total != 1_000 { return Err(format!("money appeared or vanished: {total}")); }
    /// # Ok(()) }
    /// ```
    pub fn service<S: SimService>(&self, name: &str) -> Option<&S> {
        self.services.get(name)?.downcast_ref::<S>()
    }
}

/// A simulation test: workflows, activities, services, a scenario, seeds.
pub struct Simulation {
    setup: Setup,
    seeds: Range<u64>,
}

impl Simulation {
    /// A simulation named `name` (the name appears in reports).
    pub fn new(name: &str) -> Simulation {
        Simulation {
            setup: Setup {
                name: name.to_string(),
                nodes: Arc::new(NodeSpec::default()),
                services: Vec::new(),
                scenario: None,
                checks: Vec::new(),
                safety_ms: 30_000,
                liveness_ms_max: 600_000,
                faults_max: None,
                swarm: None,
                steps_max: STEPS_MAX_DEFAULT,
                history_events_max: HISTORY_EVENTS_MAX_DEFAULT,
                expected_outcomes: None,
                raw_workflow_types: BTreeSet::new(),
                plant_no_fencing: false,
                cluster: false,
            },
            seeds: 0..100,
        }
    }

    /// Registers workflow type `W` on every worker.
    pub fn workflow<W: Workflow>(mut self) -> Self {
        Arc::make_mut(&mut self.setup.nodes)
            .registry
            .register::<W>();
        self
    }

    /// Declares workflow type `name` raw: the scenario runs it by hand over
    /// the wire protocol, without workflow code, so its histories are checked
    /// like any other but not replayed.
    pub fn raw_workflow_type(mut self, name: &str) -> Self {
        self.setup.raw_workflow_types.insert(name.to_string());
        self
    }

    /// Registers every workflow of `registry`.
    pub fn workflows(mut self, registry: WorkflowRegistry) -> Self {
        Arc::make_mut(&mut self.setup.nodes).registry = registry;
        self
    }

    /// Registers activity `A`, built on each worker node by `factory` (which
    /// can connect to simulated services from that node).
    pub fn activity<A: Activity>(
        mut self,
        factory: impl Fn(&NodeCtx) -> A + Send + Sync + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.setup.nodes)
            .activities
            .push(Arc::new(move |ctx, builder| builder.activity(factory(ctx))));
        self
    }

    /// Adds simulated external service `name` (fresh for every seed).
    pub fn service<S: SimService>(
        mut self,
        name: &str,
        factory: impl Fn() -> S + Send + Sync + 'static,
    ) -> Self {
        let factory: ServiceFactory =
            Arc::new(move |host, name| host.add(name, Arc::new(factory())));
        self.setup.services.push((name.to_string(), factory));
        self
    }

    /// Redeploys every worker with `registry` (new workflow code) at
    /// `at_ms` of simulated time: running workflows then continue on the new
    /// code, so a change made without `ctx.patched(..)` shows as
    /// non-determinism. Histories are replayed against the newest code.
    pub fn upgrade_at(mut self, at_ms: u64, registry: WorkflowRegistry) -> Self {
        let nodes = Arc::make_mut(&mut self.setup.nodes);
        assert!(
            nodes.upgrades.last().is_none_or(|u| u.at_ms < at_ms),
            "upgrades come in time order"
        );
        nodes.upgrades.push(Upgrade { at_ms, registry });
        self
    }

    /// Number of worker nodes (default 2).
    pub fn workers(mut self, workers: usize) -> Self {
        assert!(workers >= 1, "a simulation needs at least one worker");
        Arc::make_mut(&mut self.setup.nodes).workers = workers;
        self
    }

    /// Sets the task queue (default `sim`).
    pub fn task_queue(mut self, task_queue: &str) -> Self {
        Arc::make_mut(&mut self.setup.nodes).task_queue = task_queue.to_string();
        self
    }

    /// Adjusts each worker's options.
    pub fn worker_options(
        mut self,
        f: impl Fn(&mut WorkerOptions) + Send + Sync + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.setup.nodes).worker_options = Arc::new(f);
        self
    }

    /// Adjusts the service's configuration (its history limits, ...).
    pub fn service_config(mut self, f: impl FnOnce(&mut retrace::engine::ServiceConfig)) -> Self {
        f(&mut Arc::make_mut(&mut self.setup.nodes).service_config);
        self
    }

    /// The scenario: what the client does (start runs, send signals). It runs
    /// on the client node while faults happen.
    pub fn scenario<F, Fut>(mut self, scenario: F) -> Self
    where
        F: Fn(SimClient) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.setup.scenario = Some(Arc::new(move |client| Box::pin(scenario(client))));
        self
    }

    /// A check of the scenario's own expectations, run after every seed.
    pub fn check(
        mut self,
        check: impl Fn(&Finished) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.setup.checks.push(Arc::new(check));
        self
    }

    /// Declares the outcomes the scenario expects: a run whose outcome
    /// `expected(workflow_id, outcome)` refuses is a violation. Without it,
    /// a run that fails, times out or is terminated is one.
    pub fn expect_outcomes(
        mut self,
        expected: impl Fn(&str, &RunOutcome) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.setup.expected_outcomes = Some(Arc::new(expected));
        self
    }

    /// The seeds to run (`RETRACE_SEED=n` runs only seed `n`).
    pub fn seeds(mut self, seeds: Range<u64>) -> Self {
        self.seeds = seeds;
        self
    }

    /// Length of the safety phase, where faults happen (default 30 s).
    pub fn safety_ms(mut self, safety_ms: u64) -> Self {
        self.setup.safety_ms = safety_ms;
        self
    }

    /// How long runs may take to close once faults heal (default 600 s).
    pub fn liveness_ms_max(mut self, liveness_ms_max: u64) -> Self {
        self.setup.liveness_ms_max = liveness_ms_max;
        self
    }

    /// Fixes the number of faults a plan may hold (instead of the swarm's).
    pub fn faults_max(mut self, faults_max: usize) -> Self {
        self.setup.faults_max = Some(faults_max);
        self
    }

    /// The step budget of a seed: messages sent plus storage writes (default
    /// 200,000). A seed over it stops with a "budget" violation that lists
    /// every run's history size and what it still waits for.
    pub fn steps_max(mut self, steps_max: u64) -> Self {
        assert!(steps_max > 0, "a seed needs steps");
        self.setup.steps_max = steps_max;
        self
    }

    /// Events a history may hold when the seed ends (default 5,000).
    pub fn history_events_max(mut self, events_max: u64) -> Self {
        assert!(events_max > 0, "a history has events");
        self.setup.history_events_max = events_max;
        self
    }

    /// Adjusts every seed's swarm options.
    pub fn swarm(mut self, f: impl Fn(&mut Swarm) + Send + Sync + 'static) -> Self {
        self.setup.swarm = Some(Arc::new(f));
        self
    }

    /// Runs every seed on a cluster of 2 to 5 service nodes (drawn from the
    /// seed) over one sharded storage, with the faults only a cluster has:
    /// a service node crashed, paused past its leases, cut off from storage.
    pub fn cluster(mut self) -> Self {
        self.setup.cluster = true;
        let adjust = self.setup.swarm.clone();
        self.swarm(move |swarm| {
            if let Some(adjust) = &adjust {
                adjust(swarm);
            }
            swarm.services = 2 + (swarm.clock_salt % 4) as usize;
        })
    }

    /// Plants a bug to prove the checks catch it: the cluster's storage
    /// accepts writes without checking their fence.
    pub fn plant_storage_without_fencing(mut self) -> Self {
        self.setup.plant_no_fencing = true;
        self
    }

    /// The scenario's name.
    pub fn name(&self) -> &str {
        &self.setup.name
    }

    /// True if every seed runs on a cluster (see [`Simulation::cluster`]).
    pub fn is_cluster(&self) -> bool {
        self.setup.cluster
    }

    /// The seeds to run, honouring `RETRACE_SEED` and `RETRACE_SEEDS`.
    pub fn effective_seeds(&self) -> Range<u64> {
        if let Some(seed) = std::env::var("RETRACE_SEED")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            return seed..seed + 1;
        }
        if let Some((a, b)) = std::env::var("RETRACE_SEEDS")
            .ok()
            .and_then(|s| parse_range(&s))
        {
            return a..b;
        }
        self.seeds.clone()
    }

    /// Runs every seed; panics with the report of the first failure (its
    /// fault plan shrunk). Returns the number of seeds run.
    /// `RETRACE_FAILURES_DIR=DIR` also writes the failing seed to
    /// `DIR/SCENARIO-SEED/` (report, fault trace, histories as JSON).
    pub fn run(self) -> u64 {
        crate::init_logging();
        let seeds = self.effective_seeds();
        let count = seeds.end - seeds.start;
        let setup = Arc::new(self.setup);
        for seed in seeds {
            if let Err(report) = run_and_shrink(&setup, seed) {
                let written = std::env::var_os("RETRACE_FAILURES_DIR").map(|root| {
                    match crate::report::write_failure_dir(std::path::Path::new(&root), &report) {
                        Ok(dir) => format!(
                            "written to {}\nfailure page: {}\n",
                            dir.display(),
                            dir.join(crate::report::FAILURE_PAGE).display()
                        ),
                        Err(e) => format!("could not write the failure directory: {e}\n"),
                    }
                });
                panic!("{report}{}", written.unwrap_or_default());
            }
        }
        count
    }

    /// Freezes the setup for repeated runs (the campaign runner).
    pub fn into_runner(self) -> SeedRunner {
        SeedRunner {
            setup: Arc::new(self.setup),
        }
    }
}

/// Runs seeds of one simulation.
#[derive(Clone)]
pub struct SeedRunner {
    setup: Arc<Setup>,
}

impl SeedRunner {
    /// The scenario's name.
    pub fn name(&self) -> &str {
        &self.setup.name
    }

    /// The fault plan `seed` generates (before any shrinking).
    pub fn plan(&self, seed: u64) -> FaultPlan {
        let (_, strategy) = plan_setup(&self.setup, seed);
        plan_tree(seed, &strategy).current()
    }

    /// Runs `seed` with the plan the seed generates.
    pub fn run_seed(&self, seed: u64) -> SeedResult {
        let (swarm, strategy) = plan_setup(&self.setup, seed);
        let plan = plan_tree(seed, &strategy).current();
        run_seed(&self.setup, seed, swarm, plan)
    }

    /// Runs `seed`; on failure shrinks its plan and returns the report.
    pub fn check_seed(&self, seed: u64) -> Result<SeedResult, Box<Report>> {
        run_and_shrink(&self.setup, seed)
    }

    /// Runs `seed` twice and checks both runs left the same trace.
    pub fn check_determinism(&self, seed: u64) -> Result<u64, String> {
        let first = self.run_seed(seed);
        let second = self.run_seed(seed);
        if first.trace_hash != second.trace_hash || first.histories != second.histories {
            return Err(format!(
                "seed {seed} is not deterministic: trace {:016x} then {:016x}",
                first.trace_hash, second.trace_hash
            ));
        }
        Ok(first.trace_hash)
    }
}

fn parse_range(text: &str) -> Option<(u64, u64)> {
    let (a, b) = text.trim().split_once("..")?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a < b).then_some((a, b))
}

fn plan_setup(setup: &Setup, seed: u64) -> (Swarm, proptest::strategy::BoxedStrategy<FaultPlan>) {
    let mut swarm = Swarm::from_seed(seed);
    if let Some(adjust) = &setup.swarm {
        adjust(&mut swarm);
    }
    let topology = Topology {
        workers: setup.nodes.workers,
        externals: setup
            .services
            .iter()
            .map(|(name, _)| name.clone())
            .collect(),
        safety_ms: setup.safety_ms,
        services: swarm.services,
    };
    let faults_max = setup.faults_max.unwrap_or(swarm.faults_max);
    let strategy = plan_strategy(&topology, &swarm, faults_max);
    (swarm, strategy)
}

/// Runs `seed`; if it fails, shrinks the plan while the failure persists,
/// then turns off each background fault of the swarm that the failure does not
/// need (message loss, duplication, BUGGIFY, storage faults, clock skew).
fn run_and_shrink(setup: &Arc<Setup>, seed: u64) -> Result<SeedResult, Box<Report>> {
    let (swarm, strategy) = plan_setup(setup, seed);
    let mut tree = plan_tree(seed, &strategy);
    let original = tree.current();
    let first = run_seed(setup, seed, swarm.clone(), original.clone());
    if first.passed() {
        return Ok(first);
    }
    let mut best = first;
    let mut runs = 1;
    while runs < SHRINK_RUNS_MAX && tree.simplify() {
        runs += 1;
        let candidate = run_seed(setup, seed, swarm.clone(), tree.current());
        if candidate.passed() {
            if !tree.complicate() {
                break;
            }
        } else {
            best = candidate;
        }
    }
    let mut background = Vec::new();
    for knob in &KNOBS {
        if !(knob.is_on)(&best.swarm) || runs >= SHRINK_RUNS_MAX {
            continue;
        }
        runs += 1;
        let mut calmer = best.swarm.clone();
        (knob.turn_off)(&mut calmer);
        let candidate = run_seed(setup, seed, calmer, best.plan.clone());
        let needed = candidate.passed();
        background.push((knob.name, needed));
        if !needed {
            best = candidate;
        }
    }
    assert!(!best.passed(), "shrinking keeps a failing run");
    let repro = repro_line(&setup.name, seed);
    Err(Box::new(Report {
        scenario: setup.name.clone(),
        original_faults: original.faults.len(),
        original_swarm: swarm,
        background,
        shrink_runs: runs,
        result: best,
        repro,
    }))
}

/// One seed, one plan: a fresh madsim runtime and a fresh world, on the
/// caller's seed thread (`crate::seed_thread`: a large stack, kept from seed
/// to seed, retired after a panic).
pub fn run_seed(setup: &Arc<Setup>, seed: u64, swarm: Swarm, plan: FaultPlan) -> SeedResult {
    let (setup, fallback) = (setup.clone(), (swarm.clone(), plan.clone()));
    crate::seed_thread::run(move || run_seed_here(&setup, seed, swarm, plan)).unwrap_or_else(|| {
        panicked(
            seed,
            fallback.0,
            fallback.1,
            "the seed's thread failed".into(),
        )
    })
}

/// Runs the seed here; says whether this thread may run more seeds (not after
/// a panic, in the run or in tearing it down).
fn run_seed_here(
    setup: &Arc<Setup>,
    seed: u64,
    swarm: Swarm,
    plan: FaultPlan,
) -> (SeedResult, bool) {
    let worlds_before = crate::world::worlds_live();
    let (fallback_swarm, fallback_plan) = (swarm.clone(), plan.clone());
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let runtime =
            madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        let simulation = simulate(setup.clone(), seed, swarm.clone(), plan.clone());
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(simulation)));
        // Dropping the runtime drops every task left: inside the outer catch,
        // so a panic there (a poisoned lock after a caught one) ends this
        // seed, not the campaign.
        drop(runtime);
        ran
    }));
    let (result, keep) = match ran {
        Ok(Ok(result)) => (result, true),
        Ok(Err(panic)) | Err(panic) => {
            let message = panic_message(panic.as_ref());
            (
                panicked(seed, fallback_swarm, fallback_plan, message),
                false,
            )
        }
    };
    crate::world::count_leaked_worlds(worlds_before);
    (result, keep)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a task panicked".to_string())
}

fn panicked(seed: u64, swarm: Swarm, plan: FaultPlan, message: String) -> SeedResult {
    SeedResult {
        seed,
        swarm,
        plan,
        violations: vec![Violation::new("no panic", message)],
        trace_hash: 0,
        faults: FaultCounts::new(),
        sim_ms: 0,
        histories: BTreeMap::new(),
        buggify_sites: BTreeMap::new(),
        speculations: Speculations::default(),
        fault_events: Vec::new(),
        fault_events_dropped: 0,
        run_windows_ms: BTreeMap::new(),
        steps: 0,
    }
}

async fn simulate(setup: Arc<Setup>, seed: u64, swarm: Swarm, plan: FaultPlan) -> SeedResult {
    let world = World::new(seed, swarm.clone());
    world.set_steps_max(setup.steps_max);
    world.storage.set_faults(world.swarm_storage_faults(), true);
    if setup.plant_no_fencing {
        world.storage.plant_no_fencing();
    }
    for (name, factory) in &setup.services {
        factory(&world.services, name);
    }
    let cluster = Cluster::start(world.clone(), setup.nodes.clone());
    let scenario = start_scenario(&setup, &world, &cluster);
    cluster.start_injecting(plan.clone());
    cluster.start_upgrades(&setup.nodes.upgrades);
    let (mut violations, histories) = match run_phases(&setup, &world, &cluster, &scenario).await {
        Ok(()) => {
            let mut violations = scenario.violations();
            let (checked, histories) = check_run(&setup, &cluster, &swarm, &plan).await;
            violations.extend(checked);
            (violations, histories)
        }
        Err(over_budget) => (vec![over_budget], histories_of(&world).await),
    };
    violations.extend(check_budget_left(&setup, &histories));
    for history in histories.values() {
        world.trace_history(history);
    }
    let (trace_hash, _) = world.trace_hash();
    let speculations = *crate::world::lock(&cluster.observed.speculations);
    let (fault_events, fault_events_dropped) = world.fault_events();
    cluster.shut_down();
    SeedResult {
        seed,
        swarm,
        plan,
        violations,
        trace_hash,
        faults: world.fault_counts(),
        sim_ms: world.elapsed_ms(),
        buggify_sites: world.buggify_sites(),
        speculations,
        fault_events,
        fault_events_dropped,
        run_windows_ms: run_windows_ms(&world, &histories),
        steps: world.steps(),
        histories,
    }
}

/// How often the supervisor checks the budget and whether every run closed.
const TICK_MS: u64 = 250;

/// The safety phase (faults on), then the liveness phase (faults healed) until
/// every run closed and the scenario finished, or the liveness time is up.
/// Stops early, with a violation, once the seed is over its step budget: a bug
/// that makes a history grow without end gets a verdict, not a hung campaign.
async fn run_phases(
    setup: &Setup,
    world: &World,
    cluster: &Cluster,
    scenario: &ScenarioState,
) -> Result<(), Violation> {
    while world.elapsed_ms() < setup.safety_ms {
        check_steps(setup, world).await?;
        let left_ms = setup.safety_ms - world.elapsed_ms();
        madsim::time::sleep(Duration::from_millis(left_ms.min(TICK_MS))).await;
    }
    cluster.heal();
    let deadline_ms = world.elapsed_ms() + setup.liveness_ms_max;
    while world.elapsed_ms() < deadline_ms
        && !(scenario.done() && world.service_up() && all_closed(world).await)
    {
        check_steps(setup, world).await?;
        madsim::time::sleep(Duration::from_millis(TICK_MS)).await;
    }
    Ok(())
}

async fn check_steps(setup: &Setup, world: &World) -> Result<(), Violation> {
    let steps = world.steps();
    if steps <= setup.steps_max {
        return Ok(());
    }
    let runs = check::load_runs(world.storage.durable()).await;
    let mut message = format!(
        "seed did not finish: {steps} steps (messages {}, storage writes {}, clock waits and spawns {}) passed its budget of {} at t={} ms",
        world.net.messages(),
        world.storage.write_attempts(),
        world.waits_and_spawns(),
        setup.steps_max,
        world.elapsed_ms()
    );
    for (record, history) in runs.iter().take(BUDGET_RUNS_LISTED_MAX) {
        let events = history.as_ref().map_or(0, History::len);
        let waits = check::check_closed(record).map_or("closed".to_string(), |v| v.message);
        message.push_str(&format!(
            "\n    run {} (workflow {}): {events} events; {waits}",
            record.run_id, record.workflow_id
        ));
    }
    Err(Violation::new("budget", message))
}

/// Runs a budget violation lists, at most.
const BUDGET_RUNS_LISTED_MAX: usize = 8;

/// Histories past the budget's event count are a violation even when the
/// seed finished in time (a history that grows without end, slowly).
fn check_budget_left(setup: &Setup, histories: &BTreeMap<String, History>) -> Vec<Violation> {
    histories
        .values()
        .filter(|history| history.len() as u64 > setup.history_events_max)
        .map(|history| {
            let mut violation = Violation::new(
                "budget",
                format!(
                    "history of {} events passed its budget of {}",
                    history.len(),
                    setup.history_events_max
                ),
            );
            violation.run_id = Some(history.run_id().to_string());
            violation.workflow_id = Some(history.workflow_id().to_string());
            violation
        })
        .collect()
}

/// Each run's life on the simulated timeline, from its history's first and
/// last event times on the service's clock.
fn run_windows_ms(
    world: &World,
    histories: &BTreeMap<String, History>,
) -> BTreeMap<String, (u64, u64)> {
    let at = |time| world.sim_ms_at(crate::nodes::SERVICE, time);
    histories
        .iter()
        .filter_map(|(run_id, history)| {
            let first = history.events().first()?;
            let last = history.events().last()?;
            Some((run_id.clone(), (at(first.event_time), at(last.event_time))))
        })
        .collect()
}

struct ScenarioState {
    done: Arc<AtomicBool>,
    error: Arc<Mutex<Option<String>>>,
}

impl ScenarioState {
    fn done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    fn violations(&self) -> Vec<Violation> {
        let mut violations = Vec::new();
        if let Some(error) = self.error.lock().expect("scenario lock").clone() {
            violations.push(Violation::new(
                "scenario",
                format!("the scenario failed: {error}"),
            ));
        }
        if !self.done() {
            violations.push(Violation::new(
                "liveness",
                "the scenario did not finish after faults healed",
            ));
        }
        violations
    }
}

fn start_scenario(setup: &Arc<Setup>, world: &Arc<World>, cluster: &Arc<Cluster>) -> ScenarioState {
    let state = ScenarioState {
        done: Arc::new(AtomicBool::new(setup.scenario.is_none())),
        error: Arc::new(Mutex::new(None)),
    };
    if let Some(scenario) = setup.scenario.clone() {
        let env = world.env(CLIENT);
        let client = SimClient {
            client: Client::new(env.clone()).with_call_attempts_max(SCENARIO_CALL_ATTEMPTS_MAX),
            env,
        };
        let (done, error) = (state.done.clone(), state.error.clone());
        drop(cluster.client_node().spawn(async move {
            if let Err(e) = scenario(client).await {
                *error.lock().expect("scenario lock") = Some(format!("{e:#}"));
            }
            done.store(true, Ordering::SeqCst);
        }));
    }
    state
}

async fn all_closed(world: &World) -> bool {
    // Torn rows stay Running forever: one more than their count is enough
    // to see whether any other run is open (no record cloned beyond that).
    let query = retrace::env::ListQuery {
        status: Some(RunStatus::Running),
        limit: world.storage.torn_rows() as usize + 1,
        ..Default::default()
    };
    world
        .storage
        .durable()
        .list_runs(query)
        .await
        .expect("memory storage reads never fail")
        .iter()
        .all(|run| crate::nodes::is_torn_run(&run.run_id))
}

async fn histories_of(world: &World) -> BTreeMap<String, History> {
    check::load_runs(world.storage.durable())
        .await
        .into_iter()
        .filter_map(|(record, history)| history.ok().map(|h| (record.run_id, h)))
        .collect()
}

/// What the service's metrics say against storage and the workers (see
/// `checks/metrics.rs`). The gauges are read once every run closed, after
/// the service had a moment to forget the last ones.
async fn check_metrics(world: &World, attempts_run: usize) -> Vec<Violation> {
    let counted = world.service_metrics();
    let query = retrace::env::ListQuery {
        limit: usize::MAX,
        ..Default::default()
    };
    let records: Vec<RunRecord> = world
        .storage
        .durable()
        .list_runs(query)
        .await
        .expect("memory storage reads never fail")
        .into_iter()
        .filter(|record| !crate::nodes::is_torn_run(&record.run_id))
        .collect();
    let ambiguous = world.storage.ambiguous_runs();
    let mut violations = check::metrics::check_run_counters(&counted, &ambiguous, &records);
    violations.extend(check::metrics::check_task_and_write_counters(
        &counted,
        attempts_run,
    ));
    // The gauges are one service's; in a cluster a member may still hold
    // timer entries of runs whose shard moved away (they fire and are
    // dropped), so only a single service's gauges must read zero.
    let single = world.swarm.services == 1;
    if single && records.iter().all(|record| record.status.is_closed()) {
        violations.extend(check::metrics::check_gauges_when_all_closed(
            settled_scrape(world).await.as_deref(),
        ));
    }
    violations
}

/// How long the service may take to forget runs whose close just committed.
const GAUGES_SETTLE_MS: u64 = 2_000;

/// The service's scrape once its open-run and timer gauges read zero, or
/// the last one after `GAUGES_SETTLE_MS`.
async fn settled_scrape(world: &World) -> Option<String> {
    let settled = |text: &str| {
        ["retrace_runs_open", "retrace_timers_queued"]
            .iter()
            .all(|name| check::metrics::gauge(text, name) == Some(0))
    };
    let mut waited_ms = 0;
    loop {
        let scrape = world.net.handler(crate::nodes::SERVICE)?.metrics();
        if scrape.as_deref().is_none_or(settled) || waited_ms >= GAUGES_SETTLE_MS {
            return scrape;
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
        waited_ms += 100;
    }
}

/// The built-in and the scenario's checks of a seed that finished, and every
/// valid history the checks read (by run id; torn rows left out).
async fn check_run(
    setup: &Setup,
    cluster: &Arc<Cluster>,
    swarm: &Swarm,
    plan: &FaultPlan,
) -> (Vec<Violation>, BTreeMap<String, History>) {
    let world = &cluster.world;
    let mut violations = check::capacity::check_capacity(&cluster.observed);
    let digests = crate::world::lock(&cluster.observed.final_digests).clone();
    let attempts = crate::world::lock(&cluster.observed.attempts).clone();
    let clock = check::ServiceClock {
        now: world.env(crate::nodes::SERVICE).now(),
        now_elapsed_ms: world.elapsed_ms(),
        drift_ppm: swarm.clock_of(crate::nodes::SERVICE).1,
    };
    let tolerance = check::Tolerance::of_run(plan, swarm, clock, setup.safety_ms);
    let checks = check::RunChecks {
        replayer: &Replayer::new(setup.nodes.registry_last().clone()),
        digests: &digests,
        attempts: &attempts,
        service_starts: &world.storage.service_starts(),
        tolerance: &tolerance,
        expected: setup.expected_outcomes.as_ref(),
        raw_types: &setup.raw_workflow_types,
    };
    let stored = check::check_stored_runs(world.storage.durable(), &checks).await;
    violations.extend(stored.violations);
    violations.extend(check::quarantine::check_quarantine(
        world.quarantined().as_ref(),
        world.storage.durable(),
    ));
    violations.extend(check::buffered::check_buffered_limit(
        &world.storage.buffered_signal_bytes(),
        setup.nodes.service_config.buffered_payload_bytes_max,
    ));
    violations.extend(check_metrics(world, attempts.len()).await);
    let local_attempts = crate::world::lock(&cluster.observed.local_attempts).clone();
    violations.extend(check::local_activities::check_local_activities(
        &stored.histories,
        &local_attempts,
    ));
    violations.extend(
        check::visibility::check_visibility(world.storage.durable(), &stored.histories).await,
    );
    violations.extend(check::fencing::check_fencing(
        swarm.services,
        &world.storage.foreign_writes(),
        &world.storage.fenced_writes(),
    ));
    let ledger = world.services.ledger();
    violations.extend(check::check_effects(&ledger, &stored.histories));
    violations.extend(check::check_later_attempts_acted(
        &ledger,
        &stored.histories,
    ));
    let finished = Finished {
        histories: stored.histories,
        outcomes: stored.outcomes,
        ledger,
        faults: world.fault_counts(),
        service_clock_spread_ms: swarm.service_clock_spread_ms(world.elapsed_ms()),
        services: world.services.states(),
    };
    for check in &setup.checks {
        if let Err(message) = check(&finished) {
            violations.push(Violation::new("scenario check", message));
        }
    }
    (violations, finished.histories)
}
