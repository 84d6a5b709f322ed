//! `messages`: the order-of-messages example (`examples/messages`) under faults.
//!
//! The SAME workflow and activities as the web app, with simulated backends:
//! the message database is a [`KvStore`] (`db`), the Pokémon and joke APIs are
//! [`HttpApi`]s (`pokeapi`, `jokes`) answered through the simulated network,
//! and the inspector is the app's own seeded [`FakeInspector`]. The client
//! starts [`RUNS`] runs; it sends `proceed` to the first [`EARLY_PROCEEDS`]
//! before their timers fire (the signal waits in the history until the code
//! asks for it), and to the others once the query `messages` says they wait.
//! Every run must complete with its four messages, in chronological order,
//! each the one its backends give; and the query's answers about a run never
//! go backwards (a query sees the run's last completed workflow task, whichever
//! worker answers it).

use retrace::activity::ActivityContext;
use retrace::api::RunOutcome;
use retrace::client::StartOptions;
use retrace::env::BoxFuture;
use retrace::history::History;
use retrace::workflow::Workflow;
use retrace_messages::{
    BackendError, FakeInspector, FetchJoke, FetchMessage, FetchPokemon, Fetcher, JOKES,
    MESSAGES_QUERY, Message, MessageStore, OrderInput, OrderOfMessages, PROCEED_SIGNAL, Progress,
    SEED_MESSAGES, SLEEP_MS_DEFAULT, Source, Stage, TASK_QUEUE, VerifyMessage, check_messages,
    pokemon_name,
};
use serde_json::{Value, json};

use crate::{Finished, HttpApi, KvStore, ServiceClient, SimClient, Simulation};

/// Runs the scenario starts.
pub const RUNS: usize = 3;
/// Runs that get `proceed` before they wait for it.
pub const EARLY_PROCEEDS: usize = 1;
/// Base URL of the simulated PokeAPI (the fetcher keeps only the path).
pub const POKEMON_URL: &str = "http://pokeapi.sim/api/v2/pokemon";
/// URL of the simulated dad-joke API.
pub const JOKE_URL: &str = "http://icanhazdadjoke.sim/";
/// Queries a client makes per run while waiting for it to need `proceed`.
const WAIT_QUERIES_MAX: u32 = 60;
/// Between two of those queries.
const WAIT_QUERY_INTERVAL_MS: u64 = 1_000;

/// The message table as a `KvStore`: key `message/{id}`.
struct KvMessages {
    kv: ServiceClient,
}

impl MessageStore for KvMessages {
    fn message<'a>(
        &'a self,
        ctx: &'a ActivityContext,
        message_id: u32,
    ) -> BoxFuture<'a, Result<String, BackendError>> {
        Box::pin(async move {
            let request = json!({"op": "get", "key": format!("message/{message_id}")});
            let reply = self.kv.call(ctx, request).await;
            let reply = reply.map_err(|error| BackendError::Unavailable(error.to_string()))?;
            match reply.get("value") {
                Some(Value::String(text)) => Ok(text.clone()),
                Some(Value::Null) | None => Err(BackendError::NotFound(format!(
                    "no stored message {message_id}"
                ))),
                Some(other) => Err(BackendError::BadResponse(format!("message is {other}"))),
            }
        })
    }
}

/// GETs through an `HttpApi`, reshaping its `{"status", "path", "value"}`
/// into the document the real API would answer.
struct SimFetcher {
    api: ServiceClient,
}

impl Fetcher for SimFetcher {
    fn get_json<'a>(
        &'a self,
        ctx: &'a ActivityContext,
        url: &'a str,
    ) -> BoxFuture<'a, Result<Value, BackendError>> {
        Box::pin(async move {
            let path = url.split_once(".sim").map_or(url, |(_, path)| path);
            let request = json!({"method": "GET", "path": path});
            let reply = self.api.call(ctx, request).await;
            let reply = reply.map_err(|error| BackendError::Unavailable(error.to_string()))?;
            let value = reply["value"].as_u64().ok_or_else(|| {
                BackendError::BadResponse(format!("GET {url}: no value in {reply}"))
            })?;
            shape(url, value)
        })
    }
}

/// The document the real API answers for `url`, drawn from `value`.
fn shape(url: &str, value: u64) -> Result<Value, BackendError> {
    if let Some(id) = url.strip_prefix(&format!("{POKEMON_URL}/")) {
        let name = id.parse().ok().and_then(pokemon_name);
        let name = name.ok_or_else(|| BackendError::NotFound(format!("GET {url}: 404")))?;
        return Ok(json!({"id": id, "name": name}));
    }
    if url == JOKE_URL {
        let index = usize::try_from(value % JOKES.len() as u64).expect("a small index");
        return Ok(json!({"id": format!("sim-{value}"), "joke": JOKES[index], "status": 200}));
    }
    Err(BackendError::NotFound(format!("GET {url}: 404")))
}

fn database() -> KvStore {
    let entries = SEED_MESSAGES
        .iter()
        .enumerate()
        .map(|(index, text)| (format!("message/{}", index + 1), json!(text)));
    KvStore::with(entries)
}

fn workflow_id(index: usize) -> String {
    format!("messages-{index}")
}

fn input(index: usize) -> OrderInput {
    let message_id = u32::try_from(index % SEED_MESSAGES.len()).expect("a small index") + 1;
    OrderInput {
        message_id,
        sleep_ms: SLEEP_MS_DEFAULT,
    }
}

/// How far along a run is: its stage's place in the workflow, and the
/// messages it has. Neither ever decreases.
fn progress_rank(progress: &Progress) -> (u8, usize) {
    let stage = match progress.stage {
        Stage::Sleeping { .. } => 0,
        Stage::FetchingMessage => 1,
        Stage::Verifying => 2,
        Stage::WaitingForProceed => 3,
        Stage::FetchingPokemonAndJoke => 4,
        Stage::Completed => 5,
    };
    (stage, progress.messages.len())
}

/// Queries run `index` until it waits for `proceed` (bounded; errors, which
/// faults cause, only mean "ask again"). Fails if an answer is behind an
/// earlier one: a query answered from a stale cache.
async fn wait_until_proceed_is_needed(client: &SimClient, index: usize) -> anyhow::Result<bool> {
    let mut seen: Option<(u8, usize)> = None;
    for _ in 0..WAIT_QUERIES_MAX {
        let answer = client
            .query::<Progress>(&workflow_id(index), None, MESSAGES_QUERY, ())
            .await;
        if let Ok(progress) = answer {
            let rank = progress_rank(&progress);
            if let Some(before) = seen
                && (rank.0 < before.0 || rank.1 < before.1)
            {
                anyhow::bail!(
                    "the query about {} went backwards: {before:?} then {rank:?} ({progress:?})",
                    workflow_id(index)
                );
            }
            seen = Some(rank);
            if progress.stage == Stage::WaitingForProceed {
                return Ok(true);
            }
        }
        client.sleep_ms(WAIT_QUERY_INTERVAL_MS).await;
    }
    Ok(false)
}

async fn drive(client: SimClient) -> anyhow::Result<()> {
    for index in 0..RUNS {
        let options = StartOptions::new(workflow_id(index), TASK_QUEUE);
        let input = serde_json::to_value(input(index))?;
        client
            .start_by_name(options, OrderOfMessages::NAME, input)
            .await?;
    }
    for index in 0..EARLY_PROCEEDS {
        client
            .signal(
                &workflow_id(index),
                None,
                PROCEED_SIGNAL,
                json!({"by": "early"}),
            )
            .await?;
    }
    for index in EARLY_PROCEEDS..RUNS {
        let waited = wait_until_proceed_is_needed(&client, index).await?;
        client
            .signal(
                &workflow_id(index),
                None,
                PROCEED_SIGNAL,
                json!({"by": "client", "waited": waited}),
            )
            .await?;
    }
    Ok(())
}

/// Run `index`'s history, found by workflow id.
fn history_of(finished: &Finished, index: usize) -> Option<&History> {
    let workflow_id = workflow_id(index);
    finished
        .histories
        .values()
        .find(|history| history.workflow_id() == workflow_id)
}

/// Each message is the one its backend gives, and none came before the timer.
fn check_contents(index: usize, history: &History, messages: &[Message]) -> Result<(), String> {
    let expected = SEED_MESSAGES[usize::try_from(input(index).message_id).expect("small") - 1];
    let inspector = FakeInspector::name_for(&format!("{}/2", history.run_id()));
    let started = history.events()[0].event_time;
    for message in messages {
        let fits = match message.source {
            Source::Database => message.text == expected,
            Source::Inspector => message.text == format!("Verified by inspector {inspector}"),
            Source::Pokemon => message.text.starts_with("Pokémon #"),
            Source::Joke => JOKES.contains(&message.text.as_str()),
        };
        if !fits {
            return Err(format!(
                "{} has an unexpected message: {message:?}",
                workflow_id(index)
            ));
        }
        if message.at.millis_since(started) < SLEEP_MS_DEFAULT {
            return Err(format!(
                "{}: {message:?} came before the timer",
                workflow_id(index)
            ));
        }
    }
    Ok(())
}

fn check(finished: &Finished) -> Result<(), String> {
    for index in 0..RUNS {
        let id = workflow_id(index);
        let result = match finished.outcomes.get(&id) {
            Some(RunOutcome::Completed { result }) => result,
            other => return Err(format!("{id} should complete, got {other:?}")),
        };
        let messages: Vec<Message> = serde_json::from_value(result.clone())
            .map_err(|error| format!("{id}: the result is not a list of messages: {error}"))?;
        check_messages(&messages).map_err(|error| format!("{id}: {error}"))?;
        let history = history_of(finished, index).ok_or_else(|| format!("{id} has no history"))?;
        check_contents(index, history, &messages)?;
    }
    Ok(())
}

/// The order-of-messages scenario.
pub fn messages() -> Simulation {
    Simulation::new("messages")
        // Every run of the scenario must complete: a failed, timed out,
        // terminated or canceled run is a violation.
        .expect_outcomes(|_, outcome| matches!(outcome, RunOutcome::Completed { .. }))
        .workflow::<OrderOfMessages>()
        .activity(|node| {
            FetchMessage::new(KvMessages {
                kv: node.service("db"),
            })
        })
        .activity(|_| VerifyMessage::new(FakeInspector))
        .activity(|node| {
            FetchPokemon::new(
                SimFetcher {
                    api: node.service("pokeapi"),
                },
                POKEMON_URL,
            )
        })
        .activity(|node| {
            FetchJoke::new(
                SimFetcher {
                    api: node.service("jokes"),
                },
                JOKE_URL,
            )
        })
        .service("db", database)
        .service("pokeapi", HttpApi::default)
        .service("jokes", HttpApi::default)
        .task_queue(TASK_QUEUE)
        .workers(3)
        .safety_ms(30_000)
        .scenario(drive)
        .check(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulated_apis_answer_documents_shaped_like_the_real_ones() {
        let pokemon = shape(&format!("{POKEMON_URL}/25"), 7).unwrap();
        assert_eq!(pokemon["name"], "pikachu");
        let joke = shape(JOKE_URL, 7).unwrap();
        assert_eq!(joke["status"], 200);
        assert!(JOKES.contains(&joke["joke"].as_str().unwrap()));
        let missing = shape(&format!("{POKEMON_URL}/999"), 7).unwrap_err();
        assert!(matches!(missing, BackendError::NotFound(_)), "{missing:?}");
    }
}
