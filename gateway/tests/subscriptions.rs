//! Subscriptions over a real WebSocket (`graphql-transport-ws`): notifications follow the
//! caller's scope, and a bad token is refused.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use grassroots_gateway::{GatewayOptions, serve_with};
use grassroots_node::auth::{new_token, token_hash};
use grassroots_schema::{Education, Gender, MemberStatus, NewMember, Role, UnitId};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

mod common;
use common::{store_for, token_for};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The node's gateway of `f` served on a loopback port: its WebSocket URL, what stops it,
/// and its task.
async fn served(f: &common::Fixture) -> Served {
    served_with(f, GatewayOptions::default()).await
}

type Served = (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

/// [`served`] with `options`.
async fn served_with(f: &common::Fixture, options: GatewayOptions) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/graphql/ws", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_with(listener, f.backend.clone(), options, async {
        let _ = stopped.await;
    }));
    (url, stop, server)
}

/// An upgrade request to `url` asking for `graphql-transport-ws`.
fn request(url: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    req
}

async fn connect(url: &str, token: Option<&str>) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(request(url))
        .await
        .unwrap();
    let payload = match token {
        Some(t) => json!({ "Authorization": format!("Bearer {t}") }),
        None => json!({}),
    };
    send(
        &mut ws,
        json!({ "type": "connection_init", "payload": payload }),
    )
    .await;
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message, or None if the socket closes or nothing comes within `wait`.
async fn next(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).ok(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

/// Whether the server ends the connection within `wait` without acknowledging it (a
/// close, or the stream's end); not if it acknowledges it or stays silent.
async fn ends(ws: &mut Ws, wait: Duration) -> bool {
    // One deadline for all: pings may keep coming.
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(Message::Text(t)))) if t.contains("connection_ack") => return false,
            Ok(Some(Ok(_))) => continue,
            Err(_) => return false,
        }
    }
}

/// `{ nodeUnit { id } }` asked under `id`, and its answer (other messages passed over).
async fn node_unit(ws: &mut Ws, id: &str) -> Value {
    send(
        ws,
        json!({ "id": id, "type": "subscribe",
                "payload": { "query": "{ nodeUnit { id } }" } }),
    )
    .await;
    loop {
        let m = next(ws, Duration::from_secs(5))
            .await
            .expect("the socket answers");
        if m["id"] == id && m["type"] == "next" {
            break m;
        }
    }
}

async fn subscribe(ws: &mut Ws) {
    let ack = next(ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    send(
        ws,
        json!({ "id": "1", "type": "subscribe",
                "payload": { "query": "subscription { changes { unit kind missed } }" } }),
    )
    .await;
}

#[tokio::test]
async fn changes_follow_the_callers_scope() {
    // A county store without a profile yet: writing it is one of the notices below.
    let f = store_for("c01/k01").await;
    let county = f.backend.node_unit.clone();
    let store = f.backend.store.clone();
    let viewer = token_for(&f, "c01/k01", Role::Viewer).await;
    let outsider = token_for(&f, "c01/k02", Role::Admin).await;
    let (url, stop, server) = served(&f).await;

    // An unknown token ends the connection instead of acknowledging it.
    let mut forged = connect(&url, Some("grt_forged")).await;
    assert!(ends(&mut forged, Duration::from_secs(5)).await);

    let mut mine = connect(&url, Some(&viewer)).await;
    let mut theirs = connect(&url, Some(&outsider)).await;
    subscribe(&mut mine).await;
    subscribe(&mut theirs).await;
    // Subscriptions are registered when the server has read the subscribe message.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let member = NewMember {
        name: "Wang Fang".into(),
        birth_year: 1990,
        gender: Gender::Female,
        education: Education::Bachelor,
        joined_on: "2020-01-01".into(),
        status: MemberStatus::Full,
        phone: None,
        id_number: None,
        categories: Vec::new(),
    };
    let village: UnitId = "c01/k01/t01/v01".parse().unwrap();
    store.create_member(village, member).await.unwrap();
    store
        .set_profile("Dongping County".into(), vec![])
        .await
        .unwrap();

    // The county's viewer hears of both: the village register, then the county's profile.
    let got = next(&mut mine, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        got["payload"]["data"]["changes"],
        json!({ "unit": "c01/k01/t01/v01", "kind": "MEMBERS", "missed": 0 }),
        "{got}"
    );
    let got = next(&mut mine, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        got["payload"]["data"]["changes"]["kind"], "PROFILE",
        "{got}"
    );
    // Another county's admin may not read the register: its first notice is the public
    // profile, written after the register.
    let got = next(&mut theirs, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        got["payload"]["data"]["changes"],
        json!({ "unit": "c01/k01", "kind": "PROFILE", "missed": 0 }),
        "{got}"
    );

    // Records of the other kinds are named by their kind.
    let meeting = [("kind", "party_lecture"), ("heldOn", "2026-03-01")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), grassroots_schema::Value::Text(v.into())))
        .chain([("attendance".to_owned(), grassroots_schema::Value::Int(9))])
        .collect();
    store
        .create_record(
            grassroots_schema::DocKind::Meetings,
            "c01/k01/t01/v02".parse().unwrap(),
            meeting,
            None,
            None,
        )
        .await
        .unwrap();
    let got = next(&mut mine, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        got["payload"]["data"]["changes"],
        json!({ "unit": "c01/k01/t01/v02", "kind": "MEETINGS", "missed": 0 }),
        "{got}"
    );

    // Queries run over the socket too, with the same error codes as over HTTP.
    send(
        &mut mine,
        json!({ "id": "2", "type": "subscribe",
                "payload": { "query": "{ nodeUnit { id } }" } }),
    )
    .await;
    let got = next(&mut mine, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got["id"], "2", "{got}");
    assert_eq!(got["payload"]["data"]["nodeUnit"]["id"], "c01/k01", "{got}");
    assert_eq!(
        next(&mut mine, Duration::from_secs(5)).await.unwrap()["type"],
        "complete"
    );
    send(
        &mut mine,
        json!({ "id": "3", "type": "subscribe",
                "payload": { "query": "{ nodeUnit { members(first: 101) { totalCount } } }" } }),
    )
    .await;
    let got = next(&mut mine, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got["id"], "3", "{got}");
    assert_eq!(
        got["payload"]["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{got}"
    );
    assert_eq!(
        next(&mut mine, Duration::from_secs(5)).await.unwrap()["type"],
        "complete"
    );

    send(
        &mut mine,
        json!({ "id": "4", "type": "subscribe",
                "payload": { "query": "{ nodeUnit { nosuch } }" } }),
    )
    .await;
    let got = next(&mut mine, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got["id"], "4", "{got}");
    assert_eq!(
        got["payload"]["errors"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED",
        "{got}"
    );

    // Revoking a token ends its subscriptions and refuses its next operations, on a socket
    // opened before.
    let named = new_token().unwrap();
    store
        .add_named_user(
            token_hash(&named),
            county.clone(),
            Role::Viewer,
            Some("Leaving Soon".into()),
        )
        .await
        .unwrap();
    let mut leaving = connect(&url, Some(&named)).await;
    subscribe(&mut leaving).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        store
            .remove_users("Leaving Soon".into(), county.clone())
            .await
            .unwrap(),
        1
    );
    store
        .set_profile("Dongping County (renamed)".into(), vec![])
        .await
        .unwrap();
    let got = next(&mut leaving, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got, json!({ "id": "1", "type": "complete" }), "{got}");
    send(
        &mut leaving,
        json!({ "id": "5", "type": "subscribe",
                "payload": { "query": "{ nodeUnit { id } }" } }),
    )
    .await;
    let got = next(&mut leaving, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        got["payload"]["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{got}"
    );

    let _ = stop.send(());
    drop((mine, theirs, forged, leaving));
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    f.shutdown().await;
}

/// A query over the socket reads the node's status as it is then, not as the connection's
/// first query read it (the status is read once per operation).
#[tokio::test]
async fn each_query_over_a_socket_reads_the_status_anew() {
    let f = store_for("c01/k01").await;
    let store = f.backend.store.clone();
    store
        .set_profile("Dongping County".into(), vec![])
        .await
        .unwrap();
    let t01: UnitId = "c01/k01/t01".parse().unwrap();
    store
        .set_unit_details(
            t01.clone(),
            grassroots_schema::UnitDetails {
                name: Some("Qingshui Township".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let admin = token_for(&f, "c01/k01", Role::Admin).await;
    let (url, stop, server) = served(&f).await;
    let mut ws = connect(&url, Some(&admin)).await;
    let ack = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    let mut last_error = async |id: &str| {
        send(
            &mut ws,
            json!({ "id": id, "type": "subscribe", "payload": { "query":
                "{ unit(id: \"c01/k01/t01\") { sync { link { lastError } } } }" } }),
        )
        .await;
        let got = next(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got["id"], id, "{got}");
        let complete = next(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(complete["type"], "complete", "{complete}");
        got["payload"]["data"]["unit"]["sync"]["link"]["lastError"].clone()
    };
    assert_eq!(last_error("1").await, Value::Null);
    store.dial_failed(t01, "refused for a test".into()).await;
    assert_eq!(last_error("2").await, json!("refused for a test"));
    // A query nesting brackets past any limit is refused before it is parsed (the parser
    // recurses per level), over a socket as over HTTP; the socket goes on.
    let mut ws = connect(&url, Some(&admin)).await;
    let ack = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    let deep = format!(
        "{{ unit(id: {}{}) {{ id }} }}",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    send(
        &mut ws,
        json!({ "id": "3", "type": "subscribe", "payload": { "query": deep } }),
    )
    .await;
    let got = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert!(
        got.to_string().contains("nests brackets deeper than 64"),
        "{got}"
    );
    send(
        &mut ws,
        json!({ "id": "4", "type": "subscribe", "payload": { "query": "{ nodeUnit { id } }" } }),
    )
    .await;
    let mut answered = None;
    while let Some(m) = next(&mut ws, Duration::from_secs(5)).await {
        if m["id"] == "4" && m["type"] == "next" {
            answered = Some(m);
            break;
        }
    }
    let answered = answered.expect("an answer after the refused query");
    assert_eq!(
        answered["payload"]["data"]["nodeUnit"]["id"], "c01/k01",
        "{answered}"
    );
    let _ = stop.send(());
    let _ = server.await;
}

/// A subscriber that fell behind is told how many notifications it missed, counted over the
/// whole node: a number to a user of the node's unit, but only "some" (1) to a caller who
/// may not read all that was counted (here anonymous, who reads public disclosures only).
#[tokio::test]
async fn a_lagging_subscriber_is_told_what_it_missed_as_far_as_it_may_know() {
    use grassroots_schema::{Caller, DocKind, Value as V};
    let f = common::fixture().await;
    let store = f.backend.store.clone();
    let schema = grassroots_gateway::build_schema(f.backend.clone());
    let q = "subscription { changes { unit kind missed } }";
    let viewer = Caller::User {
        unit: "c01/k01".parse().unwrap(),
        role: Role::Viewer,
    };
    let mut counted = schema.execute_stream(async_graphql::Request::new(q).data(viewer));
    let mut public = schema.execute_stream(async_graphql::Request::new(q));
    // Polled once, each has subscribed and waits.
    for s in [&mut counted, &mut public] {
        assert!(
            tokio::time::timeout(Duration::from_millis(50), s.next())
                .await
                .is_err()
        );
    }
    // More changes than the feed holds, none of them public.
    let village: UnitId = "c01/k01/t01/v01".parse().unwrap();
    for i in 0..grassroots_node::store::CHANGE_FEED + 10 {
        let meeting = [("kind", "party_lecture"), ("heldOn", "2026-03-01")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), V::Text(v.into())))
            .chain([("attendance".to_owned(), V::Int(i64::try_from(i).unwrap()))])
            .collect();
        store
            .create_record(DocKind::Meetings, village.clone(), meeting, None, None)
            .await
            .unwrap();
    }
    let disclosure = [
        ("title", "Subsidies"),
        ("category", "funds"),
        ("publishedOn", "2026-03-01"),
        ("body", "..."),
        ("item", "collective_income"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), V::Text(v.into())))
    .collect();
    store
        .create_record(DocKind::Disclosures, village, disclosure, None, None)
        .await
        .unwrap();
    let seen = first(&mut counted).await;
    assert!(seen["missed"].as_i64().unwrap() > 1, "{seen}");
    let seen = first(&mut public).await;
    assert_eq!(
        seen,
        json!({ "unit": "c01/k01/t01/v01", "kind": "DISCLOSURES", "missed": 1 })
    );
}

/// The next notification of a subscription run on the schema itself.
async fn first(
    s: &mut (impl futures_util::Stream<Item = async_graphql::Response> + Unpin),
) -> Value {
    let r = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .unwrap()
        .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    r.data.into_json().unwrap()["changes"].clone()
}

/// A connection runs a bounded number of subscriptions (each wakes at every commit): one
/// more is answered `BUSY`, and once one stops another runs. And a bounded number of
/// WebSocket connections are open at once (an upgraded connection leaves the HTTP
/// connections' bound): one more is refused until one closes.
#[tokio::test]
async fn subscriptions_and_sockets_are_bounded() {
    use grassroots_gateway::http::{MAX_SUBSCRIPTIONS_PER_SOCKET, MAX_WEBSOCKETS};
    let f = store_for("c01/k01").await;
    let viewer = token_for(&f, "c01/k01", Role::Viewer).await;
    let (url, stop, server) = served(&f).await;
    let wait = Duration::from_secs(5);
    let mut ws = connect(&url, Some(&viewer)).await;
    assert_eq!(next(&mut ws, wait).await.unwrap()["type"], "connection_ack");
    let sub = |id: usize| {
        json!({ "id": id.to_string(), "type": "subscribe",
                "payload": { "query": "subscription { changes { unit } }" } })
    };
    for id in 0..=MAX_SUBSCRIPTIONS_PER_SOCKET {
        send(&mut ws, sub(id)).await;
    }
    // The one past the bound is answered at once with its error; the others run silently.
    let busy = next(&mut ws, wait).await.unwrap();
    assert_eq!(
        busy["id"],
        MAX_SUBSCRIPTIONS_PER_SOCKET.to_string(),
        "{busy}"
    );
    assert_eq!(
        busy["payload"]["errors"][0]["extensions"]["code"], "BUSY",
        "{busy}"
    );
    // One stopped, another runs (no error comes for it).
    send(&mut ws, json!({ "id": "0", "type": "complete" })).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut ws, sub(100)).await;
    while let Some(m) = next(&mut ws, Duration::from_millis(500)).await {
        assert_ne!(
            m["id"], "100",
            "a subscription in the freed place was refused: {m}"
        );
    }

    // Sockets: this one and as many more as the bound allows, then one more is refused.
    let mut open = Vec::new();
    for _ in 1..MAX_WEBSOCKETS {
        open.push(connect(&url, Some(&viewer)).await);
    }
    let req = request(&url);
    let refused = tokio_tungstenite::connect_async(req.clone()).await;
    assert!(refused.is_err(), "one socket past the bound was upgraded");
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio_tungstenite::connect_async(req).await.is_ok(),
        "a socket in the freed place was refused"
    );
    drop(open);
    let _ = stop.send(());
    let _ = server.await;
}

/// A connection that sends no `connection_init` is closed after
/// [`WEBSOCKET_INIT_WITHIN`](grassroots_gateway::http::WEBSOCKET_INIT_WITHIN) (it would hold
/// one of the bounded places for ever); one that did stays. And a connection has a bounded
/// number of operations under way: of many queries sent at once, those past the bound are
/// answered `BUSY`, and every one is answered.
#[tokio::test]
async fn a_silent_socket_is_closed_and_operations_are_bounded() {
    use grassroots_gateway::http::{MAX_OPERATIONS_PER_SOCKET, WEBSOCKET_INIT_WITHIN};
    let f = store_for("c01/k01").await;
    let viewer = token_for(&f, "c01/k01", Role::Viewer).await;
    let (url, stop, server) = served(&f).await;
    let req = request(&url);
    let (mut silent, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut ws = connect(&url, Some(&viewer)).await;
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "connection_ack"
    );
    let started = std::time::Instant::now();
    assert!(
        ends(&mut silent, WEBSOCKET_INIT_WITHIN + Duration::from_secs(5)).await,
        "a socket without connection_init was left open"
    );
    assert!(started.elapsed() + Duration::from_secs(1) >= WEBSOCKET_INIT_WITHIN);

    let n = 4 * MAX_OPERATIONS_PER_SOCKET;
    for id in 0..n {
        let query = json!({ "id": id.to_string(), "type": "subscribe",
                            "payload": { "query": "{ nodeUnit { id name } }" } });
        ws.feed(Message::Text(query.to_string().into()))
            .await
            .unwrap();
    }
    ws.flush().await.unwrap();
    let (mut answered, mut busy) = (std::collections::HashSet::new(), 0);
    while answered.len() < n {
        let m = next(&mut ws, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{} of {n} answered", answered.len()));
        if m["type"] == "next" {
            let errors = &m["payload"]["errors"];
            if errors.is_array() {
                assert_eq!(errors[0]["extensions"]["code"], "BUSY", "{m}");
                busy += 1;
            } else {
                assert_eq!(m["payload"]["data"]["nodeUnit"]["id"], "c01/k01", "{m}");
            }
            answered.insert(m["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert!(
        busy > 0 && busy <= n - MAX_OPERATIONS_PER_SOCKET,
        "{busy} of {n} busy"
    );
    // The connection that did its init is still there.
    let m = node_unit(&mut ws, "last").await;
    assert_eq!(m["payload"]["data"]["nodeUnit"]["id"], "c01/k01", "{m}");
    let _ = stop.send(());
    let _ = server.await;
}

/// A client that has gone silent (it reads nothing, so it answers no ping) is closed after
/// twice the ping interval, as one whose machine vanished would be; one that reads answers
/// the pings by itself and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_gone_silent_is_closed_and_one_answering_pings_stays() {
    let f = store_for("c01/k01").await;
    let viewer = token_for(&f, "c01/k01", Role::Viewer).await;
    let options = GatewayOptions {
        websocket_ping: Duration::from_millis(500),
        ..GatewayOptions::default()
    };
    let (url, stop, server) = served_with(&f, options).await;
    let wait = Duration::from_secs(5);
    let mut gone = connect(&url, Some(&viewer)).await;
    assert_eq!(
        next(&mut gone, wait).await.unwrap()["type"],
        "connection_ack"
    );
    let mut live = connect(&url, Some(&viewer)).await;
    subscribe(&mut live).await;
    // Seven intervals, the live client reading (a read sends the pongs it owes).
    let until = std::time::Instant::now() + Duration::from_millis(3_500);
    while std::time::Instant::now() < until {
        if let Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) =
            tokio::time::timeout(Duration::from_millis(50), live.next()).await
        {
            panic!("a client answering pings was closed");
        }
    }
    assert!(
        ends(&mut gone, Duration::from_secs(2)).await,
        "a silent client was left open"
    );
    let m = node_unit(&mut live, "q").await;
    assert_eq!(m["payload"]["data"]["nodeUnit"]["id"], "c01/k01", "{m}");
    let _ = stop.send(());
    let _ = server.await;
}
