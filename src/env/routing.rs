//! `ClusterNetwork`: one `Network` over every server of a cluster, for
//! clients and workers given a list of addresses.
//!
//! | request                               | goes to                                                  |
//! |---------------------------------------|----------------------------------------------------------|
//! | names a workflow id                   | the server that last served it, else one chosen by its hash |
//! | carries a task token or query id      | the server that handed the task out                      |
//! | a poll                                | the server with the fewest polls of its kind waiting      |
//! | anything else                         | the next server in turn                                  |
//!
//! An answer `NotOwner` is followed to the owner it names, else to the next
//! server not yet tried; a server that cannot be reached is passed over.
//! Other answers (and timeouts, after which the server may have acted) are
//! returned as they are. Workers poll every server this way: each server
//! matches the tasks of the shards it owns, and pollers spread over them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::{BoxFuture, NetError, Network};
use crate::api::{ErrorCode, Reply, Request, Response};
use crate::types::fnv1a64;

/// Routes remembered (workflow ids, runs, queries), at most; the oldest go first.
const ROUTES_MAX: usize = 4_096;

/// A bounded map of keys to server indexes, forgetting the oldest first.
#[derive(Default)]
struct Routes {
    index: BTreeMap<String, usize>,
    order: VecDeque<String>,
}

impl Routes {
    fn get(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }

    fn set(&mut self, key: &str, server: usize) {
        if self.index.insert(key.to_string(), server).is_none() {
            self.order.push_back(key.to_string());
        }
        while self.order.len() > ROUTES_MAX {
            let oldest = self.order.pop_front().expect("longer than the bound");
            self.index.remove(&oldest);
        }
        assert!(self.index.len() <= ROUTES_MAX);
    }
}

#[derive(Default)]
struct State {
    routes: Routes,
    /// Polls waiting at each server, by method.
    polls: BTreeMap<(&'static str, usize), usize>,
    turn: usize,
}

/// A `Network` over a cluster's servers (see the module's table).
#[derive(Clone)]
pub struct ClusterNetwork {
    servers: Arc<Vec<(String, Arc<dyn Network>)>>,
    state: Arc<Mutex<State>>,
}

impl ClusterNetwork {
    /// A network over `servers`: each server's address (as the servers
    /// advertise it) and a network to it.
    pub fn new(servers: Vec<(String, Arc<dyn Network>)>) -> ClusterNetwork {
        assert!(!servers.is_empty(), "a cluster has at least one server");
        ClusterNetwork {
            servers: Arc::new(servers),
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("routing lock is never held across a panic")
    }

    /// The server to try first for `request`, and the key its answer teaches.
    fn first(&self, request: &Request) -> (usize, Option<String>) {
        let count = self.servers.len();
        let mut state = self.lock();
        let key = route_key(request);
        if let Some(server) = key.as_deref().and_then(|k| state.routes.get(k)) {
            return (server, key);
        }
        if let Some(workflow_id) = request.workflow_id() {
            let server = (fnv1a64(workflow_id.as_bytes()) % count as u64) as usize;
            return (server, key);
        }
        if matches!(
            request,
            Request::PollWorkflowTask(_) | Request::PollActivityTask(_)
        ) {
            let method = request.method();
            let start = state.turn;
            state.turn = state.turn.wrapping_add(1);
            let server = (0..count)
                .map(|offset| (start + offset) % count)
                .min_by_key(|server| state.polls.get(&(method, *server)).copied().unwrap_or(0))
                .expect("at least one server");
            return (server, key);
        }
        state.turn = state.turn.wrapping_add(1);
        (state.turn % count, key)
    }

    /// Remembers what a reply says about where things are.
    fn learn(&self, server: usize, key: Option<&str>, reply: &Reply) {
        let mut state = self.lock();
        match reply {
            Ok(Response::PollWorkflowTask(poll)) => {
                if let Some(task) = &poll.task {
                    state.routes.set(&task.task_token.run_id, server);
                }
                if let Some(query) = &poll.query {
                    state.routes.set(&query.query_id, server);
                }
            }
            Ok(Response::PollActivityTask(poll)) => {
                if let Some(task) = &poll.task {
                    state.routes.set(&task.task_token.run_id, server);
                }
            }
            Err(error) if error.code == ErrorCode::NotOwner => return,
            _ => {}
        }
        if let Some(key) = key {
            state.routes.set(key, server);
        }
    }

    async fn call_routed(self, request: Request) -> Result<Reply, NetError> {
        let (mut server, key) = self.first(&request);
        let mut tried = vec![false; self.servers.len()];
        let mut last = None;
        for _ in 0..self.servers.len() + 1 {
            tried[server] = true;
            let answer = self.call_one(server, &request).await;
            let next = match &answer {
                Ok(Err(error)) if error.code == ErrorCode::NotOwner => {
                    let named = error.owner.as_deref().and_then(|a| self.index_of(a));
                    named
                        .filter(|s| !tried[*s])
                        .or_else(|| untried(&tried, server))
                }
                Err(NetError::Unreachable(_)) => untried(&tried, server),
                Ok(reply) => {
                    self.learn(server, key.as_deref(), reply);
                    return answer;
                }
                Err(_) => return answer,
            };
            last = Some(answer);
            match next {
                Some(next) => server = next,
                None => break,
            }
        }
        last.expect("at least one server was tried")
    }

    async fn call_one(&self, server: usize, request: &Request) -> Result<Reply, NetError> {
        let poll = matches!(
            request,
            Request::PollWorkflowTask(_) | Request::PollActivityTask(_)
        );
        // Counted out when the call ends however it ends: a caller that
        // gives up drops this future mid-call (the simulator found polls
        // lost on a lossy link left counted forever, so their server was
        // never polled again and its tasks waited).
        let _waiting = poll.then(|| Waiting::start(self.state.clone(), request.method(), server));
        self.servers[server].1.call(request.clone()).await
    }

    fn index_of(&self, address: &str) -> Option<usize> {
        self.servers.iter().position(|(a, _)| a == address)
    }
}

/// A poll waiting at a server, counted until dropped.
struct Waiting {
    state: Arc<Mutex<State>>,
    key: (&'static str, usize),
}

impl Waiting {
    fn start(state: Arc<Mutex<State>>, method: &'static str, server: usize) -> Waiting {
        let key = (method, server);
        *lock_state(&state).polls.entry(key).or_default() += 1;
        Waiting { state, key }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut state = lock_state(&self.state);
        let waiting = state.polls.entry(self.key).or_default();
        assert!(*waiting > 0, "a poll is counted before it ends");
        *waiting -= 1;
    }
}

fn lock_state(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .expect("routing lock is never held across a panic")
}

/// The next server after `from` not tried yet.
fn untried(tried: &[bool], from: usize) -> Option<usize> {
    let count = tried.len();
    (1..count).map(|o| (from + o) % count).find(|s| !tried[*s])
}

/// What a request's answer teaches where to send the next like it.
fn route_key(request: &Request) -> Option<String> {
    let token = match request {
        Request::CompleteWorkflowTask(r) => &r.task_token,
        Request::FailWorkflowTask(r) => &r.task_token,
        Request::RespondActivityTask(r) => &r.task_token,
        Request::HeartbeatActivityTask(r) => &r.task_token,
        Request::RespondQuery(r) => return Some(r.query_id.clone()),
        other => return other.workflow_id().map(|id| format!("workflow:{id}")),
    };
    Some(token.run_id.clone())
}

impl Network for ClusterNetwork {
    fn call(&self, request: Request) -> BoxFuture<'static, Result<Reply, NetError>> {
        Box::pin(self.clone().call_routed(request))
    }

    fn servers(&self) -> usize {
        self.servers.len()
    }
}
