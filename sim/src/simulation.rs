//! `Simulation`: the user's entry point. Describe workflows, activities,
//! simulated services, a scenario and a seed range; `run()` simulates every
//! seed and panics with a reproducible report at the first broken invariant.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use retrace::activity::Activity;
use retrace::api::RunOutcome;
use retrace::client::Client;
use retrace::env::{BoxFuture, Env, RunStatus, Storage};
use retrace::history::History;
use retrace::worker::WorkerOptions;
use retrace::workflow::{Replayer, Workflow, WorkflowRegistry};

use crate::checks::{self as check, Violation};
use crate::faults::swarm::Swarm;
use crate::faults::{FaultPlan, Topology, plan_strategy, plan_tree};
use crate::nodes::CLIENT;
use crate::report::{Report, SeedResult, repro_line};
use crate::world::cluster::{Cluster, NodeCtx, NodeSpec, Speculations};
use crate::world::services::{EffectLedger, SimService};
use crate::world::{FaultCounts, World};

type ServiceFactory = Arc<dyn Fn() -> Arc<dyn SimService> + Send + Sync>;
type ScenarioFn = Arc<dyn Fn(SimClient) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;
type CheckFn = Arc<dyn Fn(&Finished) -> Result<(), String> + Send + Sync>;
type SwarmFn = Arc<dyn Fn(&mut Swarm) + Send + Sync>;

/// Attempts of a scenario client's call (the service may be down for seconds).
pub const SCENARIO_CALL_ATTEMPTS_MAX: u32 = 40;
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
    /// The outcomes the scenario expects (`None`: completed or canceled).
    pub expected_outcomes: Option<check::outcomes::ExpectedOutcomes>,
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
                expected_outcomes: None,
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
        let factory: ServiceFactory = Arc::new(move || Arc::new(factory()) as Arc<dyn SimService>);
        self.setup.services.push((name.to_string(), factory));
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

    /// Adjusts every seed's swarm options.
    pub fn swarm(mut self, f: impl Fn(&mut Swarm) + Send + Sync + 'static) -> Self {
        self.setup.swarm = Some(Arc::new(f));
        self
    }

    /// The scenario's name.
    pub fn name(&self) -> &str {
        &self.setup.name
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
    pub fn run(self) -> u64 {
        crate::init_logging();
        let seeds = self.effective_seeds();
        let count = seeds.end - seeds.start;
        let setup = Arc::new(self.setup);
        for seed in seeds {
            if let Err(report) = run_and_shrink(&setup, seed) {
                panic!("{report}");
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
    };
    let faults_max = setup.faults_max.unwrap_or(swarm.faults_max);
    let strategy = plan_strategy(&topology, &swarm, faults_max);
    (swarm, strategy)
}

/// Runs `seed`; if it fails, shrinks the plan while the failure persists.
fn run_and_shrink(setup: &Arc<Setup>, seed: u64) -> Result<SeedResult, Box<Report>> {
    let (swarm, strategy) = plan_setup(setup, seed);
    let mut tree = plan_tree(seed, &strategy);
    let original = tree.current();
    let first = run_seed(setup, seed, swarm.clone(), original.clone());
    if first.passed() {
        return Ok(first);
    }
    let mut best = first;
    for _ in 0..SHRINK_RUNS_MAX {
        if !tree.simplify() {
            break;
        }
        let candidate = run_seed(setup, seed, swarm.clone(), tree.current());
        if candidate.passed() {
            if !tree.complicate() {
                break;
            }
        } else {
            best = candidate;
        }
    }
    let repro = repro_line(&setup.name, seed);
    Err(Box::new(Report {
        scenario: setup.name.clone(),
        original_faults: original.faults.len(),
        result: best,
        repro,
    }))
}

/// Stack of the thread a seed runs on.
pub const SEED_THREAD_STACK_BYTES: usize = 16 << 20;

/// One seed, one plan: a fresh thread, a fresh madsim runtime, a fresh world.
///
/// The thread is new for every seed so that nothing a thread keeps (the
/// standard library's per-thread hash keys, which advance with every hash map
/// a seed builds; thread-local caches of dependencies) carries over from one
/// seed to the next: a seed gives the same run alone, after other seeds, and
/// on any job thread of a campaign.
pub fn run_seed(setup: &Arc<Setup>, seed: u64, swarm: Swarm, plan: FaultPlan) -> SeedResult {
    let caller = std::thread::current().name().map(str::to_string);
    let mut builder = std::thread::Builder::new().stack_size(SEED_THREAD_STACK_BYTES);
    if let Some(name) = caller {
        // The report's reproduction line names the test from its thread.
        builder = builder.name(name);
    }
    let (setup, fallback) = (setup.clone(), (swarm.clone(), plan.clone()));
    let thread = builder.spawn(move || run_seed_here(&setup, seed, swarm, plan));
    match thread.map(|t| t.join()) {
        Ok(Ok(result)) => result,
        Ok(Err(_)) | Err(_) => panicked(
            seed,
            fallback.0,
            fallback.1,
            "the seed's thread failed".into(),
        ),
    }
}

fn run_seed_here(setup: &Arc<Setup>, seed: u64, swarm: Swarm, plan: FaultPlan) -> SeedResult {
    let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    let simulation = simulate(setup.clone(), seed, swarm.clone(), plan.clone());
    let result = match std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(simulation))) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a task panicked".to_string());
            panicked(seed, swarm, plan, message)
        }
    };
    drop(runtime);
    crate::world::count_leaked_worlds();
    result
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
    }
}

async fn simulate(setup: Arc<Setup>, seed: u64, swarm: Swarm, plan: FaultPlan) -> SeedResult {
    let world = World::new(seed, swarm.clone());
    world.storage.set_faults(world.swarm_storage_faults(), true);
    for (name, factory) in &setup.services {
        world.services.add(name, factory());
    }
    let cluster = Cluster::start(world.clone(), setup.nodes.clone());
    let scenario = start_scenario(&setup, &world, &cluster);
    cluster.start_injecting(plan.clone());
    madsim::time::sleep(Duration::from_millis(setup.safety_ms)).await;
    cluster.heal();
    let deadline = world.elapsed_ms() + setup.liveness_ms_max;
    while world.elapsed_ms() < deadline && !(scenario.done() && all_closed(&world).await) {
        madsim::time::sleep(Duration::from_millis(250)).await;
    }
    let mut violations = scenario.violations();
    violations.extend(check_run(&setup, &cluster, &swarm, &plan).await);
    let histories = histories_of(&world).await;
    for history in histories.values() {
        world.trace(&history.to_json());
    }
    let (trace_hash, _) = world.trace_hash();
    let speculations = *crate::world::lock(&cluster.observed.speculations);
    cluster.shut_down();
    SeedResult {
        seed,
        swarm,
        plan,
        violations,
        trace_hash,
        faults: world.fault_counts(),
        sim_ms: world.elapsed_ms(),
        histories,
        buggify_sites: world.buggify_sites(),
        speculations,
    }
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
    let query = retrace::env::ListQuery {
        status: Some(RunStatus::Running),
        limit: 1,
        ..Default::default()
    };
    world
        .storage
        .durable()
        .list_runs(query)
        .await
        .expect("memory storage reads never fail")
        .is_empty()
}

async fn histories_of(world: &World) -> BTreeMap<String, History> {
    check::load_runs(world.storage.durable())
        .await
        .into_iter()
        .filter_map(|(record, history)| history.ok().map(|h| (record.run_id, h)))
        .collect()
}

async fn check_run(
    setup: &Setup,
    cluster: &Arc<Cluster>,
    swarm: &Swarm,
    plan: &FaultPlan,
) -> Vec<Violation> {
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
        replayer: &Replayer::new(setup.nodes.registry.clone()),
        digests: &digests,
        attempts: &attempts,
        tolerance: &tolerance,
        expected: setup.expected_outcomes.as_ref(),
    };
    let stored = check::check_stored_runs(world.storage.durable(), &checks).await;
    violations.extend(stored.violations);
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
    };
    for check in &setup.checks {
        if let Err(message) = check(&finished) {
            violations.push(Violation::new("scenario check", message));
        }
    }
    violations
}
