//! Well-formedness of a history, checked one event at a time.
//!
//! The rules, each with its own error:
//!
//! | rule                                                      | error            |
//! |-----------------------------------------------------------|------------------|
//! | ids are 1..n without gaps                                 | `EventIdGap`     |
//! | the first event is `WorkflowExecutionStarted`, once        | `MissingStart` / `OutOfOrder` |
//! | nothing follows a terminal event                          | `AfterClose`     |
//! | one workflow task at a time: Scheduled, Started, then one of Completed / TimedOut / Failed, and nothing but those (or the run's terminate / timeout) while it is started | `OutOfOrder` |
//! | command events directly follow the `WorkflowTaskCompleted` they name | `OutOfOrder` |
//! | outcome events point at the right kind of event           | `BadLink`        |
//! | at most one start, cancel request and close per activity, one close per timer | `AlreadyClosed` / `BadLink` |
//! | size limits (events per run, bytes per payload)            | `TooManyEvents` / `PayloadTooLarge` |
//!
//! The validator is pure (no I/O, no clock) and O(1) per event apart from the
//! payload size check.

use std::collections::BTreeMap;

use super::HistoryLimits;
use super::event::{Event, EventKind};

/// Why an event cannot be appended to a history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// Ids must run 1..n without gaps.
    #[error("event id {found}: expected event id {expected} (ids run 1..n without gaps)")]
    EventIdGap {
        /// The id the next event must have.
        expected: u64,
        /// The id it had.
        found: u64,
    },
    /// The first event must be `WorkflowExecutionStarted`.
    #[error("event {event_id} ({event_type}): a history must begin with WorkflowExecutionStarted")]
    MissingStart {
        /// The offending event.
        event_id: u64,
        /// Its type.
        event_type: &'static str,
    },
    /// Nothing may follow a terminal event.
    #[error("event {event_id} ({event_type}): the run was already closed by event {closed_by}")]
    AfterClose {
        /// The offending event.
        event_id: u64,
        /// Its type.
        event_type: &'static str,
        /// The terminal event.
        closed_by: u64,
    },
    /// A link (`scheduled_event_id`, `started_event_id`, ...) points at the wrong event.
    #[error("event {event_id} ({event_type}): {field} = {target} {problem}")]
    BadLink {
        /// The offending event.
        event_id: u64,
        /// Its type.
        event_type: &'static str,
        /// The attribute holding the link.
        field: &'static str,
        /// The event id it points at.
        target: u64,
        /// What is wrong with it.
        problem: String,
    },
    /// An activity or timer was closed twice.
    #[error("event {event_id} ({event_type}): {what} was already closed by event {closed_by}")]
    AlreadyClosed {
        /// The offending event.
        event_id: u64,
        /// Its type.
        event_type: &'static str,
        /// Which activity or timer.
        what: String,
        /// The event that closed it.
        closed_by: u64,
    },
    /// The event comes at a point where it cannot.
    #[error("event {event_id} ({event_type}): {reason}")]
    OutOfOrder {
        /// The offending event.
        event_id: u64,
        /// Its type.
        event_type: &'static str,
        /// Why it cannot come here.
        reason: String,
    },
    /// The event's time cannot be written (after year 9999).
    #[error(
        "event {event_id}: time {time_ms} ms is after 9999-12-31, the latest a history can hold"
    )]
    TimeOutOfRange {
        /// The offending event.
        event_id: u64,
        /// Its time, in ms since the epoch.
        time_ms: u64,
    },
    /// The run has as many events as it may have.
    #[error("event {event_id}: a run may have at most {max} events")]
    TooManyEvents {
        /// The offending event.
        event_id: u64,
        /// The limit.
        max: u64,
    },
    /// A payload nests deeper than allowed.
    #[error(
        "event {event_id} ({event_type}): a payload nested {depth} levels deep exceeds the limit of {max}"
    )]
    PayloadTooDeep {
        /// The offending event.
        event_id: u64,
        /// Its type.
        event_type: &'static str,
        /// How deep it nests.
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// A payload is bigger than allowed.
    #[error(
        "event {event_id} ({event_type}): a payload of {bytes} bytes exceeds the limit of {max} bytes"
    )]
    PayloadTooLarge {
        /// The offending event.
        event_id: u64,
        /// Its type.
        event_type: &'static str,
        /// The payload's encoded size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaskState {
    Idle,
    Scheduled { scheduled: u64 },
    Started { scheduled: u64, started: u64 },
}

#[derive(Clone, Debug)]
struct ActivityEntry {
    activity_id: String,
    started: Option<u64>,
    cancel_requested: Option<u64>,
    closed: Option<u64>,
}

#[derive(Clone, Debug)]
struct TimerEntry {
    started: u64,
    closed: Option<u64>,
}

/// Incremental validator: the state needed to check the next event.
#[derive(Clone, Debug)]
pub struct Validator {
    limits: HistoryLimits,
    next_event_id: u64,
    closed_by: Option<u64>,
    task: TaskState,
    /// The `WorkflowTaskCompleted` whose command events may still follow.
    command_run: Option<u64>,
    cancel_requested: bool,
    activities: BTreeMap<u64, ActivityEntry>,
    /// Open activities by activity id.
    activity_ids: BTreeMap<String, u64>,
    /// Timers by timer id (the latest one with that id).
    timers: BTreeMap<String, TimerEntry>,
    /// Signals (true) and cancel requests (false) to other workflows by
    /// initiated event id, with the event that closed each.
    externals: BTreeMap<u64, (bool, Option<u64>)>,
    /// Child workflows by initiated event id.
    children: BTreeMap<u64, ChildEntry>,
    /// Updates by update id: their accepted event and completed event.
    updates: BTreeMap<String, (u64, Option<u64>)>,
}

/// A child workflow's events so far.
#[derive(Clone, Copy, Debug, Default)]
struct ChildEntry {
    started: Option<u64>,
    closed: Option<u64>,
}

struct Ctx<'a> {
    event: &'a Event,
}

impl Ctx<'_> {
    fn event_type(&self) -> &'static str {
        self.event.kind.name()
    }

    fn out_of_order(&self, reason: impl Into<String>) -> HistoryError {
        HistoryError::OutOfOrder {
            event_id: self.event.event_id,
            event_type: self.event_type(),
            reason: reason.into(),
        }
    }

    fn bad_link(
        &self,
        field: &'static str,
        target: u64,
        problem: impl Into<String>,
    ) -> HistoryError {
        HistoryError::BadLink {
            event_id: self.event.event_id,
            event_type: self.event_type(),
            field,
            target,
            problem: problem.into(),
        }
    }
}

impl Validator {
    /// A validator for an empty history.
    pub fn new(limits: HistoryLimits) -> Validator {
        Validator {
            limits,
            next_event_id: 1,
            closed_by: None,
            task: TaskState::Idle,
            command_run: None,
            cancel_requested: false,
            activities: BTreeMap::new(),
            activity_ids: BTreeMap::new(),
            timers: BTreeMap::new(),
            externals: BTreeMap::new(),
            children: BTreeMap::new(),
            updates: BTreeMap::new(),
        }
    }

    /// The id the next event must carry.
    pub fn next_event_id(&self) -> u64 {
        self.next_event_id
    }

    /// The terminal event, if the run is closed.
    pub fn closed_by(&self) -> Option<u64> {
        self.closed_by
    }

    /// Checks `event` as the next event and, if it is valid, records it.
    /// On error nothing changes.
    /// Every check runs before the first change, so a rejected event leaves the
    /// validator as it was.
    pub fn check_and_apply(&mut self, event: &Event) -> Result<(), HistoryError> {
        let ctx = Ctx { event };
        self.check_frame(&ctx)?;
        self.check_size(&ctx)?;
        self.check_task_window(&ctx)?;
        self.check_command_run(&ctx)?;
        self.apply_kind(&ctx)?;
        let is_command = event.kind.command_of().is_some();
        let opens_run = matches!(event.kind, EventKind::WorkflowTaskCompleted(_));
        if !is_command && !opens_run {
            self.command_run = None;
        }
        if event.kind.is_terminal() {
            self.closed_by = Some(event.event_id);
        }
        self.next_event_id += 1;
        debug_assert_eq!(self.next_event_id, event.event_id + 1);
        Ok(())
    }

    fn check_frame(&self, ctx: &Ctx<'_>) -> Result<(), HistoryError> {
        let event = ctx.event;
        if event.event_id != self.next_event_id {
            return Err(HistoryError::EventIdGap {
                expected: self.next_event_id,
                found: event.event_id,
            });
        }
        if let Some(closed_by) = self.closed_by {
            return Err(HistoryError::AfterClose {
                event_id: event.event_id,
                event_type: ctx.event_type(),
                closed_by,
            });
        }
        let is_start = matches!(event.kind, EventKind::WorkflowExecutionStarted(_));
        if event.event_id == 1 && !is_start {
            return Err(HistoryError::MissingStart {
                event_id: event.event_id,
                event_type: ctx.event_type(),
            });
        }
        if event.event_id != 1 && is_start {
            return Err(ctx.out_of_order("WorkflowExecutionStarted may only be event 1"));
        }
        Ok(())
    }

    fn check_size(&self, ctx: &Ctx<'_>) -> Result<(), HistoryError> {
        let event = ctx.event;
        if event.event_time > crate::types::TIMESTAMP_MAX {
            return Err(HistoryError::TimeOutOfRange {
                event_id: event.event_id,
                time_ms: event.event_time.0,
            });
        }
        if event.event_id > self.limits.events_per_run_max {
            return Err(HistoryError::TooManyEvents {
                event_id: event.event_id,
                max: self.limits.events_per_run_max,
            });
        }
        for payload in event.kind.payloads() {
            let depth = super::payload_depth(payload);
            if depth > super::PAYLOAD_DEPTH_MAX {
                return Err(HistoryError::PayloadTooDeep {
                    event_id: event.event_id,
                    event_type: ctx.event_type(),
                    depth,
                    max: super::PAYLOAD_DEPTH_MAX,
                });
            }
            let bytes = super::payload_size_bytes(payload);
            if bytes > self.limits.payload_bytes_max {
                return Err(HistoryError::PayloadTooLarge {
                    event_id: event.event_id,
                    event_type: ctx.event_type(),
                    bytes,
                    max: self.limits.payload_bytes_max,
                });
            }
        }
        Ok(())
    }

    /// While a workflow task is started, only its close (or the run's end) may come.
    fn check_task_window(&self, ctx: &Ctx<'_>) -> Result<(), HistoryError> {
        let TaskState::Started { .. } = self.task else {
            return Ok(());
        };
        use EventKind::*;
        match ctx.event.kind {
            WorkflowTaskCompleted(_) | WorkflowTaskTimedOut(_) | WorkflowTaskFailed(_) => Ok(()),
            WorkflowExecutionTerminated(_) | WorkflowExecutionTimedOut(_) => Ok(()),
            _ => Err(ctx.out_of_order(
                "a workflow task is started: only its close may come next \
                 (events that arrive meanwhile are written after it)",
            )),
        }
    }

    fn check_command_run(&self, ctx: &Ctx<'_>) -> Result<(), HistoryError> {
        let Some(completed) = ctx.event.kind.command_of() else {
            return Ok(());
        };
        match self.command_run {
            Some(run) if run == completed => Ok(()),
            Some(run) => Err(ctx.bad_link(
                "workflow_task_completed_event_id",
                completed,
                format!("is not the workflow task that just completed (event {run})"),
            )),
            None => Err(ctx.out_of_order(format!(
                "command events must directly follow the WorkflowTaskCompleted they name \
                 (workflow_task_completed_event_id = {completed})"
            ))),
        }
    }

    fn apply_kind(&mut self, ctx: &Ctx<'_>) -> Result<(), HistoryError> {
        use EventKind::*;
        let event_id = ctx.event.event_id;
        match &ctx.event.kind {
            WorkflowExecutionStarted(_) => Ok(()),
            WorkflowTaskScheduled(_) => self.on_task_scheduled(ctx),
            WorkflowTaskStarted(a) => self.on_task_started(ctx, a.scheduled_event_id),
            WorkflowTaskCompleted(a) => {
                self.on_task_closed(ctx, a.scheduled_event_id, a.started_event_id)?;
                self.command_run = Some(event_id);
                Ok(())
            }
            WorkflowTaskTimedOut(a) => {
                self.on_task_closed(ctx, a.scheduled_event_id, a.started_event_id)
            }
            WorkflowTaskFailed(a) => {
                self.on_task_closed(ctx, a.scheduled_event_id, a.started_event_id)
            }
            ActivityTaskScheduled(a) => self.on_activity_scheduled(ctx, &a.activity_id),
            ActivityTaskStarted(a) => self.on_activity_started(ctx, a.scheduled_event_id),
            ActivityTaskCompleted(a) => {
                self.on_activity_closed(ctx, a.scheduled_event_id, Some(a.started_event_id))
            }
            ActivityTaskFailed(a) => {
                self.on_activity_closed(ctx, a.scheduled_event_id, Some(a.started_event_id))
            }
            ActivityTaskTimedOut(a) => {
                self.on_activity_closed(ctx, a.scheduled_event_id, a.started_event_id)
            }
            ActivityTaskCancelRequested(a) => {
                self.on_activity_cancel_requested(ctx, a.scheduled_event_id)
            }
            ActivityTaskCanceled(a) => self.on_activity_canceled(ctx, a),
            TimerStarted(a) => self.on_timer_started(ctx, &a.timer_id),
            TimerFired(a) => self.on_timer_closed(ctx, &a.timer_id, a.started_event_id),
            TimerCanceled(a) => self.on_timer_closed(ctx, &a.timer_id, a.started_event_id),
            WorkflowExecutionCancelRequested(_) => {
                self.cancel_requested = true;
                Ok(())
            }
            WorkflowExecutionCanceled(_) if !self.cancel_requested => {
                Err(ctx.out_of_order("the run was canceled but no cancel was requested"))
            }
            WorkflowExecutionSignaled(_)
            | MarkerRecorded(_)
            | UpsertWorkflowSearchAttributes(_)
            | WorkflowPropertiesModified(_)
            | WorkflowExecutionCompleted(_)
            | WorkflowExecutionFailed(_)
            | WorkflowExecutionTimedOut(_)
            | WorkflowExecutionCanceled(_)
            | WorkflowExecutionTerminated(_)
            | WorkflowExecutionContinuedAsNew(_) => Ok(()),
            SignalExternalWorkflowExecutionInitiated(_)
            | RequestCancelExternalWorkflowExecutionInitiated(_)
            | ExternalWorkflowExecutionSignaled(_)
            | SignalExternalWorkflowExecutionFailed(_)
            | ExternalWorkflowExecutionCancelRequested(_)
            | RequestCancelExternalWorkflowExecutionFailed(_)
            | StartChildWorkflowExecutionInitiated(_)
            | StartChildWorkflowExecutionFailed(_)
            | ChildWorkflowExecutionStarted(_)
            | ChildWorkflowExecutionCompleted(_)
            | ChildWorkflowExecutionFailed(_)
            | ChildWorkflowExecutionCanceled(_)
            | ChildWorkflowExecutionTimedOut(_)
            | ChildWorkflowExecutionTerminated(_) => self.apply_link_kind(ctx),
            WorkflowExecutionUpdateAccepted(a) => self.on_update_accepted(ctx, &a.update_id),
            WorkflowExecutionUpdateCompleted(a) => {
                self.on_update_completed(ctx, &a.update_id, a.accepted_event_id)
            }
        }
    }

    /// An update id is accepted once per run.
    fn on_update_accepted(&mut self, ctx: &Ctx<'_>, update_id: &str) -> Result<(), HistoryError> {
        if let Some((accepted, _)) = self.updates.get(update_id) {
            return Err(ctx.out_of_order(format!(
                "update {update_id:?} was already accepted at event {accepted}"
            )));
        }
        let entry = (ctx.event.event_id, None);
        self.updates.insert(update_id.to_string(), entry);
        Ok(())
    }

    /// An update completes once, after its acceptance (which it names).
    fn on_update_completed(
        &mut self,
        ctx: &Ctx<'_>,
        update_id: &str,
        accepted_event_id: u64,
    ) -> Result<(), HistoryError> {
        let field = "accepted_event_id";
        let Some((accepted, completed)) = self.updates.get_mut(update_id) else {
            let problem = format!("no update {update_id:?} was accepted before");
            return Err(ctx.bad_link(field, accepted_event_id, problem));
        };
        if *accepted != accepted_event_id {
            let problem = format!("update {update_id:?} was accepted at event {accepted}");
            return Err(ctx.bad_link(field, accepted_event_id, problem));
        }
        if let Some(completed) = completed {
            return Err(ctx.out_of_order(format!(
                "update {update_id:?} already completed at event {completed}"
            )));
        }
        *completed = Some(ctx.event.event_id);
        Ok(())
    }

    /// Requests to other workflows and child workflows: their initiations,
    /// and the outcomes that name them.
    fn apply_link_kind(&mut self, ctx: &Ctx<'_>) -> Result<(), HistoryError> {
        use EventKind::*;
        let event_id = ctx.event.event_id;
        match &ctx.event.kind {
            SignalExternalWorkflowExecutionInitiated(_) => {
                self.externals.insert(event_id, (true, None));
                Ok(())
            }
            RequestCancelExternalWorkflowExecutionInitiated(_) => {
                self.externals.insert(event_id, (false, None));
                Ok(())
            }
            ExternalWorkflowExecutionSignaled(a) => {
                self.on_external_closed(ctx, a.initiated_event_id, true)
            }
            SignalExternalWorkflowExecutionFailed(a) => {
                self.on_external_closed(ctx, a.initiated_event_id, true)
            }
            ExternalWorkflowExecutionCancelRequested(a) => {
                self.on_external_closed(ctx, a.initiated_event_id, false)
            }
            RequestCancelExternalWorkflowExecutionFailed(a) => {
                self.on_external_closed(ctx, a.initiated_event_id, false)
            }
            StartChildWorkflowExecutionInitiated(_) => {
                self.children.insert(event_id, ChildEntry::default());
                Ok(())
            }
            StartChildWorkflowExecutionFailed(a) => {
                self.on_child_event(ctx, a.initiated_event_id, None)
            }
            ChildWorkflowExecutionStarted(a) => {
                self.on_child_event(ctx, a.initiated_event_id, None)
            }
            ChildWorkflowExecutionCompleted(a) => {
                self.on_child_event(ctx, a.initiated_event_id, Some(a.started_event_id))
            }
            ChildWorkflowExecutionFailed(a) => {
                self.on_child_event(ctx, a.initiated_event_id, Some(a.started_event_id))
            }
            ChildWorkflowExecutionCanceled(a) => {
                self.on_child_event(ctx, a.initiated_event_id, Some(a.started_event_id))
            }
            ChildWorkflowExecutionTimedOut(a) => {
                self.on_child_event(ctx, a.initiated_event_id, Some(a.started_event_id))
            }
            ChildWorkflowExecutionTerminated(a) => {
                self.on_child_event(ctx, a.initiated_event_id, Some(a.started_event_id))
            }
            _ => unreachable!("apply_kind handles the other events"),
        }
    }

    fn on_task_scheduled(&mut self, ctx: &Ctx<'_>) -> Result<(), HistoryError> {
        if self.task != TaskState::Idle {
            return Err(ctx.out_of_order("another workflow task is already scheduled or started"));
        }
        self.task = TaskState::Scheduled {
            scheduled: ctx.event.event_id,
        };
        Ok(())
    }

    fn on_task_started(
        &mut self,
        ctx: &Ctx<'_>,
        scheduled_event_id: u64,
    ) -> Result<(), HistoryError> {
        match self.task {
            TaskState::Scheduled { scheduled } if scheduled == scheduled_event_id => {
                self.task = TaskState::Started {
                    scheduled,
                    started: ctx.event.event_id,
                };
                Ok(())
            }
            TaskState::Scheduled { scheduled } => Err(ctx.bad_link(
                "scheduled_event_id",
                scheduled_event_id,
                format!("is not the scheduled workflow task (event {scheduled})"),
            )),
            _ => Err(ctx.out_of_order("no workflow task is scheduled")),
        }
    }

    fn on_task_closed(
        &mut self,
        ctx: &Ctx<'_>,
        scheduled_event_id: u64,
        started_event_id: u64,
    ) -> Result<(), HistoryError> {
        let TaskState::Started { scheduled, started } = self.task else {
            return Err(ctx.out_of_order("no workflow task is started"));
        };
        if scheduled != scheduled_event_id {
            let problem = format!("is not the started workflow task's (event {scheduled})");
            return Err(ctx.bad_link("scheduled_event_id", scheduled_event_id, problem));
        }
        if started != started_event_id {
            let problem = format!("is not the WorkflowTaskStarted event ({started})");
            return Err(ctx.bad_link("started_event_id", started_event_id, problem));
        }
        self.task = TaskState::Idle;
        Ok(())
    }

    fn on_activity_scheduled(
        &mut self,
        ctx: &Ctx<'_>,
        activity_id: &str,
    ) -> Result<(), HistoryError> {
        if let Some(open) = self.activity_ids.get(activity_id) {
            return Err(ctx.out_of_order(format!(
                "activity id {activity_id:?} is already used by the open activity of event {open}"
            )));
        }
        let event_id = ctx.event.event_id;
        self.activity_ids.insert(activity_id.to_string(), event_id);
        let entry = ActivityEntry {
            activity_id: activity_id.to_string(),
            started: None,
            cancel_requested: None,
            closed: None,
        };
        self.activities.insert(event_id, entry);
        Ok(())
    }

    fn open_activity(
        &mut self,
        ctx: &Ctx<'_>,
        scheduled_event_id: u64,
    ) -> Result<&mut ActivityEntry, HistoryError> {
        let Some(entry) = self.activities.get_mut(&scheduled_event_id) else {
            return Err(ctx.bad_link(
                "scheduled_event_id",
                scheduled_event_id,
                "is not an ActivityTaskScheduled event",
            ));
        };
        if let Some(closed_by) = entry.closed {
            return Err(HistoryError::AlreadyClosed {
                event_id: ctx.event.event_id,
                event_type: ctx.event_type(),
                what: format!(
                    "activity {:?} (event {scheduled_event_id})",
                    entry.activity_id
                ),
                closed_by,
            });
        }
        Ok(entry)
    }

    fn on_activity_started(
        &mut self,
        ctx: &Ctx<'_>,
        scheduled_event_id: u64,
    ) -> Result<(), HistoryError> {
        let event_id = ctx.event.event_id;
        let entry = self.open_activity(ctx, scheduled_event_id)?;
        if let Some(started) = entry.started {
            let problem = format!("already has an ActivityTaskStarted event ({started})");
            return Err(ctx.bad_link("scheduled_event_id", scheduled_event_id, problem));
        }
        entry.started = Some(event_id);
        Ok(())
    }

    fn on_activity_closed(
        &mut self,
        ctx: &Ctx<'_>,
        scheduled_event_id: u64,
        started_event_id: Option<u64>,
    ) -> Result<(), HistoryError> {
        let event_id = ctx.event.event_id;
        let entry = self.open_activity(ctx, scheduled_event_id)?;
        if entry.started != started_event_id {
            let expected = match entry.started {
                Some(started) => format!("the activity's ActivityTaskStarted event is {started}"),
                None => "the activity never started".to_string(),
            };
            let target = started_event_id.unwrap_or(0);
            return Err(ctx.bad_link(
                "started_event_id",
                target,
                format!("does not match: {expected}"),
            ));
        }
        if let Some(started) = started_event_id
            && started + 1 != event_id
        {
            let problem =
                "must directly precede the outcome (Started is written when the attempt ends)";
            return Err(ctx.bad_link("started_event_id", started, problem));
        }
        entry.closed = Some(event_id);
        let activity_id = entry.activity_id.clone();
        self.activity_ids.remove(&activity_id);
        Ok(())
    }

    fn on_activity_cancel_requested(
        &mut self,
        ctx: &Ctx<'_>,
        scheduled_event_id: u64,
    ) -> Result<(), HistoryError> {
        let event_id = ctx.event.event_id;
        let entry = self.open_activity(ctx, scheduled_event_id)?;
        if let Some(earlier) = entry.cancel_requested {
            let problem = format!("already had its cancel requested by event {earlier}");
            return Err(ctx.bad_link("scheduled_event_id", scheduled_event_id, problem));
        }
        entry.cancel_requested = Some(event_id);
        Ok(())
    }

    fn on_activity_canceled(
        &mut self,
        ctx: &Ctx<'_>,
        a: &super::event::ActivityTaskCanceled,
    ) -> Result<(), HistoryError> {
        let entry = self.open_activity(ctx, a.scheduled_event_id)?;
        if entry.cancel_requested != Some(a.latest_cancel_requested_event_id) {
            let problem = "is not the activity's ActivityTaskCancelRequested event";
            return Err(ctx.bad_link(
                "latest_cancel_requested_event_id",
                a.latest_cancel_requested_event_id,
                problem,
            ));
        }
        self.on_activity_closed(ctx, a.scheduled_event_id, a.started_event_id)
    }

    fn on_timer_started(&mut self, ctx: &Ctx<'_>, timer_id: &str) -> Result<(), HistoryError> {
        if let Some(entry) = self.timers.get(timer_id)
            && entry.closed.is_none()
        {
            return Err(ctx.out_of_order(format!(
                "timer id {timer_id:?} is already used by the open timer of event {}",
                entry.started
            )));
        }
        let entry = TimerEntry {
            started: ctx.event.event_id,
            closed: None,
        };
        self.timers.insert(timer_id.to_string(), entry);
        Ok(())
    }

    /// The outcome of a signal (`signal`) or cancel request to another
    /// workflow: it names an initiated event of its kind, not yet closed.
    fn on_external_closed(
        &mut self,
        ctx: &Ctx<'_>,
        initiated: u64,
        signal: bool,
    ) -> Result<(), HistoryError> {
        let what = if signal { "signal" } else { "cancel request" };
        let Some((kind, closed)) = self.externals.get_mut(&initiated) else {
            let problem = format!("names no initiated {what} to another workflow");
            return Err(ctx.bad_link("initiated_event_id", initiated, problem));
        };
        if *kind != signal {
            let problem = format!("names an initiated event that is not a {what}");
            return Err(ctx.bad_link("initiated_event_id", initiated, problem));
        }
        if let Some(closed_by) = *closed {
            return Err(HistoryError::AlreadyClosed {
                event_id: ctx.event.event_id,
                event_type: ctx.event_type(),
                what: format!("{what} to another workflow (event {initiated})"),
                closed_by,
            });
        }
        *closed = Some(ctx.event.event_id);
        Ok(())
    }

    /// A child's start (`started_event_id` is `None`: its started or failed
    /// start) or close (naming its started event) must follow the event
    /// before it, once.
    fn on_child_event(
        &mut self,
        ctx: &Ctx<'_>,
        initiated: u64,
        started_event_id: Option<u64>,
    ) -> Result<(), HistoryError> {
        let Some(child) = self.children.get_mut(&initiated) else {
            let problem = "names no initiated child workflow";
            return Err(ctx.bad_link("initiated_event_id", initiated, problem));
        };
        if let Some(closed_by) = child.closed {
            return Err(HistoryError::AlreadyClosed {
                event_id: ctx.event.event_id,
                event_type: ctx.event_type(),
                what: format!("child workflow (event {initiated})"),
                closed_by,
            });
        }
        let is_start_failure = matches!(
            ctx.event.kind,
            EventKind::StartChildWorkflowExecutionFailed(_)
        );
        match (started_event_id, child.started) {
            (None, Some(_)) => {
                return Err(ctx.out_of_order(format!(
                    "the child workflow initiated at event {initiated} has started already"
                )));
            }
            (None, None) if is_start_failure => child.closed = Some(ctx.event.event_id),
            (None, None) => child.started = Some(ctx.event.event_id),
            (Some(_), None) => {
                return Err(ctx.out_of_order(format!(
                    "the child workflow initiated at event {initiated} has not started"
                )));
            }
            (Some(named), Some(started)) if named != started => {
                let problem = format!("is not the child's started event ({started})");
                return Err(ctx.bad_link("started_event_id", named, problem));
            }
            (Some(_), Some(_)) => child.closed = Some(ctx.event.event_id),
        }
        Ok(())
    }

    fn on_timer_closed(
        &mut self,
        ctx: &Ctx<'_>,
        timer_id: &str,
        started_event_id: u64,
    ) -> Result<(), HistoryError> {
        let event_id = ctx.event.event_id;
        let Some(entry) = self.timers.get_mut(timer_id) else {
            let problem = format!("names no TimerStarted event with timer id {timer_id:?}");
            return Err(ctx.bad_link("started_event_id", started_event_id, problem));
        };
        if entry.started != started_event_id {
            let problem = format!(
                "is not timer {timer_id:?}'s TimerStarted event ({})",
                entry.started
            );
            return Err(ctx.bad_link("started_event_id", started_event_id, problem));
        }
        if let Some(closed_by) = entry.closed {
            return Err(HistoryError::AlreadyClosed {
                event_id,
                event_type: ctx.event_type(),
                what: format!("timer {timer_id:?} (event {started_event_id})"),
                closed_by,
            });
        }
        entry.closed = Some(event_id);
        Ok(())
    }
}
