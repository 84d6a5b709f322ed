//! The task queues page: who polls each queue, and what waits on it.

use std::fmt::Write as _;

use crate::types::Timestamp;

use super::html::{duration_ms, escape};
use super::page;

/// A worker seen polling a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Poller {
    /// The worker's identity.
    pub identity: String,
    /// `workflow` or `activity` tasks.
    pub kind: &'static str,
    /// When it last asked for a task.
    pub last_poll: Timestamp,
    /// The workflow types it serves (workflow pollers).
    pub workflow_types: Vec<String>,
}

/// One task queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueView {
    /// Its name.
    pub name: String,
    /// Its pollers, most recent first.
    pub pollers: Vec<Poller>,
    /// Open runs on it.
    pub open_runs: usize,
    /// Workflow tasks scheduled and not yet taken.
    pub workflow_backlog: usize,
    /// Activity tasks scheduled and not yet taken.
    pub activity_backlog: usize,
}

/// The task queues page.
pub fn task_queues_page(queues: &[QueueView], now: Timestamp) -> String {
    let mut body = String::from(
        "<h1>Task queues</h1><p class=\"muted\">Pollers are the workers this server saw asking \
         for tasks; the backlog counts the tasks of open runs that no worker has taken yet.</p>",
    );
    if queues.is_empty() {
        body.push_str("<p class=\"card muted\">No task queue has runs or pollers yet.</p>");
    }
    for queue in queues {
        let _ = write!(
            body,
            "<section class=\"card\" data-queue=\"{name}\"><h2>{name}</h2><p>{} open run(s) · \
             backlog: {} workflow task(s), {} activity task(s)</p>",
            queue.open_runs,
            queue.workflow_backlog,
            queue.activity_backlog,
            name = escape(&queue.name),
        );
        body.push_str(&pollers_table(&queue.pollers, now));
        body.push_str("</section>");
    }
    page("Task queues", &body)
}

fn pollers_table(pollers: &[Poller], now: Timestamp) -> String {
    if pollers.is_empty() {
        return "<p class=\"muted\">No poller seen.</p>".to_string();
    }
    let mut out = String::from(
        "<div class=\"scroll\"><table><thead><tr><th>Identity</th><th>Polls for</th>\
         <th>Last poll</th><th>Workflow types</th></tr></thead><tbody>",
    );
    for poller in pollers {
        let types: Vec<String> = poller.workflow_types.iter().map(|t| escape(t)).collect();
        let _ = write!(
            out,
            "<tr><td class=\"id\">{}</td><td>{}</td><td title=\"{}\">{} ago</td><td>{}</td></tr>",
            escape(&poller.identity),
            poller.kind,
            poller.last_poll,
            duration_ms(now.millis_since(poller.last_poll)),
            if types.is_empty() {
                "—".to_string()
            } else {
                types.join(", ")
            }
        );
    }
    out.push_str("</tbody></table></div>");
    out
}
