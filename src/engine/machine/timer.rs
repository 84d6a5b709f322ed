//! The durable timer machine.
//!
//! | state | input                 | next   | events written                                   |
//! |-------|-----------------------|--------|--------------------------------------------------|
//! | -     | StartTimer command    | open   | TimerStarted                                     |
//! | open  | its fire time passes  | closed | TimerFired (buffered while a workflow task runs) |
//! | open  | CancelTimer command   | closed | TimerCanceled (a buffered TimerFired is dropped) |
//!
//! A timer never fires early: it fires only once the service's clock has
//! reached `TimerStarted`'s time plus its duration.

use super::{Step, TimerState};
use crate::history::{EventKind, TimerCanceled, TimerFired, TimerStarted};

pub(super) fn start(
    step: &mut Step<'_>,
    completed: u64,
    timer_id: &str,
    duration_ms: u64,
) -> Result<(), String> {
    if timer_id.is_empty() {
        return Err("StartTimer: timer_id must not be empty".to_string());
    }
    if duration_ms == 0 {
        return Err(format!(
            "StartTimer {timer_id:?}: the duration must be at least 1 ms"
        ));
    }
    if step.state.timers.contains_key(timer_id) {
        return Err(format!(
            "StartTimer {timer_id:?}: an open timer already has this id"
        ));
    }
    let started_event_id = step.emit(EventKind::TimerStarted(TimerStarted {
        timer_id: timer_id.to_string(),
        start_to_fire_timeout_ms: duration_ms,
        workflow_task_completed_event_id: completed,
    }));
    let fire_time = step.now.plus_ms(duration_ms);
    step.state.timers.insert(
        timer_id.to_string(),
        TimerState {
            started_event_id,
            fire_time,
            fired: false,
        },
    );
    Ok(())
}

pub(super) fn cancel(step: &mut Step<'_>, completed: u64, timer_id: &str) -> Result<(), String> {
    let Some(timer) = step.state.timers.remove(timer_id) else {
        return Err(format!("CancelTimer: no open timer has id {timer_id:?}"));
    };
    step.emit(EventKind::TimerCanceled(TimerCanceled {
        timer_id: timer_id.to_string(),
        started_event_id: timer.started_event_id,
        workflow_task_completed_event_id: completed,
    }));
    step.state
        .buffered
        .retain(|kind| !matches!(kind, EventKind::TimerFired(f) if f.timer_id == timer_id));
    Ok(())
}

/// The timer's fire time passed. Returns false if it no longer applies.
pub fn on_fired(step: &mut Step<'_>, timer_id: &str) -> bool {
    let Some(timer) = step.state.timers.get_mut(timer_id) else {
        return false;
    };
    if timer.fired || step.now < timer.fire_time {
        return false;
    }
    let fired = EventKind::TimerFired(TimerFired {
        timer_id: timer_id.to_string(),
        started_event_id: timer.started_event_id,
    });
    if step.state.workflow_task.is_started() {
        timer.fired = true;
        step.state.buffered.push(fired);
    } else {
        step.state.timers.remove(timer_id);
        step.deliver(fired);
    }
    true
}
