//! # The order-of-messages example
//!
//! The workflow that shows what Retrace is for:
//!
//! 1. a client request (the web page's Start button) starts a run;
//! 2. the run sleeps 5 seconds on a durable timer;
//! 3. an activity fetches a stored message from a database;
//! 4. a verification activity names a (fake) inspector;
//! 5. the run waits for the signal `proceed` (the page's Proceed button);
//! 6. two activities run in parallel: one fetches a Pokémon's name, one a dad joke;
//! 7. the run returns its four messages in chronological order.
//!
//! The library holds the workflow ([`OrderOfMessages`]) and its activities,
//! written against three small backend traits ([`MessageStore`], [`Fetcher`],
//! [`Inspector`]). The web app (feature `app`, on by default; the binary
//! `retrace-messages`) backs them with SQLite and HTTP; the simulator
//! (`retrace-sim`'s scenario `messages`) backs the same code with simulated
//! services under crashes, partitions and timeouts.
//!
//! ```text
//! cargo run -p retrace-messages            # then open http://127.0.0.1:8080
//! cargo run --release -p retrace-sim -- --scenario messages --seeds 0..1000
//! ```
//!
//! `docs/messages-history.md` walks through a run's history event by event.

mod activities;
mod backends;
mod names;
mod workflow;

#[cfg(feature = "app")]
pub mod app;

pub use activities::{
    ACTIVITY_TIMEOUT_MS, FETCH_ATTEMPT_TIMEOUT_MS, FetchJoke, FetchMessage, FetchPokemon,
    LOCAL_ATTEMPT_TIMEOUT_MS, POKEMON_NAME_BYTES_MAX, RETRY_INTERVAL_MS_INITIAL,
    RETRY_INTERVAL_MS_MAX, TEXT_BYTES_MAX, VerifyMessage, retry_policy,
};
pub use backends::{BackendError, FakeInspector, Fetcher, Inspector, MessageStore};
pub use names::{JOKES, POKEMON_NAMES};
pub use workflow::{
    MESSAGES_COUNT, MESSAGES_QUERY, Message, OrderInput, OrderOfMessages, POKEMON_ID_MAX,
    PROCEED_SIGNAL, Progress, SLEEP_MS_DEFAULT, SLEEP_MS_MAX, Source, Stage, check_messages,
};

/// The task queue the example's workflows and activities run on.
pub const TASK_QUEUE: &str = "messages";

/// The messages the database is seeded with, by id `1..=len`. The simulator
/// seeds its store with the same ones.
pub const SEED_MESSAGES: [&str; 5] = [
    "Hello from the database! This message was stored before your run began.",
    "Durable timers survive restarts: stop the app while it sleeps and start it again.",
    "Every step of this run is an event in its history; replaying it rebuilds the run.",
    "Activities run at least once; their effects happen once thanks to idempotency keys.",
    "Signals wait in the history until the workflow code asks for them.",
];

/// The name of Pokémon `id` (`1..=POKEMON_ID_MAX`), as PokeAPI spells it.
pub fn pokemon_name(id: u32) -> Option<&'static str> {
    let index = usize::try_from(id.checked_sub(1)?).ok()?;
    POKEMON_NAMES.get(index).copied()
}

/// `text` cut to at most `chars_max` characters (with `…` when cut), for
/// quoting untrusted input in error messages.
pub fn shorten(text: &str, chars_max: usize) -> String {
    match text.char_indices().nth(chars_max) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_first_generation_pokemon_has_its_real_name() {
        assert_eq!(pokemon_name(1), Some("bulbasaur"));
        assert_eq!(pokemon_name(25), Some("pikachu"));
        assert_eq!(pokemon_name(POKEMON_ID_MAX), Some("mew"));
        assert_eq!(pokemon_name(0), None);
        assert_eq!(pokemon_name(POKEMON_ID_MAX + 1), None);
    }

    #[test]
    fn shorten_cuts_on_character_boundaries() {
        assert_eq!(shorten("pokémon", 3), "pok…");
        assert_eq!(shorten("pokémon", 4), "poké…");
        assert_eq!(shorten("short", 10), "short");
    }
}
