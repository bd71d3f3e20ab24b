//! What registries send about authentication: `WWW-Authenticate` values
//! and token services' answers.

use kiln_registry::{parse_challenge, parse_token_answer, Challenge, MAX_TOKEN_LIFETIME};

pub fn challenge(data: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(data) else {
        return 0;
    };
    match parse_challenge(text) {
        Some(Challenge::Bearer { realm, .. }) => {
            // A Bearer challenge without a realm is not one kiln can follow.
            assert!(
                text.to_ascii_lowercase().contains("realm"),
                "{text:?} gave realm {realm:?}"
            );
            1
        }
        Some(Challenge::Basic) => 1,
        None => 0,
    }
}

pub fn token_answer(data: &[u8]) -> usize {
    match parse_token_answer(data) {
        Ok((token, lifetime)) => {
            assert!(!token.is_empty(), "an empty token accepted");
            assert!(lifetime <= MAX_TOKEN_LIFETIME, "lifetime {lifetime:?}");
            1
        }
        Err(_) => 0,
    }
}
