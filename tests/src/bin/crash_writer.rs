//! A store writer for the crash test: opens the store of a node and writes members of a unit
//! of its subtree (the node's own by default) from several concurrent tasks, printing
//! `ACK <member id>` for each write once it is acknowledged (durable), until it is killed.
//!
//! `crash-writer <store.redb> <node unit> [<unit written>]`

use std::io::Write as _;

use anyhow::Context as _;
use grassroots_schema::{Education, Gender, MemberPatch, MemberStatus, NewMember, UnitId};

const WRITERS: usize = 8;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    const USAGE: &str = "usage: crash-writer STORE NODE_UNIT [UNIT_WRITTEN]";
    let path = args.next().context(USAGE)?;
    let node: UnitId = args.next().context(USAGE)?.parse()?;
    let unit: UnitId = match args.next() {
        Some(u) => u.parse()?,
        None => node.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (store, _reader, _thread) = grassroots_node::store::open(path.as_ref(), node)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for w in 0..WRITERS {
            let (store, unit, tx) = (store.clone(), unit.clone(), tx.clone());
            tokio::spawn(async move {
                for i in 0u64.. {
                    let m = NewMember {
                        name: format!("Writer {w} member {i}"),
                        birth_year: 1950 + (i % 50) as i64,
                        gender: Gender::Female,
                        education: Education::SeniorSecondary,
                        joined_on: "2001-07-01".into(),
                        status: MemberStatus::Full,
                        phone: None,
                        id_number: None,
                        categories: Vec::new(),
                    };
                    let Ok(created) = store.create_member(unit.clone(), m).await else {
                        return;
                    };
                    // Every other record also gets an edit, so updates are under test too.
                    if i % 2 == 0 {
                        let patch = MemberPatch {
                            name: Some(format!("Writer {w} member {i} (edited)")),
                            ..Default::default()
                        };
                        let Ok(edited) = store.update_member(created.id.clone(), patch).await
                        else {
                            return;
                        };
                        let _ = tx.send(format!("ACK {} {}", edited.id, edited.name));
                    } else {
                        let _ = tx.send(format!("ACK {} {}", created.id, created.name));
                    }
                }
            });
        }
        drop(tx);
        let mut out = std::io::stdout().lock();
        while let Some(line) = rx.recv().await {
            writeln!(out, "{line}")?;
            out.flush()?;
        }
        anyhow::Ok(())
    })
}
