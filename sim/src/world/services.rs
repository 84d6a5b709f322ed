//! Simulated external services that activities call over the simulated network
//! (a key-value store, an accounts ledger, an HTTP-like API), and the effect
//! ledger that proves each effect happened once.
//!
//! Every call carries, invisibly to the service's logic, the idempotency key
//! of the activity that sent it. When a service applies a state change it
//! records `(caller, effect)` in the ledger. When the activity gets a reply
//! saying the effect is done, the client records it as acknowledged. The
//! checker then requires: no effect applied twice for the same caller, and
//! every acknowledged effect of a completed activity applied exactly once.
//! Effects are also ledgered per attempt (`by_attempt`): an attempt after the
//! one the activity's `ActivityTaskStarted` names must not have acted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use retrace::activity::ActivityContext;
use retrace::env::{BoxFuture, NetError};
use retrace::types::fnv1a64;
use serde_json::{Value, json};

use crate::world::net::rpc;
use crate::world::{World, lock};

/// Deadline of one service call.
pub const SERVICE_CALL_TIMEOUT_MS: u64 = 5_000;

/// What a simulated service does with a request. `effects` records the state
/// changes it applies, keyed by an effect label (e.g. `"debit:alice"`).
pub trait SimService: Send + Sync + 'static {
    /// Handles one request (called when it arrives, atomically).
    fn handle(&self, request: &Value, effects: &mut Vec<String>) -> Result<Value, String>;
}

/// Effects applied and acknowledged, by (caller activity, effect label).
#[derive(Debug, Default)]
pub struct EffectLedger {
    pub applied: BTreeMap<(String, String), u64>,
    pub acknowledged: BTreeMap<(String, String), u64>,
    /// Effects applied, by (caller activity, attempt, effect label).
    pub by_attempt: BTreeMap<(String, u32, String), u64>,
}

/// A service as checks see it: downcast to its type to read its state.
pub type ServiceState = Arc<dyn std::any::Any + Send + Sync>;

/// The services of a run.
#[derive(Default)]
pub struct ServiceHost {
    services: Mutex<BTreeMap<String, Arc<dyn SimService>>>,
    /// The same services, for checks that read their state by type.
    states: Mutex<BTreeMap<String, ServiceState>>,
    ledger: Mutex<EffectLedger>,
}

impl ServiceHost {
    /// Adds service `name`.
    pub fn add<S: SimService>(&self, name: &str, service: Arc<S>) {
        lock(&self.states).insert(name.to_string(), service.clone());
        lock(&self.services).insert(name.to_string(), service);
    }

    /// Every service, for checks to read its state (see `Finished::service`).
    pub fn states(&self) -> BTreeMap<String, ServiceState> {
        lock(&self.states).clone()
    }

    fn serve(
        &self,
        name: &str,
        (caller, attempt): (&str, u32),
        request: &Value,
    ) -> Result<Value, String> {
        let service = lock(&self.services)
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no service {name:?}"))?;
        let mut effects = Vec::new();
        let reply = service.handle(request, &mut effects);
        let mut ledger = lock(&self.ledger);
        for effect in effects {
            *ledger
                .by_attempt
                .entry((caller.to_string(), attempt, effect.clone()))
                .or_default() += 1;
            *ledger
                .applied
                .entry((caller.to_string(), effect))
                .or_default() += 1;
        }
        reply
    }

    fn acknowledge(&self, caller: &str, reply: &Value) {
        if let Some(effect) = reply.get("effect").and_then(Value::as_str) {
            let mut ledger = lock(&self.ledger);
            *ledger
                .acknowledged
                .entry((caller.to_string(), effect.to_string()))
                .or_default() += 1;
        }
    }

    /// A copy of the ledger.
    pub fn ledger(&self) -> EffectLedger {
        let ledger = lock(&self.ledger);
        EffectLedger {
            applied: ledger.applied.clone(),
            acknowledged: ledger.acknowledged.clone(),
            by_attempt: ledger.by_attempt.clone(),
        }
    }
}

/// Why a service call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceCallError {
    /// No reply in time (the service may have acted).
    #[error("service call timed out")]
    Timeout,
    /// The network failed.
    #[error("network: {0}")]
    Network(#[from] NetError),
    /// The service refused the request.
    #[error("service error: {0}")]
    Refused(String),
}

/// A node's handle on a simulated service.
#[derive(Clone)]
pub struct ServiceClient {
    world: Arc<World>,
    node: String,
    service: String,
}

impl ServiceClient {
    pub(crate) fn new(world: Arc<World>, node: &str, service: &str) -> ServiceClient {
        ServiceClient {
            world,
            node: node.to_string(),
            service: service.to_string(),
        }
    }

    /// Sends `request` on behalf of the activity attempt `ctx`.
    pub async fn call(
        &self,
        ctx: &ActivityContext,
        request: Value,
    ) -> Result<Value, ServiceCallError> {
        let caller = ctx.idempotency_key();
        let (service, served_caller) = (self.service.clone(), caller.clone());
        let attempt = ctx.attempt();
        let serve = Arc::new(move |world: Arc<World>| {
            let reply = world
                .services
                .serve(&service, (&served_caller, attempt), &request);
            Some(Box::pin(async move { Some(reply) })
                as BoxFuture<'static, Option<Result<Value, String>>>)
        });
        let call = rpc(&self.world, &self.node, &self.service, serve);
        let timeout =
            madsim::time::sleep(std::time::Duration::from_millis(SERVICE_CALL_TIMEOUT_MS));
        futures::pin_mut!(call, timeout);
        let reply = match futures::future::select(call, timeout).await {
            futures::future::Either::Left((reply, _)) => reply?,
            futures::future::Either::Right(_) => return Err(ServiceCallError::Timeout),
        };
        let value = reply.map_err(ServiceCallError::Refused)?;
        self.world.services.acknowledge(&caller, &value);
        Ok(value)
    }
}

/// Idempotency keys a service has seen, with the reply it gave.
#[derive(Default)]
struct Seen(Mutex<BTreeMap<String, Value>>);

impl Seen {
    /// The earlier reply to `key`, or applies `effect` and remembers its reply.
    fn once(
        &self,
        key: Option<&str>,
        effect: impl FnOnce() -> Result<Value, String>,
    ) -> Result<Value, String> {
        let Some(key) = key else { return effect() };
        if let Some(reply) = lock(&self.0).get(key) {
            return Ok(reply.clone());
        }
        let reply = effect()?;
        lock(&self.0).insert(key.to_string(), reply.clone());
        Ok(reply)
    }
}

fn field<'v>(request: &'v Value, name: &str) -> Result<&'v Value, String> {
    request
        .get(name)
        .ok_or_else(|| format!("request lacks field {name:?}: {request}"))
}

fn text<'v>(request: &'v Value, name: &str) -> Result<&'v str, String> {
    field(request, name)?
        .as_str()
        .ok_or_else(|| format!("field {name:?} must be a string"))
}

fn number(request: &Value, name: &str) -> Result<i64, String> {
    field(request, name)?
        .as_i64()
        .ok_or_else(|| format!("field {name:?} must be an integer"))
}

/// A key-value store: `{"op":"put","key","value","idempotency_key"?}`,
/// `{"op":"get","key"}`.
#[derive(Default)]
pub struct KvStore {
    data: Mutex<BTreeMap<String, Value>>,
    seen: Seen,
}

impl SimService for KvStore {
    fn handle(&self, request: &Value, effects: &mut Vec<String>) -> Result<Value, String> {
        let key = text(request, "key")?.to_string();
        match text(request, "op")? {
            "get" => Ok(json!({ "value": lock(&self.data).get(&key).cloned() })),
            "put" => {
                let value = field(request, "value")?.clone();
                let idempotency_key = request.get("idempotency_key").and_then(Value::as_str);
                self.seen.once(idempotency_key, || {
                    lock(&self.data).insert(key.clone(), value);
                    effects.push(format!("put:{key}"));
                    Ok(json!({ "effect": format!("put:{key}") }))
                })
            }
            other => Err(format!("unknown op {other:?}")),
        }
    }
}

impl KvStore {
    /// A store holding `entries`.
    pub fn with(entries: impl IntoIterator<Item = (String, Value)>) -> KvStore {
        KvStore {
            data: Mutex::new(entries.into_iter().collect()),
            seen: Seen::default(),
        }
    }
}

/// Accounts: `open`, `transfer` (idempotent with `idempotency_key`), `debit`
/// (NOT idempotent: the classic bug), `balance`.
#[derive(Default)]
pub struct Accounts {
    balances: Mutex<BTreeMap<String, i64>>,
    seen: Seen,
}

impl Accounts {
    /// Accounts opened with these balances.
    pub fn with(balances: impl IntoIterator<Item = (&'static str, i64)>) -> Accounts {
        let balances = balances
            .into_iter()
            .map(|(a, b)| (a.to_string(), b))
            .collect();
        Accounts {
            balances: Mutex::new(balances),
            seen: Seen::default(),
        }
    }

    /// Current balances.
    pub fn balances(&self) -> BTreeMap<String, i64> {
        lock(&self.balances).clone()
    }

    fn transfer(&self, request: &Value, effects: &mut Vec<String>) -> Result<Value, String> {
        let (from, to) = (
            text(request, "from")?.to_string(),
            text(request, "to")?.to_string(),
        );
        let amount = number(request, "amount")?;
        let mut balances = lock(&self.balances);
        let available = *balances
            .get(&from)
            .ok_or_else(|| format!("no account {from:?}"))?;
        if available < amount {
            return Err(format!("insufficient funds in {from:?}"));
        }
        *balances.get_mut(&from).expect("checked") -= amount;
        *balances.entry(to.clone()).or_default() += amount;
        let effect = format!("transfer:{from}->{to}");
        effects.push(effect.clone());
        Ok(json!({ "effect": effect }))
    }
}

impl SimService for Accounts {
    fn handle(&self, request: &Value, effects: &mut Vec<String>) -> Result<Value, String> {
        match text(request, "op")? {
            "balance" => {
                let account = text(request, "account")?;
                Ok(json!({ "balance": lock(&self.balances).get(account).copied() }))
            }
            "transfer" => {
                let idempotency_key = request.get("idempotency_key").and_then(Value::as_str);
                self.seen
                    .once(idempotency_key, || self.transfer(request, effects))
            }
            "debit" => {
                let account = text(request, "account")?.to_string();
                let amount = number(request, "amount")?;
                *lock(&self.balances).entry(account.clone()).or_default() -= amount;
                effects.push(format!("debit:{account}"));
                Ok(json!({ "effect": format!("debit:{account}") }))
            }
            other => Err(format!("unknown op {other:?}")),
        }
    }
}

/// An HTTP-like API: `GET path` returns a body determined by the path;
/// `POST path` with an `idempotency_key` records an effect once.
#[derive(Default)]
pub struct HttpApi {
    seen: Seen,
}

impl SimService for HttpApi {
    fn handle(&self, request: &Value, effects: &mut Vec<String>) -> Result<Value, String> {
        let path = text(request, "path")?.to_string();
        match text(request, "method")? {
            "GET" => Ok(
                json!({ "status": 200, "path": path, "value": fnv1a64(path.as_bytes()) % 1_000 }),
            ),
            "POST" => {
                let idempotency_key = request.get("idempotency_key").and_then(Value::as_str);
                self.seen.once(idempotency_key, || {
                    effects.push(format!("post:{path}"));
                    Ok(json!({ "status": 201, "effect": format!("post:{path}") }))
                })
            }
            other => Err(format!("unknown method {other:?}")),
        }
    }
}
