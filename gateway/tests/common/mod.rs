//! What the gateway's integration tests share: a node's store and tokens for it.
// Each test binary uses part of it.
#![allow(dead_code)]

use grassroots_gateway::Backend;
use grassroots_node::auth::{new_token, token_hash};
use grassroots_schema::{Role, UnitId};

/// A county node's store (with its profile) and the gateway's backend over it.
pub struct Fixture {
    pub backend: Backend,
    _thread: grassroots_node::store::StoreThread,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A fixture over a store opened elsewhere, in `dir`.
    pub fn over(
        backend: Backend,
        thread: grassroots_node::store::StoreThread,
        dir: tempfile::TempDir,
    ) -> Fixture {
        Fixture {
            backend,
            _thread: thread,
            _dir: dir,
        }
    }

    /// Stop the store; returns once its database is closed.
    pub async fn shutdown(self) {
        self._thread.shutdown().await;
    }
}

/// A fresh store for the county `c01/k01`, named Dongping County.
pub async fn fixture() -> Fixture {
    let f = store_for("c01/k01").await;
    f.backend
        .store
        .set_profile("Dongping County".into(), vec![])
        .await
        .unwrap();
    f
}

/// A fresh, empty store for a node of `unit`, and the gateway's backend over it.
pub async fn store_for(unit: &str) -> Fixture {
    store_taking_back(unit, None).await
}

/// [`store_for`], the store told first to take back from its children until `until_ms`
/// (as `grassroots store take-back` does), if given.
pub async fn store_taking_back(unit: &str, until_ms: Option<u64>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let unit: UnitId = unit.parse().unwrap();
    if let Some(until) = until_ms {
        grassroots_node::store::backup::take_back(&dir.path().join("s.redb"), &unit, until)
            .unwrap();
    }
    let (store, reader, thread) =
        grassroots_node::store::open(&dir.path().join("s.redb"), unit.clone()).unwrap();
    Fixture {
        backend: Backend {
            node_unit: unit,
            store,
            reader,
            own_nodes: Vec::new(),
        },
        _thread: thread,
        _dir: dir,
    }
}

/// A new token bound to `unit` with `role`.
pub async fn token_for(f: &Fixture, unit: &str, role: Role) -> String {
    let token = new_token().unwrap();
    f.backend
        .store
        .add_user(token_hash(&token), unit.parse().unwrap(), role)
        .await
        .unwrap();
    token
}
