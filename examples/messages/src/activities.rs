//! The four activities: fetch the stored message, verify it, fetch a Pokémon's
//! name, fetch a dad joke. Each holds its backend behind a trait object, so
//! the workflow names one concrete type whatever the backend is.

use std::sync::Arc;
use std::time::Duration;

use retrace::activity::{Activity, ActivityContext, ActivityOptions, ActivityResult, RetryPolicy};
use serde_json::Value;

use crate::backends::{BackendError, Fetcher, Inspector, MessageStore};

/// Longest stored message, joke or inspector name accepted, in bytes.
pub const TEXT_BYTES_MAX: usize = 2_000;
/// Longest Pokémon name accepted, in bytes.
pub const POKEMON_NAME_BYTES_MAX: usize = 100;
/// Each attempt of a fetch (the HTTP client's own deadline is shorter).
pub const FETCH_ATTEMPT_TIMEOUT_MS: u64 = 10_000;
/// Each attempt of a database read or a verification.
pub const LOCAL_ATTEMPT_TIMEOUT_MS: u64 = 5_000;
/// The whole activity, every retry included.
pub const ACTIVITY_TIMEOUT_MS: u64 = 300_000;
/// First backoff after a failed attempt (then doubled, up to the maximum).
pub const RETRY_INTERVAL_MS_INITIAL: u64 = 500;
/// Longest backoff between attempts.
pub const RETRY_INTERVAL_MS_MAX: u64 = 5_000;

/// The retry policy of every activity here: quick first retries, capped
/// backoff, no attempt limit (the schedule-to-close timeout bounds them),
/// `NotFound` never retried.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy::default()
        .initial_interval_ms(RETRY_INTERVAL_MS_INITIAL)
        .maximum_interval_ms(RETRY_INTERVAL_MS_MAX)
        .maximum_attempts(0)
        .non_retryable("NotFound")
}

fn options(attempt_timeout_ms: u64) -> ActivityOptions {
    ActivityOptions::default()
        .start_to_close(Duration::from_millis(attempt_timeout_ms))
        .schedule_to_close(Duration::from_millis(ACTIVITY_TIMEOUT_MS))
        .retry(retry_policy())
}

/// A text field of a JSON document, checked for presence and size.
fn text_field(
    document: &Value,
    field: &str,
    bytes_max: usize,
    source: &str,
) -> Result<String, BackendError> {
    let text = document.get(field).and_then(Value::as_str).ok_or_else(|| {
        let shown = crate::shorten(&document.to_string(), 120);
        BackendError::BadResponse(format!("{source}: no string field {field:?} in {shown}"))
    })?;
    let text = text.trim();
    if text.is_empty() || text.len() > bytes_max {
        return Err(BackendError::BadResponse(format!(
            "{source}: field {field:?} is empty or longer than {bytes_max} bytes"
        )));
    }
    Ok(text.to_string())
}

/// Step 3: reads stored message `message_id` from the database.
pub struct FetchMessage {
    store: Arc<dyn MessageStore>,
}

impl FetchMessage {
    /// The activity over `store`.
    pub fn new(store: impl MessageStore) -> FetchMessage {
        FetchMessage {
            store: Arc::new(store),
        }
    }
}

impl Activity for FetchMessage {
    const NAME: &'static str = "fetch_message";
    type Input = u32;
    type Output = String;
    fn options() -> ActivityOptions {
        options(LOCAL_ATTEMPT_TIMEOUT_MS)
    }
    async fn run(&self, ctx: ActivityContext, message_id: u32) -> ActivityResult<String> {
        let text = self.store.message(&ctx, message_id).await?;
        if text.trim().is_empty() || text.len() > TEXT_BYTES_MAX {
            let reason = format!("message {message_id} is empty or over {TEXT_BYTES_MAX} bytes");
            return Err(BackendError::BadResponse(reason).into());
        }
        tracing::info!(
            message_id,
            attempt = ctx.attempt(),
            "fetched the stored message"
        );
        Ok(text)
    }
}

/// Step 4: verifies the message; returns the inspector's name.
pub struct VerifyMessage {
    inspector: Arc<dyn Inspector>,
}

impl VerifyMessage {
    /// The activity with `inspector`.
    pub fn new(inspector: impl Inspector) -> VerifyMessage {
        VerifyMessage {
            inspector: Arc::new(inspector),
        }
    }
}

impl Activity for VerifyMessage {
    const NAME: &'static str = "verify_message";
    type Input = String;
    type Output = String;
    fn options() -> ActivityOptions {
        options(LOCAL_ATTEMPT_TIMEOUT_MS)
    }
    async fn run(&self, ctx: ActivityContext, message: String) -> ActivityResult<String> {
        let inspector = self.inspector.inspect(&ctx, &message)?;
        assert!(!inspector.is_empty(), "an inspector has a name");
        tracing::info!(inspector, attempt = ctx.attempt(), "verified the message");
        Ok(inspector)
    }
}

/// Step 6a: the name of Pokémon `id`, from a PokeAPI-shaped endpoint
/// (`GET {base_url}/{id}` answers `{"name": "pikachu", ...}`).
pub struct FetchPokemon {
    fetcher: Arc<dyn Fetcher>,
    base_url: String,
}

impl FetchPokemon {
    /// The activity fetching from `base_url` (without the trailing `/{id}`).
    pub fn new(fetcher: impl Fetcher, base_url: &str) -> FetchPokemon {
        let base_url = base_url.trim_end_matches('/').to_string();
        assert!(!base_url.is_empty(), "a Pokémon URL is required");
        FetchPokemon {
            fetcher: Arc::new(fetcher),
            base_url,
        }
    }
}

impl Activity for FetchPokemon {
    const NAME: &'static str = "fetch_pokemon";
    type Input = u32;
    type Output = String;
    fn options() -> ActivityOptions {
        options(FETCH_ATTEMPT_TIMEOUT_MS)
    }
    async fn run(&self, ctx: ActivityContext, pokemon_id: u32) -> ActivityResult<String> {
        let url = format!("{}/{pokemon_id}", self.base_url);
        let document = self.fetcher.get_json(&ctx, &url).await?;
        let name = text_field(&document, "name", POKEMON_NAME_BYTES_MAX, &url)?;
        tracing::info!(
            pokemon_id,
            name,
            attempt = ctx.attempt(),
            "fetched a Pokémon"
        );
        Ok(name)
    }
}

/// Step 6b: a dad joke, from an icanhazdadjoke-shaped endpoint (`GET url`
/// with `Accept: application/json` answers `{"id", "joke", "status": 200}`).
pub struct FetchJoke {
    fetcher: Arc<dyn Fetcher>,
    url: String,
}

impl FetchJoke {
    /// The activity fetching from `url`.
    pub fn new(fetcher: impl Fetcher, url: &str) -> FetchJoke {
        assert!(!url.is_empty(), "a joke URL is required");
        FetchJoke {
            fetcher: Arc::new(fetcher),
            url: url.to_string(),
        }
    }
}

impl Activity for FetchJoke {
    const NAME: &'static str = "fetch_joke";
    type Input = ();
    type Output = String;
    fn options() -> ActivityOptions {
        options(FETCH_ATTEMPT_TIMEOUT_MS)
    }
    async fn run(&self, ctx: ActivityContext, (): ()) -> ActivityResult<String> {
        let document = self.fetcher.get_json(&ctx, &self.url).await?;
        let joke = text_field(&document, "joke", TEXT_BYTES_MAX, &self.url)?;
        tracing::info!(attempt = ctx.attempt(), "fetched a joke");
        Ok(joke)
    }
}
