//! The address-validation tokens (QUIC's NEW_TOKEN) a node's parent gave it, kept in a file
//! of the node's data folder so that they outlive the process: a village whose node was
//! switched off and on presents the token of its last link, and a parent set to copy its
//! handshake answers (`handshake_copies`) copies them to it at once (see `copies.rs`).
//! quinn's own store keeps them in memory, so every restart dialled as a stranger.
//!
//! The file is a version byte, then per token: the server name's length (one byte) and
//! bytes, the token's length (two bytes, big-endian) and bytes. It is rewritten whole, to a
//! temporary file renamed over it, after each change; a file that does not read back whole
//! is ignored (a token only saves a parent some work; losing one costs nothing else).
//! A new token is written at once unless one was in the last second (a parent sending a
//! stream of them must not keep the file busy); one not written yet is written with the next
//! take or when the store is dropped.
//! A taken token leaves the file before it is used, so that none is presented twice
//! (quinn's rule: a reused token links two of a client's connections); one that cannot be
//! written out is not presented. The file is not synced to disk: after a power cut it may
//! hold a token already presented, which the parent then takes as unvalidated (its log of
//! used tokens), answering once. quinn calls in synchronously, so the file is written on the
//! calling thread: a few hundred bytes, once a dial and once a link.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use quinn::TokenStore;

const VERSION: u8 = 1;

/// Parents whose tokens are kept: a node dials one parent (under one name), and a few
/// spare for a parent renamed or moved.
const MAX_SERVERS: usize = 4;

/// Tokens kept per parent. A parent set to copy gives one per link; a second covers a dial
/// that fails after taking one.
const MAX_PER_SERVER: usize = 2;

/// Longer tokens are not kept (quinn's are under 100 bytes).
const MAX_TOKEN_LEN: usize = 1024;

/// Server names longer than this are not kept (a unit's DNS name is far shorter).
const MAX_NAME_LEN: usize = 255;

/// Tokens by server name, oldest first; the oldest server first.
type Tokens = Vec<(String, Vec<Bytes>)>;

/// A new token is written out at most this often: a parent sends one a link, and one
/// sending them in a stream must not keep the file (and a core) busy. One not written yet
/// is written with the next token taken, or when the store is dropped; lost in a crash, it
/// costs only a dial without a token.
const SAVE_NEW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A [`TokenStore`] kept in a file.
#[derive(Debug)]
pub(super) struct DiskTokens {
    path: PathBuf,
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    tokens: Tokens,
    /// When a new token was last written out.
    saved_new: Option<std::time::Instant>,
    /// Whether the file lacks a token given since.
    unsaved: bool,
}

impl DiskTokens {
    /// The tokens kept at `path`, none if the file is missing or does not read back whole.
    pub(super) fn open(path: &Path) -> Self {
        let tokens = match std::fs::read(path) {
            Ok(bytes) => decode(&bytes).unwrap_or_else(|| {
                tracing::warn!(path = %path.display(), "ignoring an unreadable file of QUIC address tokens");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read the QUIC address tokens: {e}");
                Vec::new()
            }
        };
        DiskTokens {
            path: path.to_owned(),
            kept: Mutex::new(Kept {
                tokens,
                ..Kept::default()
            }),
        }
    }

    /// Whether the file now holds `tokens`.
    fn save(&self, tokens: &Tokens) -> bool {
        // Whole (a reader never sees half), the owner's only, not flushed (see above).
        match crate::files::replace(&self.path, &encode(tokens), true, false) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "cannot keep the QUIC address tokens: {e}");
                false
            }
        }
    }
}

impl TokenStore for DiskTokens {
    fn insert(&self, server_name: &str, token: Bytes) {
        if token.len() > MAX_TOKEN_LEN || server_name.len() > MAX_NAME_LEN {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let tokens = &mut kept.tokens;
        let at = match tokens.iter().position(|(name, _)| name == server_name) {
            Some(at) => at,
            None => {
                if tokens.len() >= MAX_SERVERS {
                    tokens.remove(0);
                }
                tokens.push((server_name.to_owned(), Vec::new()));
                tokens.len() - 1
            }
        };
        let server = &mut tokens[at].1;
        if server.len() >= MAX_PER_SERVER {
            server.remove(0);
        }
        server.push(token);
        let now = std::time::Instant::now();
        if kept_saved_long_ago(&kept, now) {
            let saved = self.save(&kept.tokens);
            kept.saved_new = Some(now);
            kept.unsaved = !saved;
        } else {
            kept.unsaved = true;
        }
    }

    fn take(&self, server_name: &str) -> Option<Bytes> {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let tokens = &mut kept.tokens;
        let at = tokens.iter().position(|(name, _)| name == server_name)?;
        // The newest: the oldest is the likelier to have expired.
        let token = tokens[at].1.pop();
        if tokens[at].1.is_empty() {
            tokens.remove(at);
        }
        // Still in the file, it would be presented again after a restart: not presented.
        if self.save(&kept.tokens) {
            kept.unsaved = false;
            token
        } else {
            None
        }
    }
}

/// Whether a new token may be written out at `now`.
fn kept_saved_long_ago(kept: &Kept, now: std::time::Instant) -> bool {
    kept.saved_new
        .is_none_or(|t| now.saturating_duration_since(t) >= SAVE_NEW_EVERY)
}

impl Drop for DiskTokens {
    fn drop(&mut self) {
        let kept = self.kept.get_mut().unwrap_or_else(PoisonError::into_inner);
        if kept.unsaved {
            let tokens = std::mem::take(&mut kept.tokens);
            self.save(&tokens);
        }
    }
}

fn encode(tokens: &Tokens) -> Vec<u8> {
    let mut out = vec![VERSION];
    for (name, kept) in tokens {
        for token in kept {
            // Bounded on insert; the casts cannot truncate.
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(token.len() as u16).to_be_bytes());
            out.extend_from_slice(token);
        }
    }
    out
}

fn decode(bytes: &[u8]) -> Option<Tokens> {
    let (&version, mut rest) = bytes.split_first()?;
    if version != VERSION {
        return None;
    }
    let mut tokens: Tokens = Vec::new();
    while let Some((&name_len, after)) = rest.split_first() {
        let (name, after) = after.split_at_checked(usize::from(name_len))?;
        let name = std::str::from_utf8(name).ok()?;
        let (len, after) = after.split_at_checked(2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len > MAX_TOKEN_LEN {
            return None;
        }
        let (token, after) = after.split_at_checked(len)?;
        rest = after;
        let token = Bytes::copy_from_slice(token);
        let servers = tokens.len();
        match tokens.iter_mut().find(|(n, _)| n == name) {
            Some((_, kept)) if kept.len() < MAX_PER_SERVER => kept.push(token),
            None if servers < MAX_SERVERS => tokens.push((name.to_owned(), vec![token])),
            _ => return None,
        }
    }
    Some(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(b: u8, len: usize) -> Bytes {
        Bytes::from(vec![b; len])
    }

    #[test]
    fn tokens_outlive_the_store_and_each_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quic-tokens");
        let store = DiskTokens::open(&path);
        assert_eq!(store.take("c01.example"), None);
        store.insert("c01.example", token(1, 60));
        store.insert("c01.example", token(2, 60));
        store.insert("c01.example", token(3, 60));
        store.insert("k01.c01.example", token(4, 80));
        drop(store);

        let again = DiskTokens::open(&path);
        // Two kept per parent, the newest given first.
        assert_eq!(again.take("c01.example"), Some(token(3, 60)));
        drop(again);
        let again = DiskTokens::open(&path);
        assert_eq!(again.take("c01.example"), Some(token(2, 60)));
        assert_eq!(again.take("c01.example"), None);
        assert_eq!(again.take("k01.c01.example"), Some(token(4, 80)));
        drop(again);
        assert_eq!(DiskTokens::open(&path).take("k01.c01.example"), None);
    }

    /// A stream of new tokens (a parent sending them without end) rewrites the file at
    /// most once a second; what is not written yet is written with the next take, or when
    /// the store is dropped.
    #[test]
    fn new_tokens_are_written_out_at_most_once_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quic-tokens");
        let on_disk = || decode(&std::fs::read(&path).unwrap()).unwrap();
        let store = DiskTokens::open(&path);
        for i in 1..=50 {
            store.insert("c01.example", token(i, 60));
        }
        assert_eq!(
            on_disk(),
            vec![("c01.example".to_owned(), vec![token(1, 60)])]
        );
        drop(store);
        assert_eq!(
            on_disk(),
            vec![("c01.example".to_owned(), vec![token(49, 60), token(50, 60)])]
        );
        // A take writes out what was not.
        let store = DiskTokens::open(&path);
        store.insert("k01.c01.example", token(7, 60));
        store.insert("k01.c01.example", token(8, 60));
        assert_eq!(store.take("c01.example"), Some(token(50, 60)));
        assert_eq!(
            on_disk(),
            vec![
                ("c01.example".to_owned(), vec![token(49, 60)]),
                (
                    "k01.c01.example".to_owned(),
                    vec![token(7, 60), token(8, 60)]
                )
            ]
        );
    }

    /// A token whose taking cannot be written out is not presented (in the file, it would
    /// be presented again after a restart); here the folder is gone, so nothing is written
    /// and no token is ever presented.
    #[test]
    fn a_token_not_written_out_of_the_file_is_not_presented() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskTokens::open(&dir.path().join("gone").join("quic-tokens"));
        store.insert("c01.example", token(1, 60));
        assert_eq!(store.take("c01.example"), None);
    }

    #[test]
    fn bounds_hold_and_oversize_tokens_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quic-tokens");
        let store = DiskTokens::open(&path);
        for i in 0..10u8 {
            store.insert(&format!("s{i}"), token(i, 10));
        }
        store.insert("big", token(9, MAX_TOKEN_LEN + 1));
        store.insert(&"x".repeat(MAX_NAME_LEN + 1), token(9, 10));
        drop(store);
        let again = DiskTokens::open(&path);
        // The oldest servers gave way.
        assert_eq!(again.take("s0"), None);
        assert_eq!(again.take("big"), None);
        for i in 10 - MAX_SERVERS as u8..10 {
            assert_eq!(again.take(&format!("s{i}")), Some(token(i, 10)));
        }
    }

    #[test]
    fn an_unreadable_file_is_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quic-tokens");
        let good = {
            let store = DiskTokens::open(&path);
            store.insert("c01.example", token(7, 40));
            std::fs::read(&path).unwrap()
        };
        // Cut short, a wrong version, a length past the end, more than the bounds allow.
        let mut long = vec![VERSION];
        for _ in 0..=MAX_PER_SERVER {
            long.extend_from_slice(&good[1..]);
        }
        for bad in [
            good[..good.len() - 1].to_vec(),
            [&[VERSION + 1][..], &good[1..]].concat(),
            [&good[..], &[3, b'a', b'b', b'c', 0xff, 0xff]].concat(),
            long,
        ] {
            std::fs::write(&path, &bad).unwrap();
            let store = DiskTokens::open(&path);
            assert_eq!(store.take("c01.example"), None, "{bad:?}");
            store.insert("c01.example", token(8, 40));
            assert_eq!(
                DiskTokens::open(&path).take("c01.example"),
                Some(token(8, 40))
            );
        }
    }
}
