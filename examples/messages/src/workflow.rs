//! The order-of-messages workflow.
//!
//! ```text
//! start ──► sleep (durable timer) ──► fetch_message ──► verify_message
//!       ──► wait for signal `proceed` ──► fetch_pokemon ∥ fetch_joke ──► result
//! ```
//!
//! Every message is stamped with `ctx.now()` (the time of the workflow task
//! that saw it arrive), so replay gives the same times. The query `messages`
//! answers the run's [`Progress`] at any point.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use retrace::types::Timestamp;
use retrace::workflow::{Workflow, WorkflowContext, WorkflowResult, join};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::activities::{FetchJoke, FetchMessage, FetchPokemon, VerifyMessage};

/// The signal that lets the run go on to its last step.
pub const PROCEED_SIGNAL: &str = "proceed";
/// The query answering the run's [`Progress`].
pub const MESSAGES_QUERY: &str = "messages";
/// The durable timer's length unless the input says otherwise.
pub const SLEEP_MS_DEFAULT: u64 = 5_000;
/// Longest durable timer the input may ask for (one hour).
pub const SLEEP_MS_MAX: u64 = 3_600_000;
/// Pokémon are drawn from ids `1..=POKEMON_ID_MAX` (the first generation).
pub const POKEMON_ID_MAX: u32 = 151;
const _: () = assert!(POKEMON_ID_MAX as usize == crate::POKEMON_NAMES.len());

/// Messages a completed run returns.
pub const MESSAGES_COUNT: usize = 4;

/// What a run is asked to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderInput {
    /// The stored message to fetch.
    pub message_id: u32,
    /// How long the durable timer sleeps.
    pub sleep_ms: u64,
}

impl OrderInput {
    /// Message `message_id` after the default 5 s sleep.
    pub fn new(message_id: u32) -> OrderInput {
        OrderInput {
            message_id,
            sleep_ms: SLEEP_MS_DEFAULT,
        }
    }
}

/// Where a message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The stored message (step 3).
    Database,
    /// The verification (step 4).
    Inspector,
    /// The Pokémon fetch (step 6).
    Pokemon,
    /// The joke fetch (step 6).
    Joke,
}

/// One message, with the workflow time at which it arrived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The time of the workflow task that received it.
    pub at: Timestamp,
    /// Where it came from.
    pub source: Source,
    /// What it says.
    pub text: String,
}

/// Where a run is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// The durable timer runs until about `until`.
    Sleeping {
        /// When the timer fires (workflow time of the start plus the sleep).
        until: Timestamp,
    },
    /// `fetch_message` runs.
    FetchingMessage,
    /// `verify_message` runs.
    Verifying,
    /// The run waits for the signal `proceed`.
    WaitingForProceed,
    /// `fetch_pokemon` and `fetch_joke` run in parallel.
    FetchingPokemonAndJoke,
    /// The run returned its messages.
    Completed,
}

/// What the query `messages` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Where the run is.
    #[serde(flatten)]
    pub stage: Stage,
    /// When the run's first workflow task ran.
    pub started_at: Timestamp,
    /// When the code saw the timer fire.
    pub timer_fired_at: Option<Timestamp>,
    /// When the code received `proceed`.
    pub proceeded_at: Option<Timestamp>,
    /// The messages so far, in the order they arrived.
    pub messages: Vec<Message>,
}

/// The run's progress, shared by the code and its query handler.
#[derive(Clone)]
struct Shared(Arc<Mutex<Progress>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.0.lock().expect("progress lock is never poisoned")
    }

    fn stage(&self, stage: Stage) {
        self.lock().stage = stage;
    }

    fn push(&self, at: Timestamp, source: Source, text: String) {
        let mut progress = self.lock();
        assert!(progress.messages.len() < MESSAGES_COUNT);
        assert!(progress.messages.iter().all(|m| m.source != source));
        progress.messages.push(Message { at, source, text });
    }
}

/// The workflow: see the module docs.
pub struct OrderOfMessages;

impl Workflow for OrderOfMessages {
    const NAME: &'static str = "order_of_messages";
    type Input = OrderInput;
    type Output = Vec<Message>;

    async fn run(ctx: WorkflowContext, input: OrderInput) -> WorkflowResult<Vec<Message>> {
        let sleep_ms = input.sleep_ms.min(SLEEP_MS_MAX);
        let progress = Shared(Arc::new(Mutex::new(Progress {
            stage: Stage::Sleeping {
                until: ctx.now().plus_ms(sleep_ms),
            },
            started_at: ctx.now(),
            timer_fired_at: None,
            proceeded_at: None,
            messages: Vec::with_capacity(MESSAGES_COUNT),
        })));
        let shown = progress.clone();
        ctx.query_handler(MESSAGES_QUERY, move |_: Value| shown.lock().clone());

        ctx.sleep(Duration::from_millis(sleep_ms)).await?;
        progress.lock().timer_fired_at = Some(ctx.now());
        progress.stage(Stage::FetchingMessage);
        let message = ctx.activity::<FetchMessage>(input.message_id).await?;
        progress.push(ctx.now(), Source::Database, message.clone());

        progress.stage(Stage::Verifying);
        let inspector = ctx.activity::<VerifyMessage>(message).await?;
        let verified = format!("Verified by inspector {inspector}");
        progress.push(ctx.now(), Source::Inspector, verified);

        progress.stage(Stage::WaitingForProceed);
        let _proceed: Value = ctx.signal(PROCEED_SIGNAL).recv().await?;
        progress.lock().proceeded_at = Some(ctx.now());

        progress.stage(Stage::FetchingPokemonAndJoke);
        let pokemon_id =
            u32::try_from(ctx.random() % u64::from(POKEMON_ID_MAX)).expect("< 151") + 1;
        let pokemon = async {
            let name = ctx.activity::<FetchPokemon>(pokemon_id).await?;
            let text = format!("Pokémon #{pokemon_id}: {}", capitalize(&name));
            progress.push(ctx.now(), Source::Pokemon, text);
            WorkflowResult::Ok(())
        };
        let joke = async {
            let joke = ctx.activity::<FetchJoke>(()).await?;
            progress.push(ctx.now(), Source::Joke, joke);
            WorkflowResult::Ok(())
        };
        let (pokemon, joke) = join(pokemon, joke).await;
        pokemon?;
        joke?;

        let mut progress = progress.lock();
        progress.stage = Stage::Completed;
        // Already in arrival order; the stable sort keeps it chronological even
        // if the service's clock stepped back between two workflow tasks.
        progress.messages.sort_by_key(|m| m.at);
        assert_eq!(progress.messages.len(), MESSAGES_COUNT);
        Ok(progress.messages.clone())
    }
}

/// `pikachu` -> `Pikachu`.
fn capitalize(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Why a list of messages is not a completed run's: the count, the sources,
/// or the order. The app's tests and the simulator's check use it.
pub fn check_messages(messages: &[Message]) -> Result<(), String> {
    if messages.len() != MESSAGES_COUNT {
        return Err(format!(
            "{} messages, expected {MESSAGES_COUNT}: {messages:?}",
            messages.len()
        ));
    }
    if let Some(pair) = messages.windows(2).find(|pair| pair[0].at > pair[1].at) {
        return Err(format!(
            "not chronological: {:?} before {:?}",
            pair[0], pair[1]
        ));
    }
    let mut sources: Vec<Source> = messages.iter().map(|m| m.source).collect();
    sources.sort();
    let expected = [
        Source::Database,
        Source::Inspector,
        Source::Pokemon,
        Source::Joke,
    ];
    if sources != expected {
        return Err(format!(
            "sources {sources:?}, expected one of each of {expected:?}"
        ));
    }
    if messages[0].source != Source::Database || messages[1].source != Source::Inspector {
        return Err(format!(
            "the stored message and its verification come first: {messages:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(at: u64, source: Source) -> Message {
        Message {
            at: Timestamp(at),
            source,
            text: format!("{source:?}"),
        }
    }

    #[test]
    fn a_completed_runs_messages_pass_the_check() {
        let messages = [
            message(1, Source::Database),
            message(2, Source::Inspector),
            message(3, Source::Joke),
            message(3, Source::Pokemon),
        ];
        assert_eq!(check_messages(&messages), Ok(()));
    }

    #[test]
    fn messages_out_of_time_order_fail_the_check() {
        let messages = [
            message(1, Source::Database),
            message(2, Source::Inspector),
            message(4, Source::Joke),
            message(3, Source::Pokemon),
        ];
        let error = check_messages(&messages).unwrap_err();
        assert!(error.contains("not chronological"), "{error}");
    }

    #[test]
    fn a_missing_message_fails_the_check() {
        let messages = [message(1, Source::Database), message(2, Source::Inspector)];
        assert!(
            check_messages(&messages)
                .unwrap_err()
                .contains("2 messages")
        );
    }

    #[test]
    fn progress_serializes_with_its_stage_inline() {
        let progress = Progress {
            stage: Stage::Sleeping {
                until: Timestamp(5_000),
            },
            started_at: Timestamp(0),
            timer_fired_at: None,
            proceeded_at: None,
            messages: Vec::new(),
        };
        let json = serde_json::to_value(&progress).unwrap();
        assert_eq!(json["stage"], "sleeping");
        assert_eq!(json["until"], "1970-01-01T00:00:05.000Z");
        let back: Progress = serde_json::from_value(json).unwrap();
        assert_eq!(back, progress);
    }

    #[test]
    fn capitalize_upper_cases_the_first_letter_only() {
        assert_eq!(capitalize("mr-mime"), "Mr-mime");
        assert_eq!(capitalize(""), "");
    }
}
