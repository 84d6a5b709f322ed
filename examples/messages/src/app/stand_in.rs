//! Local stand-ins of the two public APIs, shaped like them, so the example
//! works offline:
//!
//! - `GET /stand-in/pokemon/{id}` answers `{"id": 25, "name": "pikachu", ...}`
//!   like `https://pokeapi.co/api/v2/pokemon/{id}` (ids 1 to 151);
//! - `GET /stand-in/joke` answers `{"id": "...", "joke": "...", "status": 200}`
//!   like `https://icanhazdadjoke.com/` with `Accept: application/json`.
//!
//! `POST /stand-in/misbehave` with `{"endpoint": "pokemon" | "joke", "mode":
//! "down" | "garbage" | "wrong_shape", "calls": N}` makes the next N calls of
//! that endpoint fail (503), answer a body that is not JSON, or answer JSON
//! without the expected field: the activity fails and is retried, which the
//! run's history shows.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{JOKES, pokemon_name};

/// Path of the Pokémon stand-in (the app appends `/{id}`).
pub const POKEMON_PATH: &str = "/stand-in/pokemon";
/// Path of the joke stand-in.
pub const JOKE_PATH: &str = "/stand-in/joke";
/// Most calls one misbehave request may spoil.
pub const MISBEHAVE_CALLS_MAX: u32 = 1_000;

/// How the next calls of an endpoint go wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Misbehaviour {
    /// `503 Service Unavailable`.
    Down,
    /// `200` with a body that is not JSON.
    Garbage,
    /// `200` with JSON lacking the field the activity reads.
    WrongShape,
}

/// A stand-in endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `/stand-in/pokemon/{id}`.
    Pokemon,
    /// `/stand-in/joke`.
    Joke,
}

/// A request to misbehave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MisbehaveRequest {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// How.
    pub mode: Misbehaviour,
    /// For how many calls.
    pub calls: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Spoiled {
    mode: Option<Misbehaviour>,
    calls_left: u32,
}

impl Spoiled {
    /// The misbehaviour of this call, if any, counting it down.
    fn take(&mut self) -> Option<Misbehaviour> {
        if self.calls_left == 0 {
            return None;
        }
        self.calls_left -= 1;
        self.mode
    }
}

/// The stand-ins' state: misbehaviours pending, jokes told.
#[derive(Debug, Default)]
pub struct StandIns {
    pokemon: Mutex<Spoiled>,
    joke: Mutex<Spoiled>,
    jokes_told: AtomicU64,
    calls: AtomicU64,
}

impl StandIns {
    /// Makes the next `calls` calls of `endpoint` misbehave (replacing what was pending).
    pub fn misbehave(&self, request: &MisbehaveRequest) -> Result<(), String> {
        if request.calls > MISBEHAVE_CALLS_MAX {
            return Err(format!("calls must be at most {MISBEHAVE_CALLS_MAX}"));
        }
        *self.slot(request.endpoint).lock().expect("stand-in lock") = Spoiled {
            mode: Some(request.mode),
            calls_left: request.calls,
        };
        tracing::info!(?request, "a stand-in will misbehave");
        Ok(())
    }

    /// Calls served so far, misbehaving ones included.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn slot(&self, endpoint: Endpoint) -> &Mutex<Spoiled> {
        match endpoint {
            Endpoint::Pokemon => &self.pokemon,
            Endpoint::Joke => &self.joke,
        }
    }

    fn spoiled(&self, endpoint: Endpoint) -> Option<Response> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mode = self.slot(endpoint).lock().expect("stand-in lock").take()?;
        tracing::info!(?endpoint, ?mode, "a stand-in misbehaves");
        Some(match mode {
            Misbehaviour::Down => {
                (StatusCode::SERVICE_UNAVAILABLE, "the stand-in is down").into_response()
            }
            Misbehaviour::Garbage => (
                [(CONTENT_TYPE, "text/html")],
                "<html><body>502 Bad Gateway (garbage from the stand-in)</body></html>",
            )
                .into_response(),
            Misbehaviour::WrongShape => {
                axum::Json(json!({"unexpected": "shape", "status": 200})).into_response()
            }
        })
    }

    /// `GET /stand-in/pokemon/{id}`.
    pub fn pokemon(&self, id: &str) -> Response {
        if let Some(response) = self.spoiled(Endpoint::Pokemon) {
            return response;
        }
        let known = id
            .parse::<u32>()
            .ok()
            .and_then(|id| Some((id, pokemon_name(id)?)));
        match known {
            Some((id, name)) => {
                axum::Json(json!({"id": id, "name": name, "order": id, "is_default": true}))
                    .into_response()
            }
            None => (StatusCode::NOT_FOUND, "Not Found").into_response(),
        }
    }

    /// `GET /stand-in/joke`.
    pub fn joke(&self) -> Response {
        if let Some(response) = self.spoiled(Endpoint::Joke) {
            return response;
        }
        let told = self.jokes_told.fetch_add(1, Ordering::Relaxed);
        let index = usize::try_from(told % JOKES.len() as u64).expect("a small index");
        let joke = JOKES[index];
        axum::Json(json!({"id": format!("stand-in-{index}"), "joke": joke, "status": 200}))
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misbehaviour_spoils_exactly_the_calls_it_names() {
        let stand_ins = StandIns::default();
        let request = MisbehaveRequest {
            endpoint: Endpoint::Joke,
            mode: Misbehaviour::Down,
            calls: 2,
        };
        stand_ins.misbehave(&request).unwrap();
        assert_eq!(stand_ins.joke().status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(stand_ins.pokemon("1").status(), StatusCode::OK);
        assert_eq!(stand_ins.joke().status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(stand_ins.joke().status(), StatusCode::OK);
        assert_eq!(stand_ins.calls(), 4);
    }

    #[test]
    fn an_unknown_pokemon_is_not_found() {
        let stand_ins = StandIns::default();
        assert_eq!(stand_ins.pokemon("0").status(), StatusCode::NOT_FOUND);
        assert_eq!(stand_ins.pokemon("pikachu").status(), StatusCode::NOT_FOUND);
        assert_eq!(stand_ins.pokemon("152").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn too_many_spoiled_calls_are_refused() {
        let request = MisbehaveRequest {
            endpoint: Endpoint::Pokemon,
            mode: Misbehaviour::Garbage,
            calls: MISBEHAVE_CALLS_MAX + 1,
        };
        assert!(StandIns::default().misbehave(&request).is_err());
    }
}
