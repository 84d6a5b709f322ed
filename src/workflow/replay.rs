//! `Replayer`: replays a recorded history against today's workflow code.
//!
//! ```
//! use retrace::history::HistoryBuilder;
//! use retrace::workflow::{Replayer, RunResult, WorkflowContext, WorkflowRegistry};
//!
//! let mut registry = WorkflowRegistry::new();
//! registry.register_fn("double", |_ctx: WorkflowContext, n: u64| async move { Ok(n * 2) });
//!
//! let mut builder = HistoryBuilder::new("double", serde_json::json!(21));
//! builder.add_full_workflow_task();
//! builder.add_workflow_execution_completed(serde_json::json!(42));
//!
//! let outcome = Replayer::new(registry).replay(&builder.build()).expect("the code matches");
//! assert_eq!(outcome.result, Some(RunResult::Completed(serde_json::json!(42))));
//! ```

use std::fmt;
use std::path::Path;

use super::command::Command;
use super::error::PayloadError;
use super::executor::{RunResult, StateDigest, WorkflowExecutor};
use super::registry::WorkflowRegistry;
use crate::history::{DecodeError, Event, EventKind, History};

/// The code did not reproduce the recorded history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonDeterminism {
    /// The event where code and history part.
    pub event_id: u64,
    /// What the history has there.
    pub history: String,
    /// What the code produced there.
    pub code: String,
    /// The part of the key that differs: "command kind", "stable id",
    /// "type name" or "input hash".
    pub compared: &'static str,
}

impl fmt::Display for NonDeterminism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "non-determinism at event {}: history has {}, code produced {} (compared: {})",
            self.event_id, self.history, self.code, self.compared
        )
    }
}

/// Why a history could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The history file could not be read.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The code does not reproduce the history.
    #[error("{0}")]
    NonDeterminism(NonDeterminism),
    /// The history's workflow type is not registered.
    #[error("unknown workflow type {workflow_type:?}; registered: {known:?}")]
    UnknownWorkflowType {
        /// The type in the history.
        workflow_type: String,
        /// The registered types.
        known: Vec<String>,
    },
    /// The start event's input does not fit the workflow's Input type.
    #[error(transparent)]
    Input(#[from] PayloadError),
    /// The workflow code panicked.
    #[error("workflow code panicked at the workflow task of event {event_id}: {message}")]
    Panicked {
        /// The `WorkflowTaskStarted` being processed.
        event_id: u64,
        /// The panic's message.
        message: String,
    },
    /// Events were fed out of order.
    #[error("expected event {expected} next, got event {found}")]
    EventOutOfSequence {
        /// The id the executor expected.
        expected: u64,
        /// The id it got.
        found: u64,
    },
}

impl ReplayError {
    /// The non-determinism, if that is what this is.
    pub fn non_determinism(&self) -> Option<&NonDeterminism> {
        match self {
            ReplayError::NonDeterminism(nd) => Some(nd),
            _ => None,
        }
    }
}

/// What a replay found.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayOutcome {
    /// How the code ended the run (`None` if the history ends before it did).
    pub result: Option<RunResult>,
    /// Digest of the run's state.
    pub digest: StateDigest,
    /// Commands of a live last workflow task (the history ends at its
    /// `WorkflowTaskStarted`): what the code would send now.
    pub pending_commands: Vec<Command>,
}

/// Replays histories against a registry of workflow code.
#[derive(Clone, Debug)]
pub struct Replayer {
    registry: WorkflowRegistry,
}

impl Replayer {
    /// A replayer for the given workflow types.
    pub fn new(registry: WorkflowRegistry) -> Replayer {
        Replayer { registry }
    }

    /// Replays a whole history from scratch.
    pub fn replay(&self, history: &History) -> Result<ReplayOutcome, ReplayError> {
        let mut executor =
            WorkflowExecutor::new(&self.registry, history.workflow_id(), history.run_id());
        let activation = executor.apply(history.events())?;
        finish(&executor, history.events(), activation.commands)
    }

    /// Reads a canonical JSON history file and replays it.
    pub fn replay_file(&self, path: impl AsRef<Path>) -> Result<ReplayOutcome, ReplayError> {
        let history = History::from_file(path)?;
        self.replay(&history)
    }

    /// Replays one workflow task at a time, keeping the executor between tasks,
    /// as a worker with the run cached does.
    pub fn replay_incrementally(&self, history: &History) -> Result<ReplayOutcome, ReplayError> {
        self.replay_with_eviction(history, None)
    }

    /// Replays task by task, but evicts the run after `evict_after` tasks: a
    /// fresh executor replays everything so far in one go, then continues task
    /// by task, as a worker does after a cache miss.
    pub fn replay_with_eviction(
        &self,
        history: &History,
        evict_after: Option<usize>,
    ) -> Result<ReplayOutcome, ReplayError> {
        let events = history.events();
        let (workflow_id, run_id) = (history.workflow_id(), history.run_id());
        let mut executor = WorkflowExecutor::new(&self.registry, workflow_id, run_id);
        let mut commands = None;
        let mut start = 0;
        for (index, end) in workflow_task_boundaries(events).into_iter().enumerate() {
            if Some(index) == evict_after {
                executor = WorkflowExecutor::new(&self.registry, workflow_id, run_id);
                commands = executor.apply(&events[..end])?.commands;
            } else {
                commands = executor.apply(&events[start..end])?.commands;
            }
            start = end;
        }
        finish(&executor, events, commands)
    }

    /// Replays `history` from scratch, incrementally, and with an eviction
    /// halfway, and checks that all three agree on result and digest.
    pub fn replay_three_ways(&self, history: &History) -> Result<ReplayOutcome, ReplayError> {
        let scratch = self.replay(history)?;
        let incremental = self.replay_incrementally(history)?;
        let tasks = workflow_task_boundaries(history.events()).len();
        let evicted = self.replay_with_eviction(history, Some(tasks / 2))?;
        assert_eq!(
            scratch, incremental,
            "incremental replay differs from replay from scratch"
        );
        assert_eq!(
            scratch, evicted,
            "replay after eviction differs from replay from scratch"
        );
        Ok(scratch)
    }
}

fn finish(
    executor: &WorkflowExecutor,
    events: &[Event],
    live: Option<Vec<Command>>,
) -> Result<ReplayOutcome, ReplayError> {
    if executor.has_leftover_commands() {
        let extra = executor.unmatched_commands();
        let end = events.last().map_or(1, |e| e.event_id + 1);
        return Err(ReplayError::NonDeterminism(NonDeterminism {
            event_id: end,
            history: "nothing (the history ends)".to_string(),
            code: extra[0].key().to_string(),
            compared: "command kind",
        }));
    }
    Ok(ReplayOutcome {
        result: executor.result().cloned(),
        digest: executor.digest(),
        pending_commands: live.unwrap_or_default(),
    })
}

/// Ends (exclusive indexes) of the slices a worker would see if the run stayed
/// cached: each slice ends after the command events of one completed workflow
/// task; the last slice runs to the end of the history.
pub fn workflow_task_boundaries(events: &[Event]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut in_commands = false;
    for (index, event) in events.iter().enumerate() {
        let is_command = event.kind.command_of().is_some();
        if matches!(event.kind, EventKind::WorkflowTaskCompleted(_)) {
            in_commands = true;
        } else if in_commands && !is_command {
            ends.push(index);
            in_commands = false;
        }
    }
    if ends.last() != Some(&events.len()) {
        ends.push(events.len());
    }
    ends
}
