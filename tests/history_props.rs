//! Property tests of the history module.
//!
//! A generator builds random well-formed histories with `HistoryBuilder` (workflow
//! tasks with commands, activity outcomes, timers, signals, timed-out workflow tasks,
//! an optional close), tracking what is open so that every append is valid. On top of
//! it: every such history round-trips through the canonical JSON form, and every kind
//! of invalid append is rejected with its own `HistoryError` and leaves the history
//! as it was. One hand-built case per error variant checks the message. The bugs the
//! properties found are pinned by `#[ignore]`d tests at the end.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use retrace::activity::RetryPolicy;
use retrace::history::{
    ActivityTaskCancelRequested, ActivityTaskCanceled, ActivityTaskCompleted, ActivityTaskFailed,
    ActivityTaskScheduled, ActivityTaskStarted, ActivityTaskTimedOut, Event, EventKind, History,
    HistoryBuilder, HistoryError, HistoryLimits, MarkerRecorded, TimerCanceled, TimerFired,
    TimerStarted, WorkflowExecutionCancelRequested, WorkflowExecutionCompleted,
    WorkflowExecutionSignaled, WorkflowExecutionTerminated, WorkflowTaskCompleted,
    WorkflowTaskScheduled, WorkflowTaskStarted, payload_size_bytes,
};
use retrace::types::{Failure, RetryState, TimeoutType, Timestamp};
use serde_json::{Value, json};

/// Largest clock step between two steps of a generated history (one day).
const MAX_ADVANCE_MS: u64 = 86_400_000;

// ---------------------------------------------------------------------------
// Random payloads
// ---------------------------------------------------------------------------

/// Any Unicode text, with what JSON must escape (quotes, backslashes, control
/// characters) and multi-byte characters over-represented.
fn text() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        '"', '\\', '/', '\n', '\r', '\t', '\u{0}', '\u{1f}', '\u{7f}', '\u{2028}', '\u{feff}', 'é',
        '中', '😀',
    ]);
    let character = prop_oneof![
        2 => proptest::char::range('a', 'z'),
        1 => special,
        1 => any::<char>(),
    ];
    prop::collection::vec(character, 0..10).prop_map(String::from_iter)
}

/// Finite floats: decimal fractions as payloads usually carry, and arbitrary bit
/// patterns (all must read back bit for bit: see `a_float_payload_reads_back_bit_for_bit`).
fn exact_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        (any::<i32>(), 0..=9i32)
            .prop_map(|(mantissa, digits)| f64::from(mantissa) / 10f64.powi(digits)),
        any::<f64>(),
    ]
    .prop_filter("JSON has no NaN or infinity", |x| x.is_finite())
}

/// Any JSON value: nested arrays and objects, strings, integers, floats, booleans, null.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        exact_float().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A payload for an `Option<Value>` slot, `Some(null)` included.
fn optional_payload() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(json_value())
}

// ---------------------------------------------------------------------------
// Plans: what a generated history is made of
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Plan {
    workflow_id: String,
    run_id: String,
    workflow_type: String,
    input: Value,
    steps: Vec<(u64, Step)>,
    terminal: Terminal,
}

#[derive(Clone, Debug)]
struct Signal {
    name: String,
    input: Value,
}

/// One step; `pick`s choose among the open activities / timers (modulo their
/// number), and a step with nothing to pick from adds nothing.
#[derive(Clone, Debug)]
enum Step {
    WorkflowTask {
        signal_while_scheduled: Option<Signal>,
        commands: Vec<Command>,
    },
    WorkflowTaskTimesOut,
    ActivityOutcome {
        pick: usize,
        outcome: Outcome,
    },
    TimerFires {
        pick: usize,
    },
    Signal(Signal),
}

#[derive(Clone, Debug)]
enum Command {
    ScheduleActivity { activity_type: String, input: Value },
    StartTimer { duration_ms: u64 },
    RecordMarker { name: String, details: Value },
    RequestActivityCancel { pick: usize },
    CancelTimer { pick: usize },
}

#[derive(Clone, Debug)]
enum Outcome {
    Completed {
        attempt: u32,
        result: Value,
    },
    Failed {
        attempt: u32,
        message: String,
        details: Option<Value>,
    },
    TimedOutBeforeStart,
    TimedOutAfterStart {
        heartbeat_details: Option<Value>,
    },
    /// Only for an activity whose cancel was requested.
    Canceled {
        started: bool,
        details: Option<Value>,
    },
}

#[derive(Clone, Debug)]
enum Terminal {
    Open,
    Completed {
        result: Value,
    },
    Terminated {
        reason: String,
        details: Option<Value>,
    },
}

fn signal() -> impl Strategy<Value = Signal> {
    (text(), json_value()).prop_map(|(name, input)| Signal { name, input })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        3 => (text(), json_value())
            .prop_map(|(activity_type, input)| Command::ScheduleActivity { activity_type, input }),
        2 => (0..=3_600_000u64).prop_map(|duration_ms| Command::StartTimer { duration_ms }),
        1 => (text(), json_value())
            .prop_map(|(name, details)| Command::RecordMarker { name, details }),
        1 => any::<usize>().prop_map(|pick| Command::RequestActivityCancel { pick }),
        1 => any::<usize>().prop_map(|pick| Command::CancelTimer { pick }),
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        (1..=5u32, json_value())
            .prop_map(|(attempt, result)| Outcome::Completed { attempt, result }),
        (1..=5u32, text(), optional_payload()).prop_map(|(attempt, message, details)| {
            Outcome::Failed {
                attempt,
                message,
                details,
            }
        }),
        Just(Outcome::TimedOutBeforeStart),
        optional_payload()
            .prop_map(|heartbeat_details| Outcome::TimedOutAfterStart { heartbeat_details }),
        (any::<bool>(), optional_payload())
            .prop_map(|(started, details)| Outcome::Canceled { started, details }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (prop::option::of(signal()), prop::collection::vec(command(), 0..=3)).prop_map(
            |(signal_while_scheduled, commands)| {
                Step::WorkflowTask { signal_while_scheduled, commands }
            }
        ),
        1 => Just(Step::WorkflowTaskTimesOut),
        3 => (any::<usize>(), outcome())
            .prop_map(|(pick, outcome)| Step::ActivityOutcome { pick, outcome }),
        1 => any::<usize>().prop_map(|pick| Step::TimerFires { pick }),
        1 => signal().prop_map(Step::Signal),
    ]
}

fn terminal() -> impl Strategy<Value = Terminal> {
    prop_oneof![
        Just(Terminal::Open),
        json_value().prop_map(|result| Terminal::Completed { result }),
        (text(), optional_payload())
            .prop_map(|(reason, details)| Terminal::Terminated { reason, details }),
    ]
}

fn plan() -> impl Strategy<Value = Plan> {
    let steps = prop::collection::vec((0..=MAX_ADVANCE_MS, step()), 0..16);
    (text(), text(), text(), json_value(), steps, terminal()).prop_map(
        |(workflow_id, run_id, workflow_type, input, steps, terminal)| Plan {
            workflow_id,
            run_id,
            workflow_type,
            input,
            steps,
            terminal,
        },
    )
}

// ---------------------------------------------------------------------------
// Building a plan, tracking what is open
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct OpenActivity {
    activity_id: String,
    scheduled: u64,
    cancel_requested: Option<u64>,
}

#[derive(Clone, Debug)]
struct OpenTimer {
    timer_id: String,
    started: u64,
}

/// What the validator must know about the history built so far.
#[derive(Clone, Debug, Default)]
struct Model {
    activities: Vec<OpenActivity>,
    /// (ActivityTaskScheduled id, closing event id)
    closed_activities: Vec<(u64, u64)>,
    timers: Vec<OpenTimer>,
    /// (timer, closing event id)
    closed_timers: Vec<(OpenTimer, u64)>,
    /// The last WorkflowTaskCompleted (0 before the first).
    last_completed: u64,
    activities_scheduled: usize,
    timers_started: usize,
}

#[derive(Clone, Debug)]
struct Built {
    b: HistoryBuilder,
    m: Model,
}

/// The plan's steps, without its terminal event: the workflow task is idle after.
fn build_open(plan: &Plan) -> Built {
    let b = HistoryBuilder::for_run(
        &plan.workflow_id,
        &plan.run_id,
        &plan.workflow_type,
        plan.input.clone(),
    );
    let mut built = Built {
        b,
        m: Model::default(),
    };
    for (advance_ms, step) in &plan.steps {
        built.b.advance_ms(*advance_ms);
        built.apply(step);
    }
    built
}

/// The whole plan, terminal event included.
fn build(plan: &Plan) -> History {
    let mut built = build_open(plan);
    match &plan.terminal {
        Terminal::Open => {}
        Terminal::Completed { result } => {
            built.full_task();
            built.b.add_workflow_execution_completed(result.clone());
        }
        Terminal::Terminated { reason, details } => {
            built.b.add(EventKind::WorkflowExecutionTerminated(
                WorkflowExecutionTerminated {
                    reason: reason.clone(),
                    details: details.clone(),
                    identity: "client".to_string(),
                },
            ));
        }
    }
    built.b.build()
}

fn start_attempt(b: &mut HistoryBuilder, scheduled: u64, attempt: u32) -> u64 {
    let last_failure =
        (attempt > 1).then(|| Failure::new("Flaky", format!("attempt {}", attempt - 1)));
    b.add_activity_started(scheduled, attempt, last_failure)
}

impl Built {
    fn next_id(&self) -> u64 {
        self.b.history().next_event_id()
    }

    /// `kind` as the next event (id and time).
    fn event(&self, kind: EventKind) -> Event {
        Event::new(self.next_id(), self.b.now(), kind)
    }

    fn full_task(&mut self) -> u64 {
        self.m.last_completed = self.b.add_full_workflow_task();
        self.m.last_completed
    }

    fn apply(&mut self, step: &Step) {
        match step {
            Step::WorkflowTask {
                signal_while_scheduled,
                commands,
            } => {
                self.b.add_workflow_task_scheduled();
                if let Some(signal) = signal_while_scheduled {
                    self.b.add_signal(&signal.name, signal.input.clone());
                }
                self.b.add_workflow_task_started();
                self.m.last_completed = self.b.add_workflow_task_completed();
                commands.iter().for_each(|command| self.command(command));
            }
            Step::WorkflowTaskTimesOut => {
                self.b.add_workflow_task_scheduled();
                self.b.add_workflow_task_started();
                self.b.add_workflow_task_timed_out();
            }
            Step::ActivityOutcome { pick, outcome } => self.activity_outcome(*pick, outcome),
            Step::TimerFires { pick } if !self.m.timers.is_empty() => {
                let timer = self.m.timers.remove(pick % self.m.timers.len());
                let fired = self.b.add_timer_fired(&timer.timer_id, timer.started);
                self.m.closed_timers.push((timer, fired));
            }
            Step::TimerFires { .. } => {}
            Step::Signal(signal) => {
                self.b.add_signal(&signal.name, signal.input.clone());
            }
        }
    }

    fn command(&mut self, command: &Command) {
        match command {
            Command::ScheduleActivity {
                activity_type,
                input,
            } => {
                let activity_id = format!("activity-{}", self.m.activities_scheduled);
                self.m.activities_scheduled += 1;
                let scheduled =
                    self.b
                        .add_activity_scheduled(&activity_id, activity_type, input.clone());
                self.m.activities.push(OpenActivity {
                    activity_id,
                    scheduled,
                    cancel_requested: None,
                });
            }
            Command::StartTimer { duration_ms } => {
                let timer_id = format!("timer-{}", self.m.timers_started);
                self.m.timers_started += 1;
                let started = self.b.add_timer_started(&timer_id, *duration_ms);
                self.m.timers.push(OpenTimer { timer_id, started });
            }
            Command::RecordMarker { name, details } => {
                self.b.add_marker(name, details.clone());
            }
            Command::RequestActivityCancel { pick } => {
                let mut not_requested: Vec<&mut OpenActivity> = self
                    .m
                    .activities
                    .iter_mut()
                    .filter(|a| a.cancel_requested.is_none())
                    .collect();
                if !not_requested.is_empty() {
                    let count = not_requested.len();
                    let activity = &mut not_requested[pick % count];
                    activity.cancel_requested =
                        Some(self.b.add_activity_cancel_requested(activity.scheduled));
                }
            }
            Command::CancelTimer { pick } if !self.m.timers.is_empty() => {
                let timer = self.m.timers.remove(pick % self.m.timers.len());
                let canceled = self.b.add_timer_canceled(&timer.timer_id, timer.started);
                self.m.closed_timers.push((timer, canceled));
            }
            Command::CancelTimer { .. } => {}
        }
    }

    fn activity_outcome(&mut self, pick: usize, outcome: &Outcome) {
        let needs_cancel_request = matches!(outcome, Outcome::Canceled { .. });
        let candidates: Vec<usize> = (0..self.m.activities.len())
            .filter(|&i| !needs_cancel_request || self.m.activities[i].cancel_requested.is_some())
            .collect();
        if candidates.is_empty() {
            return;
        }
        let activity = self
            .m
            .activities
            .remove(candidates[pick % candidates.len()]);
        let closed_by = self.close_activity(&activity, outcome);
        self.m
            .closed_activities
            .push((activity.scheduled, closed_by));
    }

    fn close_activity(&mut self, activity: &OpenActivity, outcome: &Outcome) -> u64 {
        let (b, scheduled) = (&mut self.b, activity.scheduled);
        let identity = "worker".to_string();
        let kind = match outcome {
            Outcome::Completed { attempt, result } => {
                let started_event_id = start_attempt(b, scheduled, *attempt);
                let result = result.clone();
                EventKind::ActivityTaskCompleted(ActivityTaskCompleted {
                    scheduled_event_id: scheduled,
                    started_event_id,
                    result,
                    identity,
                })
            }
            Outcome::Failed {
                attempt,
                message,
                details,
            } => {
                let started_event_id = start_attempt(b, scheduled, *attempt);
                let failure = Failure {
                    details: details.clone(),
                    ..Failure::new("Boom", message.clone())
                };
                EventKind::ActivityTaskFailed(ActivityTaskFailed {
                    scheduled_event_id: scheduled,
                    started_event_id,
                    failure,
                    retry_state: RetryState::MaximumAttemptsReached,
                    identity,
                })
            }
            Outcome::TimedOutBeforeStart => {
                let (timeout, retry) = (
                    TimeoutType::ScheduleToStart,
                    RetryState::NonRetryableFailure,
                );
                return b.add_activity_timed_out(scheduled, None, timeout, retry);
            }
            Outcome::TimedOutAfterStart { heartbeat_details } => {
                let started_event_id = Some(start_attempt(b, scheduled, 1));
                EventKind::ActivityTaskTimedOut(ActivityTaskTimedOut {
                    scheduled_event_id: scheduled,
                    started_event_id,
                    timeout_type: TimeoutType::Heartbeat,
                    retry_state: RetryState::Timeout,
                    last_failure: Some(Failure::timeout(TimeoutType::Heartbeat)),
                    last_heartbeat_details: heartbeat_details.clone(),
                    failure: Some(Failure::timed_out(TimeoutType::Heartbeat, "no heartbeat")),
                })
            }
            Outcome::Canceled { started, details } => {
                EventKind::ActivityTaskCanceled(ActivityTaskCanceled {
                    scheduled_event_id: scheduled,
                    started_event_id: started.then(|| start_attempt(b, scheduled, 1)),
                    latest_cancel_requested_event_id: activity
                        .cancel_requested
                        .expect("picked among requested"),
                    details: details.clone(),
                    identity,
                })
            }
        };
        b.add(kind)
    }

    fn ensure_open_activity(&mut self, pick: usize) -> OpenActivity {
        if self.m.activities.is_empty() {
            self.full_task();
            self.command(&Command::ScheduleActivity {
                activity_type: "ensured".into(),
                input: json!(1),
            });
        }
        self.m.activities[pick % self.m.activities.len()].clone()
    }

    /// (ActivityTaskScheduled id, closing event id) of a closed activity.
    fn ensure_closed_activity(&mut self, pick: usize) -> (u64, u64) {
        if self.m.closed_activities.is_empty() {
            self.ensure_open_activity(pick);
            self.activity_outcome(pick, &Outcome::TimedOutBeforeStart);
        }
        self.m.closed_activities[pick % self.m.closed_activities.len()]
    }

    fn ensure_open_timer(&mut self, pick: usize) -> OpenTimer {
        if self.m.timers.is_empty() {
            self.full_task();
            self.command(&Command::StartTimer { duration_ms: 1_000 });
        }
        self.m.timers[pick % self.m.timers.len()].clone()
    }

    fn ensure_closed_timer(&mut self, pick: usize) -> (OpenTimer, u64) {
        if self.m.closed_timers.is_empty() {
            self.ensure_open_timer(pick);
            self.apply(&Step::TimerFires { pick });
        }
        self.m.closed_timers[pick % self.m.closed_timers.len()].clone()
    }
}

// ---------------------------------------------------------------------------
// Event kinds used as corruptions
// ---------------------------------------------------------------------------

fn signal_kind() -> EventKind {
    EventKind::WorkflowExecutionSignaled(WorkflowExecutionSignaled {
        signal_name: "poke".to_string(),
        input: json!({"late": true}),
        identity: "client".to_string(),
    })
}

fn task_scheduled_kind() -> EventKind {
    EventKind::WorkflowTaskScheduled(WorkflowTaskScheduled {
        task_queue: "default".to_string(),
        start_to_close_timeout_ms: 10_000,
        attempt: 1,
    })
}

fn marker_kind(workflow_task_completed_event_id: u64) -> EventKind {
    EventKind::MarkerRecorded(MarkerRecorded {
        marker_name: "side_effect".to_string(),
        details: json!(42),
        workflow_task_completed_event_id,
    })
}

fn activity_scheduled_kind(activity_id: &str, workflow_task_completed_event_id: u64) -> EventKind {
    EventKind::ActivityTaskScheduled(ActivityTaskScheduled {
        activity_id: activity_id.to_string(),
        activity_type: "compose".to_string(),
        task_queue: "default".to_string(),
        input: json!("x"),
        schedule_to_close_timeout_ms: None,
        schedule_to_start_timeout_ms: None,
        start_to_close_timeout_ms: Some(10_000),
        heartbeat_timeout_ms: None,
        retry_policy: RetryPolicy::default()
            .normalized()
            .expect("the default policy is valid"),
        workflow_task_completed_event_id,
    })
}

fn activity_started_kind(scheduled_event_id: u64) -> EventKind {
    EventKind::ActivityTaskStarted(ActivityTaskStarted {
        scheduled_event_id,
        identity: "worker".to_string(),
        attempt: 1,
        last_failure: None,
    })
}

fn activity_completed_kind(scheduled_event_id: u64, started_event_id: u64) -> EventKind {
    EventKind::ActivityTaskCompleted(ActivityTaskCompleted {
        scheduled_event_id,
        started_event_id,
        result: json!("done"),
        identity: "worker".to_string(),
    })
}

fn activity_timed_out_kind(scheduled_event_id: u64, started_event_id: Option<u64>) -> EventKind {
    EventKind::ActivityTaskTimedOut(ActivityTaskTimedOut {
        scheduled_event_id,
        started_event_id,
        timeout_type: TimeoutType::StartToClose,
        retry_state: RetryState::Timeout,
        last_failure: None,
        last_heartbeat_details: None,
        failure: None,
    })
}

fn activity_canceled_kind(
    scheduled_event_id: u64,
    latest_cancel_requested_event_id: u64,
) -> EventKind {
    EventKind::ActivityTaskCanceled(ActivityTaskCanceled {
        scheduled_event_id,
        started_event_id: None,
        latest_cancel_requested_event_id,
        details: None,
        identity: "worker".to_string(),
    })
}

fn timer_fired_kind(timer_id: &str, started_event_id: u64) -> EventKind {
    EventKind::TimerFired(TimerFired {
        timer_id: timer_id.to_string(),
        started_event_id,
    })
}

fn terminated_kind() -> EventKind {
    EventKind::WorkflowExecutionTerminated(WorkflowExecutionTerminated {
        reason: "operator".to_string(),
        details: None,
        identity: "client".to_string(),
    })
}

/// A command event naming the last WorkflowTaskCompleted, valid right after it.
fn some_command(built: &Built, which: usize) -> EventKind {
    let wtc = built.m.last_completed;
    match which % 6 {
        0 => activity_scheduled_kind(&format!("activity-{}", built.m.activities_scheduled), wtc),
        1 => EventKind::TimerStarted(TimerStarted {
            timer_id: format!("timer-{}", built.m.timers_started),
            start_to_fire_timeout_ms: 1_000,
            workflow_task_completed_event_id: wtc,
        }),
        3 if !built.m.activities.is_empty() => {
            EventKind::ActivityTaskCancelRequested(ActivityTaskCancelRequested {
                scheduled_event_id: built.m.activities[0].scheduled,
                workflow_task_completed_event_id: wtc,
            })
        }
        4 if !built.m.timers.is_empty() => EventKind::TimerCanceled(TimerCanceled {
            timer_id: built.m.timers[0].timer_id.clone(),
            started_event_id: built.m.timers[0].started,
            workflow_task_completed_event_id: wtc,
        }),
        5 => EventKind::WorkflowExecutionCompleted(WorkflowExecutionCompleted {
            result: json!("done"),
            workflow_task_completed_event_id: wtc,
            new_execution_run_id: None,
        }),
        _ => marker_kind(wtc),
    }
}

/// An event that is not a workflow task's close nor the run's terminate / timeout.
fn some_non_close_event(built: &Built, which: usize) -> EventKind {
    match which % 11 {
        0 => signal_kind(),
        1 => task_scheduled_kind(),
        2 => EventKind::WorkflowExecutionCancelRequested(WorkflowExecutionCancelRequested {
            cause: "test".to_string(),
            identity: "client".to_string(),
        }),
        3 if !built.m.activities.is_empty() => {
            activity_started_kind(built.m.activities[0].scheduled)
        }
        4 if !built.m.timers.is_empty() => {
            timer_fired_kind(&built.m.timers[0].timer_id, built.m.timers[0].started)
        }
        3 | 4 => signal_kind(),
        n => some_command(built, n - 5),
    }
}

fn some_event(built: &Built, which: usize) -> EventKind {
    if which % 12 == 11 {
        terminated_kind()
    } else {
        some_non_close_event(built, which)
    }
}

/// An id other than `id` (>= 1): below it, or above it.
fn other_than(id: u64, offset: usize) -> u64 {
    let offset = offset as u64;
    if offset.is_multiple_of(2) {
        (offset / 2) % id
    } else {
        id + 1 + (offset / 2) % 1_000
    }
}

/// `kind` with its payload set to `payload` (an optional one to `Some`), if it carries one.
fn with_payload(kind: &EventKind, payload: Value) -> Option<EventKind> {
    let mut kind = kind.clone();
    match &mut kind {
        EventKind::WorkflowExecutionStarted(a) => a.input = payload,
        EventKind::ActivityTaskScheduled(a) => a.input = payload,
        EventKind::ActivityTaskCompleted(a) => a.result = payload,
        EventKind::ActivityTaskTimedOut(a) => a.last_heartbeat_details = Some(payload),
        EventKind::ActivityTaskCanceled(a) => a.details = Some(payload),
        EventKind::WorkflowExecutionSignaled(a) => a.input = payload,
        EventKind::MarkerRecorded(a) => a.details = payload,
        EventKind::WorkflowExecutionCompleted(a) => a.result = payload,
        EventKind::WorkflowExecutionTerminated(a) => a.details = Some(payload),
        _ => return None,
    }
    Some(kind)
}

// ---------------------------------------------------------------------------
// Corruptions and the errors they must produce
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Corruption {
    IdSkipsAhead {
        ahead: u64,
        which: usize,
    },
    IdRepeats {
        pick: u64,
        which: usize,
    },
    AfterClose {
        by_completion: bool,
        which: usize,
    },
    ActivityClosedTwice {
        pick: usize,
        how: usize,
    },
    TimerClosedTwice {
        pick: usize,
        cancel: bool,
    },
    ActivityBadLink {
        pick: usize,
        how: usize,
        offset: usize,
    },
    TimerBadLink {
        pick: usize,
        unknown_id: bool,
        offset: usize,
    },
    WorkflowTaskBadLink {
        completed: bool,
        offset: usize,
    },
    CommandNamesAnotherTask {
        offset: usize,
    },
    CommandOutOfPlace {
        after: usize,
        which: usize,
    },
    SecondWorkflowTaskScheduled {
        started: bool,
    },
    EventWhileWorkflowTaskStarted {
        which: usize,
    },
    WorkflowTaskStepSkipped {
        completed: bool,
    },
    SecondStart,
    DuplicateOpenId {
        pick: usize,
        timer: bool,
    },
    MissingStart {
        pick: usize,
    },
    PayloadTooLarge {
        pick: usize,
        extra: usize,
    },
    TooManyEvents {
        pick: usize,
    },
}

fn corruption() -> impl Strategy<Value = Corruption> {
    use Corruption as C;
    let (n, b) = (any::<usize>, any::<bool>);
    prop_oneof![
        (1..=1_000u64, n()).prop_map(|(ahead, which)| C::IdSkipsAhead { ahead, which }),
        (any::<u64>(), n()).prop_map(|(pick, which)| C::IdRepeats { pick, which }),
        (b(), n()).prop_map(|(by_completion, which)| C::AfterClose {
            by_completion,
            which
        }),
        (n(), n()).prop_map(|(pick, how)| C::ActivityClosedTwice { pick, how }),
        (n(), b()).prop_map(|(pick, cancel)| C::TimerClosedTwice { pick, cancel }),
        (n(), n(), n()).prop_map(|(pick, how, offset)| C::ActivityBadLink { pick, how, offset }),
        (n(), b(), n()).prop_map(|(pick, unknown_id, offset)| C::TimerBadLink {
            pick,
            unknown_id,
            offset
        }),
        (b(), n()).prop_map(|(completed, offset)| C::WorkflowTaskBadLink { completed, offset }),
        n().prop_map(|offset| C::CommandNamesAnotherTask { offset }),
        (n(), n()).prop_map(|(after, which)| C::CommandOutOfPlace { after, which }),
        b().prop_map(|started| C::SecondWorkflowTaskScheduled { started }),
        n().prop_map(|which| C::EventWhileWorkflowTaskStarted { which }),
        b().prop_map(|completed| C::WorkflowTaskStepSkipped { completed }),
        Just(C::SecondStart),
        (n(), b()).prop_map(|(pick, timer)| C::DuplicateOpenId { pick, timer }),
        n().prop_map(|pick| C::MissingStart { pick }),
        (n(), 0..64usize).prop_map(|(pick, extra)| C::PayloadTooLarge { pick, extra }),
        n().prop_map(|pick| C::TooManyEvents { pick }),
    ]
}

/// The error an append must fail with (every field the case can predict).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    IdGap {
        expected: u64,
        found: u64,
    },
    AfterClose {
        event_id: u64,
        closed_by: u64,
    },
    AlreadyClosed {
        event_id: u64,
        closed_by: u64,
    },
    BadLink {
        event_id: u64,
        field: &'static str,
        target: u64,
    },
    OutOfOrder {
        event_id: u64,
    },
    MissingStart {
        event_id: u64,
    },
    PayloadTooLarge {
        event_id: u64,
        bytes: u64,
        max: u64,
    },
    TooManyEvents {
        event_id: u64,
        max: u64,
    },
}

impl Want {
    fn variant(self) -> &'static str {
        match self {
            Want::IdGap { .. } => "EventIdGap",
            Want::AfterClose { .. } => "AfterClose",
            Want::AlreadyClosed { .. } => "AlreadyClosed",
            Want::BadLink { .. } => "BadLink",
            Want::OutOfOrder { .. } => "OutOfOrder",
            Want::MissingStart { .. } => "MissingStart",
            Want::PayloadTooLarge { .. } => "PayloadTooLarge",
            Want::TooManyEvents { .. } => "TooManyEvents",
        }
    }
}

/// The predictable fields of `error`, and the event type it names if it names one.
fn observed(error: &HistoryError) -> (Want, Option<&'static str>) {
    use HistoryError as E;
    match *error {
        E::TimeOutOfRange { .. } => panic!("no corruption moves an event past year 9999: {error}"),
        E::EventIdGap { expected, found } => (Want::IdGap { expected, found }, None),
        E::AfterClose {
            event_id,
            event_type,
            closed_by,
        } => (
            Want::AfterClose {
                event_id,
                closed_by,
            },
            Some(event_type),
        ),
        E::AlreadyClosed {
            event_id,
            event_type,
            closed_by,
            ..
        } => (
            Want::AlreadyClosed {
                event_id,
                closed_by,
            },
            Some(event_type),
        ),
        E::BadLink {
            event_id,
            event_type,
            field,
            target,
            ..
        } => (
            Want::BadLink {
                event_id,
                field,
                target,
            },
            Some(event_type),
        ),
        E::OutOfOrder {
            event_id,
            event_type,
            ..
        } => (Want::OutOfOrder { event_id }, Some(event_type)),
        E::MissingStart {
            event_id,
            event_type,
        } => (Want::MissingStart { event_id }, Some(event_type)),
        E::PayloadTooLarge {
            event_id,
            event_type,
            bytes,
            max,
        } => (
            Want::PayloadTooLarge {
                event_id,
                bytes,
                max,
            },
            Some(event_type),
        ),
        E::TooManyEvents { event_id, max } => (Want::TooManyEvents { event_id, max }, None),
        E::PayloadTooDeep { .. } => panic!("no corruption here nests a payload deeper: {error}"),
    }
}

/// A history, an event that must not be appended to it, and the error it must give.
struct Case {
    history: History,
    bad: Event,
    want: Want,
}

impl Built {
    fn case(self, kind: EventKind, want: impl FnOnce(u64) -> Want) -> Case {
        let bad = self.event(kind);
        let want = want(bad.event_id);
        Case {
            history: self.b.build(),
            bad,
            want,
        }
    }
}

fn corrupt(plan: &Plan, corruption: &Corruption) -> Case {
    use Corruption as C;
    let mut built = build_open(plan);
    match *corruption {
        C::IdSkipsAhead { ahead, which } => wrong_id(built, |next| next + ahead, which),
        C::IdRepeats { pick, which } => wrong_id(built, |next| 1 + pick % (next - 1), which),
        C::AfterClose {
            by_completion,
            which,
        } => {
            let closed_by = if by_completion {
                built.full_task();
                built.b.add_workflow_execution_completed(json!("done"))
            } else {
                built.b.add_workflow_execution_terminated("operator")
            };
            let kind = some_event(&built, which);
            built.case(kind, |event_id| Want::AfterClose {
                event_id,
                closed_by,
            })
        }
        C::ActivityClosedTwice { pick, how } => activity_closed_twice(built, pick, how),
        C::TimerClosedTwice { pick, cancel } => timer_closed_twice(built, pick, cancel),
        C::ActivityBadLink { pick, how, offset } => activity_bad_link(built, pick, how, offset),
        C::TimerBadLink {
            pick,
            unknown_id,
            offset,
        } => timer_bad_link(built, pick, unknown_id, offset),
        C::WorkflowTaskBadLink { completed, offset } => {
            workflow_task_bad_link(built, completed, offset)
        }
        C::CommandNamesAnotherTask { offset } => {
            let target = other_than(built.full_task(), offset);
            let field = "workflow_task_completed_event_id";
            built.case(marker_kind(target), |event_id| Want::BadLink {
                event_id,
                field,
                target,
            })
        }
        C::MissingStart { pick } => missing_start(plan, pick),
        C::PayloadTooLarge { pick, extra } => payload_too_large(plan, pick, extra),
        C::TooManyEvents { pick } => too_many_events(plan, pick),
        _ => out_of_order(built, corruption),
    }
}

fn wrong_id(built: Built, found: impl FnOnce(u64) -> u64, which: usize) -> Case {
    let expected = built.next_id();
    let found = found(expected);
    let mut bad = built.event(some_event(&built, which));
    bad.event_id = found;
    Case {
        history: built.b.build(),
        bad,
        want: Want::IdGap { expected, found },
    }
}

fn activity_closed_twice(mut built: Built, pick: usize, how: usize) -> Case {
    let (scheduled, closed_by) = built.ensure_closed_activity(pick);
    let kind = match how % 4 {
        0 => activity_started_kind(scheduled),
        1 => activity_completed_kind(scheduled, closed_by - 1),
        2 => activity_timed_out_kind(scheduled, None),
        _ => activity_canceled_kind(scheduled, closed_by - 1),
    };
    built.case(kind, |event_id| Want::AlreadyClosed {
        event_id,
        closed_by,
    })
}

fn timer_closed_twice(mut built: Built, pick: usize, cancel: bool) -> Case {
    let (timer, closed_by) = built.ensure_closed_timer(pick);
    let kind = if cancel {
        EventKind::TimerCanceled(TimerCanceled {
            timer_id: timer.timer_id,
            started_event_id: timer.started,
            workflow_task_completed_event_id: built.full_task(),
        })
    } else {
        timer_fired_kind(&timer.timer_id, timer.started)
    };
    built.case(kind, |event_id| Want::AlreadyClosed {
        event_id,
        closed_by,
    })
}

fn activity_bad_link(mut built: Built, pick: usize, how: usize, offset: usize) -> Case {
    let started_field = "started_event_id";
    let activity = built.ensure_open_activity(pick);
    let scheduled = activity.scheduled;
    let (kind, field, target) = match how % 6 {
        0 => link_to_non_activity(&built, offset),
        1 => {
            let target = offset as u64;
            let kind = if offset.is_multiple_of(2) {
                activity_completed_kind(scheduled, target)
            } else {
                activity_timed_out_kind(scheduled, Some(target))
            };
            (kind, started_field, target)
        }
        2 => {
            let target = other_than(start_attempt(&mut built.b, scheduled, 1), offset);
            (
                activity_completed_kind(scheduled, target),
                started_field,
                target,
            )
        }
        3 => {
            let started = start_attempt(&mut built.b, scheduled, 1);
            built.b.add_signal("between", json!(null));
            (
                activity_completed_kind(scheduled, started),
                started_field,
                started,
            )
        }
        4 => {
            let target = other_than(activity.cancel_requested.unwrap_or(1), offset);
            (
                activity_canceled_kind(scheduled, target),
                "latest_cancel_requested_event_id",
                target,
            )
        }
        _ => {
            start_attempt(&mut built.b, scheduled, 1);
            (
                activity_started_kind(scheduled),
                "scheduled_event_id",
                scheduled,
            )
        }
    };
    built.case(kind, |event_id| Want::BadLink {
        event_id,
        field,
        target,
    })
}

/// An activity event whose scheduled_event_id is no ActivityTaskScheduled, or no event.
fn link_to_non_activity(built: &Built, offset: usize) -> (EventKind, &'static str, u64) {
    let next = built.next_id();
    let mut targets = vec![0, next, next + 1, u64::MAX];
    let events = built.b.history().events();
    let others = events
        .iter()
        .filter(|e| !matches!(e.kind, EventKind::ActivityTaskScheduled(_)));
    targets.extend(others.map(|e| e.event_id));
    let target = targets[(offset / 3) % targets.len()];
    let kind = match offset % 3 {
        0 => activity_started_kind(target),
        1 => activity_completed_kind(target, next - 1),
        _ => activity_timed_out_kind(target, None),
    };
    (kind, "scheduled_event_id", target)
}

fn timer_bad_link(mut built: Built, pick: usize, unknown_id: bool, offset: usize) -> Case {
    let timer = built.ensure_open_timer(pick);
    let (timer_id, target) = if unknown_id {
        ("no-such-timer", offset as u64)
    } else {
        (timer.timer_id.as_str(), other_than(timer.started, offset))
    };
    let kind = timer_fired_kind(timer_id, target);
    built.case(kind, |event_id| Want::BadLink {
        event_id,
        field: "started_event_id",
        target,
    })
}

fn workflow_task_bad_link(mut built: Built, completed: bool, offset: usize) -> Case {
    let scheduled = built.b.add_workflow_task_scheduled();
    let (kind, field, target) = if completed {
        let started = built.b.add_workflow_task_started();
        let target = other_than(started, offset);
        let kind = EventKind::WorkflowTaskCompleted(WorkflowTaskCompleted {
            scheduled_event_id: scheduled,
            started_event_id: target,
            identity: "worker".to_string(),
        });
        (kind, "started_event_id", target)
    } else {
        let target = other_than(scheduled, offset);
        let kind = EventKind::WorkflowTaskStarted(WorkflowTaskStarted {
            scheduled_event_id: target,
            identity: "worker".to_string(),
            request_id: "request".to_string(),
        });
        (kind, "scheduled_event_id", target)
    };
    built.case(kind, |event_id| Want::BadLink {
        event_id,
        field,
        target,
    })
}

fn out_of_order(mut built: Built, corruption: &Corruption) -> Case {
    use Corruption as C;
    let kind = match *corruption {
        C::CommandOutOfPlace { after, which } => {
            match after % 3 {
                0 => built.apply(&Step::Signal(Signal {
                    name: "between".into(),
                    input: json!([]),
                })),
                1 => built.apply(&Step::WorkflowTaskTimesOut),
                _ => {
                    built.b.add_workflow_task_scheduled();
                }
            }
            some_command(&built, which)
        }
        C::SecondWorkflowTaskScheduled { started } => {
            built.b.add_workflow_task_scheduled();
            if started {
                built.b.add_workflow_task_started();
            }
            task_scheduled_kind()
        }
        C::EventWhileWorkflowTaskStarted { which } => {
            built.b.add_workflow_task_scheduled();
            built.b.add_workflow_task_started();
            some_non_close_event(&built, which)
        }
        C::WorkflowTaskStepSkipped { completed: true } => {
            let scheduled = built.b.add_workflow_task_scheduled();
            let identity = "worker".to_string();
            let completed = WorkflowTaskCompleted {
                scheduled_event_id: scheduled,
                started_event_id: scheduled + 1,
                identity,
            };
            EventKind::WorkflowTaskCompleted(completed)
        }
        C::WorkflowTaskStepSkipped { completed: false } => {
            let (scheduled_event_id, identity) = (built.next_id() - 1, "worker".to_string());
            EventKind::WorkflowTaskStarted(WorkflowTaskStarted {
                scheduled_event_id,
                identity,
                request_id: "r".into(),
            })
        }
        C::SecondStart => built.b.history().events()[0].kind.clone(),
        C::DuplicateOpenId { pick, timer: false } => {
            let activity = built.ensure_open_activity(pick);
            activity_scheduled_kind(&activity.activity_id, built.full_task())
        }
        C::DuplicateOpenId { pick, timer: true } => {
            let timer = built.ensure_open_timer(pick);
            let workflow_task_completed_event_id = built.full_task();
            let (timer_id, start_to_fire_timeout_ms) = (timer.timer_id, 5);
            EventKind::TimerStarted(TimerStarted {
                timer_id,
                start_to_fire_timeout_ms,
                workflow_task_completed_event_id,
            })
        }
        _ => unreachable!("{corruption:?} is not an ordering corruption"),
    };
    built.case(kind, |event_id| Want::OutOfOrder { event_id })
}

fn missing_start(plan: &Plan, pick: usize) -> Case {
    let events = build(plan).events().to_vec();
    let kind = match events.len() {
        1 => task_scheduled_kind(),
        len => events[1 + pick % (len - 1)].kind.clone(),
    };
    let bad = Event::new(1, Timestamp(pick as u64), kind);
    Case {
        history: History::new("w", "r"),
        bad,
        want: Want::MissingStart { event_id: 1 },
    }
}

/// Event `i`, with an oversized payload, after events `..i` under a limit they just fit.
fn payload_too_large(plan: &Plan, pick: usize, extra: usize) -> Case {
    let full = build(plan);
    let events = full.events();
    let with_payloads: Vec<usize> = (0..events.len())
        .filter(|&i| with_payload(&events[i].kind, json!(0)).is_some())
        .collect();
    let i = with_payloads[pick % with_payloads.len()];
    let prefix_sizes = events[..i]
        .iter()
        .flat_map(|e| e.kind.payloads())
        .map(payload_size_bytes);
    let max = prefix_sizes.max().unwrap_or(0);
    let limits = HistoryLimits {
        payload_bytes_max: max,
        ..HistoryLimits::default()
    };
    let mut history = History::with_limits(full.workflow_id(), full.run_id(), limits);
    for event in &events[..i] {
        history
            .append(event.clone())
            .expect("payloads up to the limit are accepted");
    }
    let oversized = Value::String("x".repeat(max as usize + extra));
    let bytes = payload_size_bytes(&oversized);
    let kind =
        with_payload(&events[i].kind, oversized).expect("picked among events with a payload");
    let bad = Event::new(events[i].event_id, events[i].event_time, kind);
    Case {
        history,
        bad,
        want: Want::PayloadTooLarge {
            event_id: i as u64 + 1,
            bytes,
            max,
        },
    }
}

/// Event `k + 1` of a valid history, after events `..k` under a limit of `k` events.
fn too_many_events(plan: &Plan, pick: usize) -> Case {
    let full = build(plan);
    let k = pick % full.len();
    let limits = HistoryLimits {
        events_per_run_max: k as u64,
        ..HistoryLimits::default()
    };
    let mut history = History::with_limits(full.workflow_id(), full.run_id(), limits);
    for event in &full.events()[..k] {
        history
            .append(event.clone())
            .expect("events up to the limit are accepted");
    }
    let bad = full.events()[k].clone();
    Case {
        history,
        bad,
        want: Want::TooManyEvents {
            event_id: k as u64 + 1,
            max: k as u64,
        },
    }
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_well_formed_histories_round_trip_through_json_unchanged(plan in plan()) {
        let history = build(&plan);
        let json = history.to_json();
        let decoded = History::from_json(&json)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{json}")))?;
        prop_assert_eq!(&decoded, &history);
        prop_assert_eq!(decoded.to_json(), json, "encoding again gives other bytes");
        prop_assert_eq!(decoded.next_event_id(), history.next_event_id());
        prop_assert_eq!(decoded.is_closed(), history.is_closed());
        let events = history.events().to_vec();
        let from_events = History::from_events(history.workflow_id(), history.run_id(), events);
        prop_assert_eq!(from_events, Ok(history));
    }

    #[test]
    fn random_invalid_appends_are_rejected_with_the_right_error(
        plan in plan(),
        corruption in corruption(),
    ) {
        let Case { mut history, bad, want } = corrupt(&plan, &corruption);
        let (len, json) = (history.len(), history.to_json());
        let error = match history.append(bad.clone()) {
            Ok(()) => {
                return Err(TestCaseError::fail(format!("accepted {bad:?}, wanted {want:?}")));
            }
            Err(error) => error,
        };
        let (got, event_type) = observed(&error);
        prop_assert_eq!(got, want, "{} for {:?}", &error, &bad);
        if let Some(event_type) = event_type {
            prop_assert_eq!(event_type, bad.kind.name(), "{}", &error);
        }
        prop_assert_eq!(history.len(), len);
        prop_assert_eq!(history.to_json(), json);
        // the validator's state is unchanged too: the same event fails the same way
        prop_assert_eq!(history.append(bad), Err(error));
    }
}

fn sample<S: Strategy>(strategy: &S, runner: &mut TestRunner) -> S::Value {
    strategy
        .new_tree(runner)
        .expect("the strategy generates values")
        .current()
}

#[test]
fn the_history_generator_reaches_every_event_kind_it_promises() {
    let (mut runner, strategy) = (TestRunner::deterministic(), plan());
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        seen.extend(
            build(&sample(&strategy, &mut runner))
                .events()
                .iter()
                .map(|e| e.kind.name()),
        );
    }
    let promised = [
        "WorkflowExecutionStarted",
        "WorkflowTaskScheduled",
        "WorkflowTaskStarted",
        "WorkflowTaskCompleted",
        "WorkflowTaskTimedOut",
        "ActivityTaskScheduled",
        "ActivityTaskStarted",
        "ActivityTaskCompleted",
        "ActivityTaskFailed",
        "ActivityTaskTimedOut",
        "ActivityTaskCancelRequested",
        "ActivityTaskCanceled",
        "TimerStarted",
        "TimerFired",
        "TimerCanceled",
        "WorkflowExecutionSignaled",
        "MarkerRecorded",
        "WorkflowExecutionCompleted",
        "WorkflowExecutionTerminated",
    ];
    let missing: Vec<&str> = promised
        .into_iter()
        .filter(|name| !seen.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "the generator never produced {missing:?}"
    );
}

#[test]
fn the_corruption_generator_reaches_every_history_error_variant() {
    let mut runner = TestRunner::deterministic();
    let (plans, corruptions) = (plan(), corruption());
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        let case = corrupt(
            &sample(&plans, &mut runner),
            &sample(&corruptions, &mut runner),
        );
        seen.insert(case.want.variant());
    }
    let all = [
        "EventIdGap",
        "AfterClose",
        "AlreadyClosed",
        "BadLink",
        "OutOfOrder",
        "MissingStart",
        "PayloadTooLarge",
        "TooManyEvents",
    ];
    let missing: Vec<&str> = all
        .into_iter()
        .filter(|name| !seen.contains(name))
        .collect();
    assert!(missing.is_empty(), "no corruption wanted {missing:?}");
}

// ---------------------------------------------------------------------------
// One hand-built case per error variant, message included
// ---------------------------------------------------------------------------

/// Appends `kind` as event `event_id` at the builder's time; the error it gives.
fn reject(history: &mut History, event_id: u64, kind: EventKind) -> HistoryError {
    let time = Timestamp(1_704_067_200_000);
    let len = history.len();
    let error = history
        .append(Event::new(event_id, time, kind))
        .expect_err("the event is invalid");
    assert_eq!(history.len(), len, "a rejected event was kept");
    error
}

fn assert_says(error: &HistoryError, fragments: &[&str]) {
    let message = error.to_string();
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "{message:?} does not say {fragment:?}"
        );
    }
}

#[test]
fn an_event_id_that_skips_ahead_is_rejected_naming_the_expected_and_found_ids() {
    let mut builder = HistoryBuilder::new("greet", json!("world"));
    builder.add_full_workflow_task();
    let mut history = builder.build();
    let error = reject(&mut history, 7, signal_kind());
    assert_eq!(
        error,
        HistoryError::EventIdGap {
            expected: 5,
            found: 7
        }
    );
    assert_says(
        &error,
        &["event id 7", "expected event id 5", "without gaps"],
    );
}

#[test]
fn an_event_after_the_terminal_event_is_rejected_naming_the_terminal_event() {
    let mut builder = HistoryBuilder::new("greet", json!("world"));
    builder.add_full_workflow_task();
    let closed_by = builder.add_workflow_execution_terminated("operator");
    let mut history = builder.build();
    let error = reject(&mut history, 6, signal_kind());
    let event_type = "WorkflowExecutionSignaled";
    assert_eq!(
        error,
        HistoryError::AfterClose {
            event_id: 6,
            event_type,
            closed_by
        }
    );
    assert_says(
        &error,
        &[
            "event 6 (WorkflowExecutionSignaled)",
            "already closed by event 5",
        ],
    );
}

#[test]
fn firing_a_fired_timer_again_is_rejected_naming_its_first_close() {
    let mut builder = HistoryBuilder::new("sleepy", json!(null));
    builder.add_full_workflow_task();
    let started = builder.add_timer_started("nap", 1_000);
    let fired = builder.add_timer_fired("nap", started);
    let mut history = builder.build();
    let error = reject(&mut history, 7, timer_fired_kind("nap", started));
    assert!(
        matches!(error, HistoryError::AlreadyClosed { event_id: 7, closed_by, .. } if closed_by == fired)
    );
    assert_says(
        &error,
        &[
            "event 7 (TimerFired)",
            "timer \"nap\" (event 5)",
            "already closed by event 6",
        ],
    );
}

#[test]
fn completing_a_timed_out_activity_is_rejected_naming_its_first_close() {
    let mut builder = HistoryBuilder::new("one_activity", json!(null));
    builder.add_full_workflow_task();
    let scheduled = builder.add_activity_scheduled("1", "compose", json!("x"));
    let timeout = (
        TimeoutType::ScheduleToStart,
        RetryState::NonRetryableFailure,
    );
    let timed_out = builder.add_activity_timed_out(scheduled, None, timeout.0, timeout.1);
    let mut history = builder.build();
    let error = reject(&mut history, 7, activity_started_kind(scheduled));
    assert!(
        matches!(error, HistoryError::AlreadyClosed { event_id: 7, closed_by, .. } if closed_by == timed_out)
    );
    assert_says(
        &error,
        &[
            "event 7 (ActivityTaskStarted)",
            "activity \"1\" (event 5)",
            "already closed by event 6",
        ],
    );
}

#[test]
fn an_activity_outcome_pointing_at_a_timer_is_rejected_as_a_bad_link() {
    let mut builder = HistoryBuilder::new("mixed", json!(null));
    builder.add_full_workflow_task();
    let timer = builder.add_timer_started("nap", 1_000);
    let mut history = builder.build();
    let error = reject(&mut history, 6, activity_timed_out_kind(timer, None));
    assert!(matches!(
        error,
        HistoryError::BadLink {
            event_id: 6,
            field: "scheduled_event_id",
            target: 5,
            ..
        }
    ));
    assert_says(
        &error,
        &[
            "event 6 (ActivityTaskTimedOut)",
            "scheduled_event_id = 5",
            "is not an ActivityTaskScheduled",
        ],
    );
}

#[test]
fn a_command_that_does_not_directly_follow_its_workflow_task_completed_is_out_of_order() {
    let mut builder = HistoryBuilder::new("greet", json!(null));
    let completed = builder.add_full_workflow_task();
    builder.add_signal("poke", json!(1));
    let mut history = builder.build();
    let error = reject(&mut history, 6, marker_kind(completed));
    assert!(matches!(
        error,
        HistoryError::OutOfOrder {
            event_id: 6,
            event_type: "MarkerRecorded",
            ..
        }
    ));
    assert_says(
        &error,
        &[
            "event 6 (MarkerRecorded)",
            "must directly follow the WorkflowTaskCompleted",
        ],
    );
}

#[test]
fn a_history_that_does_not_begin_with_workflow_execution_started_is_rejected() {
    let mut history = History::new("greet", "run-1");
    let error = reject(&mut history, 1, task_scheduled_kind());
    let event_type = "WorkflowTaskScheduled";
    assert_eq!(
        error,
        HistoryError::MissingStart {
            event_id: 1,
            event_type
        }
    );
    assert_says(
        &error,
        &[
            "event 1 (WorkflowTaskScheduled)",
            "must begin with WorkflowExecutionStarted",
        ],
    );
}

#[test]
fn an_oversized_payload_is_rejected_naming_its_size_and_the_limit() {
    let limits = HistoryLimits {
        payload_bytes_max: 16,
        ..HistoryLimits::default()
    };
    let mut history = History::with_limits("greet", "run-1", limits);
    let start = HistoryBuilder::new("greet", json!(null)).build().events()[0].clone();
    history.append(start).expect("a 4-byte input fits");
    let kind = with_payload(&signal_kind(), json!("x".repeat(20))).expect("a signal has an input");
    let error = reject(&mut history, 2, kind);
    let event_type = "WorkflowExecutionSignaled";
    assert_eq!(
        error,
        HistoryError::PayloadTooLarge {
            event_id: 2,
            event_type,
            bytes: 22,
            max: 16
        }
    );
    assert_says(
        &error,
        &[
            "event 2 (WorkflowExecutionSignaled)",
            "22 bytes",
            "limit of 16 bytes",
        ],
    );
}

#[test]
fn the_event_past_the_events_per_run_limit_is_rejected_naming_the_limit() {
    let full = HistoryBuilder::new("greet", json!(null)).build();
    let limits = HistoryLimits {
        events_per_run_max: 1,
        ..HistoryLimits::default()
    };
    let mut history = History::with_limits("greet", "run-1", limits);
    history
        .append(full.events()[0].clone())
        .expect("the first event is within the limit");
    let error = reject(&mut history, 2, task_scheduled_kind());
    assert_eq!(
        error,
        HistoryError::TooManyEvents {
            event_id: 2,
            max: 1
        }
    );
    assert_says(&error, &["event 2", "at most 1 events"]);
}

// ---------------------------------------------------------------------------
// Bugs the properties found (fixed): each test pins the behaviour wanted.
// ---------------------------------------------------------------------------

#[test]
fn a_float_payload_reads_back_bit_for_bit() {
    let mut builder = HistoryBuilder::new("measure", json!(-1.81996730402717e-179));
    builder.add_full_workflow_task();
    let history = builder.build();
    let decoded = History::from_json(&history.to_json()).expect("a canonical history decodes");
    assert_eq!(decoded, history);
}

#[test]
fn a_null_detail_payload_reads_back_as_some_null() {
    let mut builder = HistoryBuilder::new("greet", json!(null));
    builder.add(EventKind::WorkflowExecutionTerminated(
        WorkflowExecutionTerminated {
            reason: "operator".to_string(),
            details: Some(Value::Null),
            identity: "client".to_string(),
        },
    ));
    let history = builder.build();
    let decoded = History::from_json(&history.to_json()).expect("a canonical history decodes");
    assert_eq!(decoded, history);
}

#[test]
fn oversized_failure_details_are_rejected_as_too_large_payloads() {
    let mut builder = HistoryBuilder::new("greet", json!(null));
    builder.add_full_workflow_task();
    let scheduled = builder.add_activity_scheduled("1", "compose", json!(1));
    builder.add_activity_started(scheduled, 1, None);
    let valid = builder.build();
    let limits = HistoryLimits {
        payload_bytes_max: 16,
        ..HistoryLimits::default()
    };
    let mut history = History::with_limits("greet", "run-1", limits);
    for event in valid.events() {
        history
            .append(event.clone())
            .expect("payloads of at most 4 bytes fit");
    }
    let failure = Failure {
        details: Some(json!("x".repeat(100))),
        ..Failure::new("Boom", "no")
    };
    let kind = EventKind::ActivityTaskFailed(ActivityTaskFailed {
        scheduled_event_id: scheduled,
        started_event_id: 6,
        failure,
        retry_state: RetryState::NonRetryableFailure,
        identity: "worker".to_string(),
    });
    let error = reject(&mut history, 7, kind);
    let event_type = "ActivityTaskFailed";
    assert_eq!(
        error,
        HistoryError::PayloadTooLarge {
            event_id: 7,
            event_type,
            bytes: 102,
            max: 16
        }
    );
}

#[test]
fn an_event_time_after_year_9999_is_rejected_because_it_cannot_be_written() {
    let mut history = HistoryBuilder::new("greet", json!(null)).build();
    let year_10000 = Timestamp(253_402_300_800_000);
    let error = history
        .append(Event::new(2, year_10000, signal_kind()))
        .unwrap_err();
    assert_eq!(
        error,
        HistoryError::TimeOutOfRange {
            event_id: 2,
            time_ms: year_10000.0
        }
    );
    let last = Timestamp(253_402_300_799_999);
    history
        .append(Event::new(2, last, signal_kind()))
        .expect("the last millisecond of 9999 is writable");
    let decoded = History::from_json(&history.to_json()).expect("a canonical history decodes");
    assert_eq!(decoded, history);
}
