//! The three things the activities talk to, as small traits, so the same
//! activities run against the real world (SQLite, HTTP; see `app`) and the
//! simulator (`KvStore`, `HttpApi` over the simulated network).

use std::sync::Arc;

use fake::Fake;
use fake::faker::name::en::Name;
use fake::rand::SeedableRng;
use fake::rand::rngs::ChaCha8Rng;
use retrace::activity::{ActivityContext, ActivityRunError};
use retrace::env::BoxFuture;
use retrace::types::{Failure, fnv1a64};
use serde_json::Value;

/// Why a backend call failed. The variant decides whether the activity is
/// retried: only `NotFound` is final.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend could not be reached or failed (down, timed out, 5xx).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The backend answered something this code cannot read (not JSON, a
    /// field missing). Retried: a broken proxy or a bad deploy may pass.
    #[error("bad response: {0}")]
    BadResponse(String),
    /// What was asked for does not exist: retrying cannot help.
    #[error("not found: {0}")]
    NotFound(String),
}

impl BackendError {
    /// The failure type written into histories (`last_failure.type`).
    pub fn failure_type(&self) -> &'static str {
        match self {
            BackendError::Unavailable(_) => "Unavailable",
            BackendError::BadResponse(_) => "BadResponse",
            BackendError::NotFound(_) => "NotFound",
        }
    }
}

impl From<BackendError> for ActivityRunError {
    fn from(error: BackendError) -> ActivityRunError {
        let mut failure = Failure::new(error.failure_type(), error.to_string());
        failure.non_retryable = matches!(error, BackendError::NotFound(_));
        ActivityRunError::Failed(failure)
    }
}

/// Where the stored messages live (the app: a SQLite table; the simulator: a
/// `KvStore`).
pub trait MessageStore: Send + Sync + 'static {
    /// The text of stored message `message_id`.
    fn message<'a>(
        &'a self,
        ctx: &'a ActivityContext,
        message_id: u32,
    ) -> BoxFuture<'a, Result<String, BackendError>>;
}

/// GETs JSON documents (the app: reqwest; the simulator: `HttpApi`).
pub trait Fetcher: Send + Sync + 'static {
    /// The JSON body of `GET url`; a non-2xx status or a body that is not
    /// JSON is an error.
    fn get_json<'a>(
        &'a self,
        ctx: &'a ActivityContext,
        url: &'a str,
    ) -> BoxFuture<'a, Result<Value, BackendError>>;
}

/// Verifies a message and names who did it.
pub trait Inspector: Send + Sync + 'static {
    /// The inspector who verified `message` for the activity `ctx`.
    fn inspect(&self, ctx: &ActivityContext, message: &str) -> Result<String, BackendError>;
}

impl<T: MessageStore + ?Sized> MessageStore for Arc<T> {
    fn message<'a>(
        &'a self,
        ctx: &'a ActivityContext,
        message_id: u32,
    ) -> BoxFuture<'a, Result<String, BackendError>> {
        (**self).message(ctx, message_id)
    }
}

impl<T: Fetcher + ?Sized> Fetcher for Arc<T> {
    fn get_json<'a>(
        &'a self,
        ctx: &'a ActivityContext,
        url: &'a str,
    ) -> BoxFuture<'a, Result<Value, BackendError>> {
        (**self).get_json(ctx, url)
    }
}

/// Makes up an inspector's name with the `fake` crate, from an RNG seeded by
/// the activity's idempotency key: every attempt of one activity names the
/// same inspector, and a simulation run is reproducible from its seed.
#[derive(Clone, Copy, Debug, Default)]
pub struct FakeInspector;

impl FakeInspector {
    /// The name drawn for idempotency key `key`.
    pub fn name_for(key: &str) -> String {
        assert!(!key.is_empty(), "an idempotency key is never empty");
        let mut rng = ChaCha8Rng::seed_from_u64(fnv1a64(key.as_bytes()));
        let name: String = Name().fake_with_rng(&mut rng);
        assert!(!name.is_empty());
        name
    }
}

impl Inspector for FakeInspector {
    fn inspect(&self, ctx: &ActivityContext, message: &str) -> Result<String, BackendError> {
        if message.trim().is_empty() {
            return Err(BackendError::NotFound(
                "an empty message cannot be verified".to_string(),
            ));
        }
        Ok(FakeInspector::name_for(&ctx.idempotency_key()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_inspector_names_the_same_person_for_the_same_key() {
        let first = FakeInspector::name_for("run-1/2");
        assert_eq!(first, FakeInspector::name_for("run-1/2"));
        assert!(first.contains(' '), "a first and a last name: {first}");
    }

    #[test]
    fn the_fake_inspector_draws_different_people_for_different_keys() {
        let names: std::collections::BTreeSet<String> = (0..20)
            .map(|i| FakeInspector::name_for(&format!("run-{i}/2")))
            .collect();
        assert!(names.len() > 10, "{names:?}");
    }

    #[test]
    fn only_not_found_is_final() {
        let failure = |error: BackendError| match ActivityRunError::from(error) {
            ActivityRunError::Failed(failure) => failure,
            other => panic!("{other:?}"),
        };
        assert!(failure(BackendError::NotFound("x".into())).non_retryable);
        assert!(!failure(BackendError::Unavailable("x".into())).non_retryable);
        let garbage = failure(BackendError::BadResponse("x".into()));
        assert!(!garbage.non_retryable);
        assert_eq!(garbage.failure_type, "BadResponse");
    }
}
