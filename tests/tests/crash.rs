//! Crash safety: a writer process is killed with SIGKILL at random moments, 100 times, on
//! the same store. After every kill the store opens, every acknowledged write is there with
//! its acknowledged content, and the query views equal a rebuild from the documents. The
//! store is a county node's, writing a village's members, so that the sorted index of its
//! member listings (kept at county and city nodes) is under test with the other views.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use grassroots_schema::{MemberId, UnitId};

const KILLS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_write_and_views_match_a_rebuild() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.redb");
    let node: UnitId = "c01/k01".parse()?;
    let unit: UnitId = "c01/k01/t01/v01".parse()?;
    // Acknowledged content per member (the latest acknowledgement wins).
    let mut acked: BTreeMap<MemberId, String> = BTreeMap::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..KILLS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
            .arg(&path)
            .arg(node.as_str())
            .arg(unit.as_str())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(30 + seed % 150)).await;
        child.kill()?; // SIGKILL
        child.wait()?;
        for line in reader.join().expect("reader thread") {
            // A torn last line (cut by the kill) was never complete, so never counted.
            let Some((id, name)) = line.strip_prefix("ACK ").and_then(|l| l.split_once(' ')) else {
                continue;
            };
            acked.insert(id.parse()?, name.to_owned());
        }
        let (store, reader, thread) = grassroots_node::store::open(&path, node.clone())
            .unwrap_or_else(|e| panic!("store failed to open after kill {round}: {e}"));
        for (id, name) in &acked {
            let m = reader
                .member(id)?
                .unwrap_or_else(|| panic!("kill {round}: acknowledged {id} lost"));
            // The view may show a later (unacknowledged but durable) edit, never an older one.
            assert!(
                m.name == *name || m.name == format!("{name} (edited)"),
                "kill {round}: {id} is {:?}, acknowledged {name:?}",
                m.name
            );
        }
        let diffs = store.verify_views().await?;
        assert!(
            diffs.is_empty(),
            "kill {round}: views differ from a rebuild: {diffs:?}"
        );
        // The county's listing by name reads through the index (it is the node's own), so
        // a page as long as the members held shows the index holds them.
        let page = reader.members_ordered(
            &node,
            true,
            grassroots_node::store::MemberFilter::default(),
            grassroots_node::store::MemberOrder::Name,
            false,
            None,
            acked.len(),
            false,
        )?;
        assert!(
            page.items.len() >= acked.len(),
            "kill {round}: {} members listed by name, {} acknowledged",
            page.items.len(),
            acked.len()
        );
        thread.shutdown().await;
    }
    assert!(
        acked.len() > KILLS,
        "the writer barely wrote: {} acknowledged writes",
        acked.len()
    );
    Ok(())
}
