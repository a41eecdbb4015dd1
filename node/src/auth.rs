//! Bearer tokens: random, shown once, stored only as SHA-256 hashes.

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

/// The random source failed.
#[derive(Debug, thiserror::Error)]
#[error("no randomness available for a token")]
pub struct TokenError;

/// A new token: `grt_` and 48 hex digits (192 random bits).
pub fn new_token() -> Result<String, TokenError> {
    let mut b = [0u8; 24];
    SystemRandom::new().fill(&mut b).map_err(|_| TokenError)?;
    Ok(format!("grt_{}", hex::encode(b)))
}

/// What the store keeps of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    let d = digest(&SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_hash_stably() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("grt_") && a.len() == 52);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
    }
}
