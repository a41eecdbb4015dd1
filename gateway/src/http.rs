//! The HTTP face of a node: `/graphql`, GraphiQL at `/` with embedded assets, `/healthz`.

use std::collections::{HashMap, HashSet};
use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, FromRequest as _, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use grassroots_node::auth::token_hash;
use grassroots_schema::Caller;

use crate::error::{Code, code_unlabelled, error, internal};
use crate::graphql::{
    Backend, GatewaySchema, ProfileCache, StatusOnce, TokenHash, UnitBudget, UserName,
    build_schema_with,
};

/// Largest request body accepted.
pub const MAX_BODY: usize = 256 * 1024;
/// Longest a query may run.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct App {
    schema: GatewaySchema,
    /// The same with the limits of a request without a token.
    anonymous: GatewaySchema,
    /// Requests without a token running at once, and running or waiting: anyone can send
    /// them, and one of them may read every public record of the subtree, synchronously on
    /// a worker the node's links share. One at a time leaves the other worker to the links
    /// and the node's users; past the waiting bound they are told `BUSY`.
    anonymous_running: Arc<tokio::sync::Semaphore>,
    anonymous_waiting: Arc<tokio::sync::Semaphore>,
    /// WebSocket connections open ([`MAX_WEBSOCKETS`]): an upgraded connection leaves the
    /// HTTP connections' bound, so it has its own.
    websockets: Arc<tokio::sync::Semaphore>,
    /// Subscriptions without a token running, over every connection
    /// ([`MAX_ANONYMOUS_SUBSCRIPTIONS`]).
    anonymous_subscriptions: Arc<tokio::sync::Semaphore>,
    backend: Backend,
    parsed: Arc<ParsedQueries>,
    options: GatewayOptions,
}

/// Requests without a token that run at once, and that run or wait.
const ANONYMOUS_RUNNING: usize = 1;
const ANONYMOUS_WAITING: usize = 32;

/// WebSocket connections open at once; past it an upgrade is answered `BUSY` (HTTP 503).
pub const MAX_WEBSOCKETS: usize = 256;
/// How long an upgraded WebSocket has to send its `connection_init`: one that sends
/// nothing would otherwise hold one of the [`MAX_WEBSOCKETS`] places for ever.
pub const WEBSOCKET_INIT_WITHIN: Duration = Duration::from_secs(10);
/// Operations (queries, mutations and subscriptions) one WebSocket connection has under
/// way at once; past it one more is answered `BUSY`. async-graphql takes every operation a
/// client sends as it comes, each holding its query (up to 256 KiB) until it ends.
pub const MAX_OPERATIONS_PER_SOCKET: usize = 64;
/// Subscriptions one WebSocket connection runs at once; past it one more is answered
/// `BUSY`. Each wakes at every commit, so a connection holding thousands would make the
/// node's commits wake thousands of streams.
pub const MAX_SUBSCRIPTIONS_PER_SOCKET: usize = 16;
/// Subscriptions without a token running at once over every connection.
pub const MAX_ANONYMOUS_SUBSCRIPTIONS: usize = 64;

/// How a node's gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayOptions {
    /// Answer `__schema` and `__type` (GraphiQL needs them). A production node can switch
    /// them off (`introspection = false` in node.toml); the SDL is published in the
    /// repository anyway.
    pub introspection: bool,
    /// How long a client has to send a request's headers: one that sends them a byte a
    /// minute would otherwise hold its connection for ever.
    pub header_timeout: Duration,
    /// How long a client has, once its headers are in, to send the body of a query. A
    /// body trickled a byte at a time would otherwise hold its connection (one of 512)
    /// for as long as the client likes: 256 KiB at a village's 256 kbit/s take 8 s.
    pub body_timeout: Duration,
    /// How often a WebSocket is pinged (a WebSocket ping, which browsers and clients answer
    /// by themselves; 100 ms to an hour); one from which nothing, not even a pong, has come
    /// for twice this (seen at the next ping), or that takes no frame for as long, is
    /// closed: a client that vanished would otherwise hold its place for ever.
    pub websocket_ping: Duration,
    /// How long a write to a client may wait for it to read: one that stops reading an
    /// answer (a few MB, or requests sent one after another and never read) would
    /// otherwise hold its connection, one of 512, until TCP gives up.
    pub write_stall: Duration,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            introspection: true,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            websocket_ping: Duration::from_secs(30),
            write_stall: Duration::from_secs(60),
        }
    }
}

/// Parsed query documents by query text. Dashboards send the same few queries over and
/// over; parsing the city's indicator query took 24 us of its 50. The document is handed to
/// async-graphql already parsed; validation (depth, complexity, rules) still runs on every
/// request. (An async-graphql extension could cache validation too, but any extension takes
/// every field off async-graphql's fast path, which cost more than it saved.)
#[derive(Default)]
struct ParsedQueries {
    docs: Mutex<HashMap<String, ExecutableDocument>>,
}

/// Queries kept parsed at most, and the longest query text kept, and the most selections
/// it holds as written: 4 KB of `{ a a a ... }` parse to some hundreds of KB.
const PARSED_QUERIES: usize = 256;
const PARSED_QUERY_BYTES: usize = 4096;
const PARSED_QUERY_SELECTIONS: usize = 512;

/// The selections `doc` holds as written (its fragments not spread).
fn selections(doc: &ExecutableDocument) -> usize {
    // Nested no deeper than the brackets' bound (`shallow_enough`).
    fn of(set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|item| {
                1 + match &item.node {
                    Selection::Field(f) => of(&f.node.selection_set.node),
                    Selection::InlineFragment(i) => of(&i.node.selection_set.node),
                    Selection::FragmentSpread(_) => 0,
                }
            })
            .sum()
    }
    let ops = doc
        .operations
        .iter()
        .map(|(_, op)| of(&op.node.selection_set.node));
    let fragments = doc
        .fragments
        .values()
        .map(|f| of(&f.node.selection_set.node));
    ops.chain(fragments).sum()
}

impl ParsedQueries {
    /// Give `request` its parsed document, from the cache or parsed now (and kept).
    fn attach(&self, request: &mut async_graphql::Request) -> Result<(), async_graphql::Error> {
        shallow_enough(&request.query)?;
        let hit = self
            .docs
            .lock()
            .ok()
            .and_then(|docs| docs.get(&request.query).cloned());
        if let Some(doc) = hit {
            request.set_parsed_query(doc);
            return Ok(());
        }
        let doc = request
            .parsed_query()
            .map_err(|e| error(Code::ParseFailed, e.message))?
            .clone();
        spread_small_enough(&doc)?;
        if request.query.len() <= PARSED_QUERY_BYTES
            && selections(&doc) <= PARSED_QUERY_SELECTIONS
            && let Ok(mut docs) = self.docs.lock()
        {
            if docs.len() >= PARSED_QUERIES {
                docs.clear();
            }
            docs.insert(request.query.clone(), doc);
        }
        Ok(())
    }
}

/// Brackets a query may nest. async-graphql's parser recurses once per level of a value
/// (`[[[...`) with no bound of its own: pest's stack guard stops it when the stack runs low
/// (an error that quotes the whole query back), and nothing would bound the recursion
/// without that guard. Refused before parsing, in a few microseconds and a short message.
/// Selection sets stop at 32 once parsed (`limit_recursive_depth`).
const MAX_QUERY_NESTING: usize = 64;

/// Refuse, before it is parsed, a query that nests brackets (`{`, `[`, `(`) deeper than
/// [`MAX_QUERY_NESTING`] outside its strings and comments.
fn shallow_enough(query: &str) -> Result<(), async_graphql::Error> {
    let b = query.as_bytes();
    let at = |i: usize, s: &[u8]| b.get(i..).is_some_and(|rest| rest.starts_with(s));
    let (mut i, mut depth) = (0, 0usize);
    while let Some(&c) = b.get(i) {
        i += 1;
        match c {
            b'#' => {
                while b.get(i).is_some_and(|c| *c != b'\n' && *c != b'\r') {
                    i += 1;
                }
            }
            b'"' if at(i, b"\"\"") => {
                // A block string ends at the next `"""` not escaped as `\"""`.
                i += 2;
                while i < b.len() && !at(i, b"\"\"\"") {
                    i += if at(i, b"\\\"\"\"") { 4 } else { 1 };
                }
                i += 3;
            }
            b'"' => {
                while let Some(&c) = b.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' || c == b'\n' {
                        break;
                    }
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > MAX_QUERY_NESTING {
                    return Err(error(
                        Code::ParseFailed,
                        format!("the query nests brackets deeper than {MAX_QUERY_NESTING} levels"),
                    ));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// What a document may hold with every fragment spread out, counting each selection, its
/// directives and its arguments' values: async-graphql's checks before validation (the
/// recursion depth) and its validation visitors walk a fragment again at each of its
/// spreads, each field's arguments and directives with it: fragments spreading the one
/// before three times, 30 deep, are 1.5 KB of query and 3^29 visits, made synchronously,
/// where no timeout cuts them. Counted here once per fragment. A query of fewer fields
/// than the complexity limit (each costs a point at least, `__typename` and fields under
/// a list of `first: 0` aside) with few arguments is never refused by it.
const MAX_SPREAD_NODES: u64 = crate::graphql::MAX_COMPLEXITY as u64;

/// How deep selection sets and fragment spreads may nest while [`spread_small_enough`]
/// counts them (async-graphql refuses past 32 anyway): a chain of five thousand fragments,
/// each spreading the next, would otherwise recurse as deep.
const MAX_SPREAD_DEPTH: usize = 64;

/// Refuse a document whose operations hold more than [`MAX_SPREAD_NODES`] with their
/// fragments spread out, nest deeper than [`MAX_SPREAD_DEPTH`], spread a fragment within
/// itself, or spread one it does not define.
fn spread_small_enough(doc: &ExecutableDocument) -> Result<(), async_graphql::Error> {
    use async_graphql::parser::Positioned;
    use async_graphql::parser::types::Directive;
    use async_graphql_value::{Name, Value};
    /// Each fragment's size, `None` while it is being counted.
    type Sizes<'a> = HashMap<&'a str, Option<u64>>;
    /// A value's nodes (nested no deeper than the brackets' bound, `shallow_enough`).
    fn value(v: &Value) -> u64 {
        1 + match v {
            Value::List(items) => items.iter().map(value).sum(),
            Value::Object(fields) => fields.values().map(value).sum(),
            _ => 0,
        }
    }
    fn arguments(args: &[(Positioned<Name>, Positioned<Value>)]) -> u64 {
        args.iter().map(|(_, v)| value(&v.node)).sum()
    }
    fn directives(ds: &[Positioned<Directive>]) -> u64 {
        ds.iter().map(|d| 1 + arguments(&d.node.arguments)).sum()
    }
    fn size<'a>(
        doc: &'a ExecutableDocument,
        set: &'a SelectionSet,
        sizes: &mut Sizes<'a>,
        depth: usize,
    ) -> Result<u64, async_graphql::Error> {
        if depth > MAX_SPREAD_DEPTH {
            return Err(error(
                Code::TooDeep,
                format!("selections and fragments nest deeper than {MAX_SPREAD_DEPTH} levels"),
            ));
        }
        let mut n = 0u64;
        for item in &set.items {
            let more = match &item.node {
                Selection::Field(f) => {
                    let own = 1 + arguments(&f.node.arguments) + directives(&f.node.directives);
                    own.saturating_add(size(doc, &f.node.selection_set.node, sizes, depth + 1)?)
                }
                Selection::InlineFragment(i) => {
                    let own = 1 + directives(&i.node.directives);
                    own.saturating_add(size(doc, &i.node.selection_set.node, sizes, depth + 1)?)
                }
                Selection::FragmentSpread(s) => {
                    let own = 1 + directives(&s.node.directives);
                    let name = s.node.fragment_name.node.as_str();
                    let spread = match sizes.get(name) {
                        Some(Some(k)) => *k,
                        Some(None) => {
                            return Err(error(
                                Code::ValidationFailed,
                                format!("fragment {name} spreads itself"),
                            ));
                        }
                        None => {
                            // async-graphql walks past an unknown fragment: refused here,
                            // or a bomb built on one would count for nothing.
                            let Some(f) = doc.fragments.get(&s.node.fragment_name.node) else {
                                return Err(error(
                                    Code::ValidationFailed,
                                    format!("unknown fragment {name}"),
                                ));
                            };
                            sizes.insert(name, None);
                            let k = size(doc, &f.node.selection_set.node, sizes, depth + 1)?;
                            sizes.insert(name, Some(k));
                            k
                        }
                    };
                    own.saturating_add(spread)
                }
            };
            n = n.saturating_add(more);
            if n > MAX_SPREAD_NODES {
                return Err(too_many_selections());
            }
        }
        Ok(n)
    }
    let mut sizes = Sizes::new();
    // async-graphql's rules spread every operation's fragments, not only the one that runs.
    let mut total = 0u64;
    for (_, op) in doc.operations.iter() {
        total = total.saturating_add(size(doc, &op.node.selection_set.node, &mut sizes, 0)?);
        if total > MAX_SPREAD_NODES {
            return Err(too_many_selections());
        }
    }
    // Fragments no operation spreads (validation refuses them) are walked too: for cycles.
    for f in doc.fragments.values() {
        size(doc, &f.node.selection_set.node, &mut sizes, 0)?;
    }
    Ok(())
}

fn too_many_selections() -> async_graphql::Error {
    error(
        Code::TooComplex,
        format!(
            "the query holds more than {MAX_SPREAD_NODES} selections, arguments and \
             directives with its fragments spread out"
        ),
    )
}

/// [`spread_small_enough`] for a request that may not be parsed yet (one that does not
/// parse is left to async-graphql, which says why).
fn spread_checked(request: &mut async_graphql::Request) -> Result<(), async_graphql::Error> {
    match request.parsed_query() {
        Ok(doc) => spread_small_enough(doc),
        Err(_) => Ok(()),
    }
}

/// The router of a node's gateway, with default options.
pub fn router(backend: Backend) -> Router {
    router_with(backend, GatewayOptions::default())
}

/// The router of a node's gateway.
pub fn router_with(backend: Backend, options: GatewayOptions) -> Router {
    let app = App {
        schema: build_schema_with(backend.clone(), options.introspection),
        anonymous: crate::graphql::build_schema_limited(
            backend.clone(),
            options.introspection,
            crate::graphql::MAX_ANONYMOUS_COMPLEXITY,
        ),
        anonymous_running: Arc::new(tokio::sync::Semaphore::new(ANONYMOUS_RUNNING)),
        anonymous_waiting: Arc::new(tokio::sync::Semaphore::new(ANONYMOUS_WAITING)),
        websockets: Arc::new(tokio::sync::Semaphore::new(MAX_WEBSOCKETS)),
        anonymous_subscriptions: Arc::new(tokio::sync::Semaphore::new(MAX_ANONYMOUS_SUBSCRIPTIONS)),
        backend,
        parsed: Arc::default(),
        options,
    };
    Router::new()
        .route("/", get(graphiql))
        .route("/graphql", get(graphiql).post(graphql))
        .route("/graphql/ws", get(graphql_ws))
        .route("/assets/{file}", get(asset))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

fn reply_error(e: async_graphql::Error) -> Json<async_graphql::Response> {
    Json(error_response(e))
}

/// A response of `e` alone.
fn error_response(e: async_graphql::Error) -> async_graphql::Response {
    async_graphql::Response::from_errors(vec![e.into_server_error(async_graphql::Pos::default())])
}

/// A stream of one response, of `e` alone.
fn error_stream(
    e: async_graphql::Error,
) -> futures_util::stream::BoxStream<'static, async_graphql::Response> {
    use futures_util::StreamExt as _;
    futures_util::stream::once(async move { error_response(e) }).boxed()
}

/// The caller a token names, the user it was issued to, and the token's hash.
type Who = (Caller, Option<(UserName, TokenHash)>);

/// The caller a request's bearer token names; no header means anonymous.
fn authenticate(app: &App, headers: &HeaderMap) -> Result<Who, async_graphql::Error> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok((Caller::Anonymous, None));
    };
    caller_of(app, value.to_str().ok())
}

/// An error's `extensions.code`.
fn code_of(e: &async_graphql::Error) -> Option<&str> {
    match e.extensions.as_ref()?.get("code")? {
        async_graphql::Value::String(c) => Some(c.as_str()),
        _ => None,
    }
}

/// The caller an `Authorization` value (`Bearer <token>`) names.
fn caller_of(app: &App, authorization: Option<&str>) -> Result<Who, async_graphql::Error> {
    let token = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            error(
                Code::Unauthenticated,
                "expected 'Authorization: Bearer <token>'",
            )
        })?;
    let hash = token_hash(token);
    match app.backend.reader.user(&hash).map_err(internal)? {
        Some(u) => Ok((
            Caller::User {
                unit: u.unit,
                role: u.role,
            },
            Some((UserName(u.name), TokenHash(hash))),
        )),
        None => Err(error(Code::Unauthenticated, "unknown token")),
    }
}

async fn graphql(State(app): State<App>, request: axum::extract::Request) -> Response {
    let headers = request.headers().clone();
    let read = Bytes::from_request(request, &app);
    let body = match tokio::time::timeout(app.options.body_timeout, read).await {
        Ok(Ok(b)) => b,
        Err(_) => {
            let e = error(
                Code::Timeout,
                format!(
                    "request body: not received within {} s",
                    app.options.body_timeout.as_secs()
                ),
            );
            return (StatusCode::REQUEST_TIMEOUT, reply_error(e)).into_response();
        }
        Ok(Err(e)) => {
            let status = e.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                Code::PayloadTooLarge
            } else {
                Code::BadUserInput
            };
            let reply = reply_error(error(code, format!("request body: {}", e.body_text())));
            return (status, reply).into_response();
        }
    };
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json {
        let e = error(
            Code::BadUserInput,
            "expected Content-Type: application/json",
        );
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, reply_error(e)).into_response();
    }
    let mut request = match serde_json::from_slice::<async_graphql::Request>(&body) {
        Ok(r) => r,
        // One operation per request: a batch is refused as a whole, before anything runs.
        Err(_) if body.trim_ascii_start().starts_with(b"[") => {
            let reply = reply_error(error(
                Code::BatchNotSupported,
                "send one operation per request",
            ));
            return (StatusCode::BAD_REQUEST, reply).into_response();
        }
        Err(e) => {
            let reply = reply_error(error(Code::BadUserInput, format!("request body: {e}")));
            return (StatusCode::BAD_REQUEST, reply).into_response();
        }
    };
    let (caller, user) = match authenticate(&app, &headers) {
        Ok(c) => c,
        // A token that could not be looked up is not a wrong token.
        Err(e) if code_of(&e) == Some(Code::Internal.as_str()) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, reply_error(e)).into_response();
        }
        Err(e) => return (StatusCode::UNAUTHORIZED, reply_error(e)).into_response(),
    };
    if let Err(e) = app.parsed.attach(&mut request) {
        return reply_error(e).into_response();
    }
    if !app.options.introspection {
        let asks = request
            .parsed_query()
            .map(asks_introspection)
            .unwrap_or(false);
        if asks {
            let e = error(
                Code::IntrospectionDisabled,
                "introspection is switched off on this node",
            );
            return reply_error(e).into_response();
        }
        request = request.disable_introspection();
    }
    request = request
        .data(caller)
        .data(StatusOnce::default())
        .data(ProfileCache::default())
        .data(UnitBudget::default());
    let anonymous = user.is_none();
    if let Some((u, _)) = user {
        request = request.data(u);
    }
    if !anonymous {
        let operation = request.operation_name.clone();
        let backs_up = request
            .parsed_query()
            .is_ok_and(|q| backs_up(q, operation.as_deref()));
        let limit = if backs_up {
            BACKUP_TIMEOUT
        } else {
            QUERY_TIMEOUT
        };
        return run_within(limit, app.schema.execute(request)).await;
    }
    let Ok(_waiting) = app.anonymous_waiting.clone().try_acquire_owned() else {
        let e = error(
            Code::Busy,
            "too many requests without a token at once: ask again shortly",
        );
        return (StatusCode::SERVICE_UNAVAILABLE, reply_error(e)).into_response();
    };
    // The wait counts in the query's time.
    let running = app.anonymous_running.clone();
    let anonymous_schema = app.anonymous.clone();
    run(async move {
        let Ok(_running) = running.acquire_owned().await else {
            return async_graphql::Response::from_errors(vec![
                error(Code::Internal, "the gateway is stopping")
                    .into_server_error(async_graphql::Pos::default()),
            ]);
        };
        anonymous_schema.execute(request).await
    })
    .await
}

/// Answer with what `query` produces within the time a query has.
async fn run(query: impl std::future::Future<Output = async_graphql::Response>) -> Response {
    run_within(QUERY_TIMEOUT, query).await
}

/// Answer with what `query` produces within `limit`.
async fn run_within(
    limit: Duration,
    query: impl std::future::Future<Output = async_graphql::Response>,
) -> Response {
    match tokio::time::timeout(limit, query).await {
        Ok(mut resp) => {
            code_unlabelled(&mut resp);
            Json(resp).into_response()
        }
        Err(_) => reply_error(error(Code::Timeout, "query timed out")).into_response(),
    }
}

/// Subscriptions (and queries) over a WebSocket. The token comes in the upgrade request's
/// `Authorization` header or, since browsers cannot set one, as `Authorization` in the
/// `connection_init` payload; an unknown token closes the connection. Messages are capped
/// like request bodies; depth and complexity limits apply as over HTTP. At most
/// [`MAX_WEBSOCKETS`] connections are open (their place held for the socket's life), each
/// running at most [`MAX_SUBSCRIPTIONS_PER_SOCKET`] subscriptions.
async fn graphql_ws(
    State(app): State<App>,
    headers: HeaderMap,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let from_header = match headers.get(header::AUTHORIZATION) {
        Some(_) => match authenticate(&app, &headers) {
            Ok(c) => Some(c),
            Err(e) => return (StatusCode::UNAUTHORIZED, reply_error(e)).into_response(),
        },
        None => None,
    };
    let Ok(open) = app.websockets.clone().try_acquire_owned() else {
        let e = error(
            Code::Busy,
            format!("{MAX_WEBSOCKETS} WebSocket connections open: try again shortly"),
        );
        return (StatusCode::SERVICE_UNAVAILABLE, reply_error(e)).into_response();
    };
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(MAX_BODY)
        .max_frame_size(MAX_BODY)
        .on_upgrade(move |socket| {
            // Within bounds whatever the options say (`interval` refuses zero).
            let ping_every = app
                .options
                .websocket_ping
                .clamp(Duration::from_millis(100), Duration::from_secs(3600));
            let schema = Timed {
                schema: app.schema.clone(),
                anonymous: app.anonymous.clone(),
                anonymous_running: app.anonymous_running.clone(),
                anonymous_waiting: app.anonymous_waiting.clone(),
                operations: Arc::new(tokio::sync::Semaphore::new(MAX_OPERATIONS_PER_SOCKET)),
                subscriptions: Arc::new(tokio::sync::Semaphore::new(MAX_SUBSCRIPTIONS_PER_SOCKET)),
                anonymous_subscriptions: app.anonymous_subscriptions.clone(),
                reader: app.backend.reader.clone(),
            };
            let inited = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let init_seen = inited.clone();
            // Frames in pass by a clock of the last one heard; frames out go through a
            // channel to a writer that also pings.
            let (mut sink, stream) = futures_util::StreamExt::split(socket);
            let heard = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
            let heard_in = heard.clone();
            let stream = futures_util::StreamExt::inspect(stream, move |_| {
                if let Ok(mut at) = heard_in.lock() {
                    *at = std::time::Instant::now();
                }
            });
            let (out, mut outgoing) = tokio::sync::mpsc::channel(16);
            let out = tokio_util::sync::PollSender::new(out);
            let socket = GraphQLWebSocket::new_with_pair(out, stream, schema, protocol)
                .on_connection_init(move |payload| async move {
                    init_seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    let (caller, user) = match from_header {
                        Some(c) => c,
                        None => match payload.get("Authorization").and_then(|v| v.as_str()) {
                            Some(value) => caller_of(&app, Some(value))?,
                            None => (Caller::Anonymous, None),
                        },
                    };
                    let mut data = async_graphql::Data::default();
                    data.insert(caller);
                    if let Some((u, hash)) = user {
                        data.insert(u);
                        data.insert(hash);
                    }
                    Ok(data)
                })
                .serve();
            let writer = async move {
                use futures_util::SinkExt as _;
                let mut ping = tokio::time::interval(ping_every);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ping.tick().await;
                loop {
                    tokio::select! {
                        message = outgoing.recv() => {
                            let Some(message) = message else { break };
                            // A client gone with data still to take blocks the send till
                            // TCP gives up (some 15 minutes): as long as silence is allowed.
                            let sent = tokio::time::timeout(2 * ping_every, sink.send(message));
                            if !matches!(sent.await, Ok(Ok(()))) {
                                break;
                            }
                        }
                        _ = ping.tick() => {
                            let silent = heard.lock().map_or(Duration::ZERO, |at| at.elapsed());
                            if silent > 2 * ping_every {
                                tracing::debug!(?silent, "a WebSocket client gone silent: closed");
                                break;
                            }
                            let ping = axum::extract::ws::Message::Ping(Bytes::new());
                            let sent = tokio::time::timeout(2 * ping_every, sink.send(ping));
                            if !matches!(sent.await, Ok(Ok(()))) {
                                break;
                            }
                        }
                    }
                }
                let _ = tokio::time::timeout(ping_every, sink.close()).await;
            };
            async move {
                // No `connection_init` in time: the socket is dropped, which closes it.
                let deadline = async {
                    tokio::time::sleep(WEBSOCKET_INIT_WITHIN).await;
                    if inited.load(std::sync::atomic::Ordering::Relaxed) {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::pin!(socket, writer);
                tokio::select! {
                    biased;
                    () = &mut socket => {
                        // Its last words (a close) go out before the socket does.
                        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
                    }
                    () = &mut writer => {}
                    () = deadline => {}
                }
                drop(open);
            }
        })
}

/// The schema as the WebSocket runs it: queries and mutations end after [`QUERY_TIMEOUT`]
/// as over HTTP (subscriptions run until the client stops them), every error gets its code,
/// and an operation on a connection whose token was revoked since it opened is refused.
#[derive(Clone)]
struct Timed {
    schema: GatewaySchema,
    /// For a connection without a token: its limits, and its share of running at once.
    anonymous: GatewaySchema,
    anonymous_running: Arc<tokio::sync::Semaphore>,
    anonymous_waiting: Arc<tokio::sync::Semaphore>,
    /// This connection's operations under way ([`MAX_OPERATIONS_PER_SOCKET`]).
    operations: Arc<tokio::sync::Semaphore>,
    /// This connection's subscriptions running ([`MAX_SUBSCRIPTIONS_PER_SOCKET`]).
    subscriptions: Arc<tokio::sync::Semaphore>,
    /// Every connection's subscriptions without a token ([`MAX_ANONYMOUS_SUBSCRIPTIONS`]).
    anonymous_subscriptions: Arc<tokio::sync::Semaphore>,
    reader: grassroots_node::StoreReader,
}

impl async_graphql::Executor for Timed {
    async fn execute(&self, mut request: async_graphql::Request) -> async_graphql::Response {
        if let Err(e) = shallow_enough(&request.query).and_then(|_| spread_checked(&mut request)) {
            return error_response(e);
        }
        match tokio::time::timeout(QUERY_TIMEOUT, self.schema.execute(request)).await {
            Ok(mut resp) => {
                code_unlabelled(&mut resp);
                resp
            }
            Err(_) => timed_out(),
        }
    }

    fn execute_stream(
        &self,
        mut request: async_graphql::Request,
        session_data: Option<Arc<async_graphql::Data>>,
    ) -> futures_util::stream::BoxStream<'static, async_graphql::Response> {
        use futures_util::StreamExt as _;
        if let Err(e) = shallow_enough(&request.query).and_then(|_| spread_checked(&mut request)) {
            return error_stream(e);
        }
        let token = session_data
            .as_ref()
            .and_then(|d| d.get(&std::any::TypeId::of::<TokenHash>()))
            .and_then(|b| b.downcast_ref::<TokenHash>())
            .copied();
        if let Some(t) = token
            && !matches!(self.reader.user(&t.0), Ok(Some(_)))
        {
            let e = error(Code::Unauthenticated, "the connection's token was revoked");
            return error_stream(e);
        }
        let Ok(operation) = self.operations.clone().try_acquire_owned() else {
            let e = error(
                Code::Busy,
                format!(
                    "at most {MAX_OPERATIONS_PER_SOCKET} operations under way on a connection: \
                     wait for one to end"
                ),
            );
            return error_stream(e);
        };
        let subscription = is_subscription(&mut request);
        // Per operation, not per connection: a status read once per connection would show
        // its first snapshot for the connection's life, and a budget would run out.
        let request = request
            .data(StatusOnce::default())
            .data(ProfileCache::default())
            .data(UnitBudget::default());
        // Without a token: the anonymous limits, and a query waits its turn to run.
        let anonymous = token.is_none();
        let schema = if anonymous {
            &self.anonymous
        } else {
            &self.schema
        };
        // A query waits its turn, counted among those waiting (a connection may send many
        // at once): past the bound it is told BUSY, as over HTTP.
        let turn = if anonymous && !subscription {
            let Ok(waiting) = self.anonymous_waiting.clone().try_acquire_owned() else {
                let e = error(
                    Code::Busy,
                    "too many requests without a token at once: ask again shortly",
                );
                return error_stream(e);
            };
            Some((waiting, self.anonymous_running.clone()))
        } else {
            None
        };
        if subscription {
            // A place on this connection, and without a token among every connection's,
            // held while the subscription runs.
            let places = self
                .subscriptions
                .clone()
                .try_acquire_owned()
                .ok()
                .and_then(|own| {
                    if !anonymous {
                        return Some((own, None));
                    }
                    let shared = self
                        .anonymous_subscriptions
                        .clone()
                        .try_acquire_owned()
                        .ok()?;
                    Some((own, Some(shared)))
                });
            let Some(places) = places else {
                let e = error(
                    Code::Busy,
                    format!(
                        "at most {MAX_SUBSCRIPTIONS_PER_SOCKET} subscriptions on a connection \
                         ({MAX_ANONYMOUS_SUBSCRIPTIONS} without a token on all of them): stop \
                         one first"
                    ),
                );
                return error_stream(e);
            };
            return async_graphql::Executor::execute_stream(schema, request, session_data)
                .map(move |mut resp| {
                    let _held = (&places, &operation);
                    code_unlabelled(&mut resp);
                    resp
                })
                .boxed();
        }
        let mut stream = async_graphql::Executor::execute_stream(schema, request, session_data);
        futures_util::stream::once(async move {
            let _held = operation;
            let answer = async {
                let _running = match turn {
                    Some((waiting, running)) => Some((waiting, running.acquire_owned().await.ok())),
                    None => None,
                };
                stream.next().await
            };
            match tokio::time::timeout(QUERY_TIMEOUT, answer).await {
                Ok(Some(mut resp)) => {
                    code_unlabelled(&mut resp);
                    resp
                }
                Ok(None) => async_graphql::Response::default(),
                Err(_) => timed_out(),
            }
        })
        .boxed()
    }
}

fn timed_out() -> async_graphql::Response {
    error_response(error(Code::Timeout, "query timed out"))
}

/// Whether the operation a request runs is a subscription (a request that does not parse
/// is not; the schema answers it with its error).
fn is_subscription(request: &mut async_graphql::Request) -> bool {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    let name = request.operation_name.clone();
    // Parsed once: kept in the request (`spread_checked` parsed it already).
    let Ok(doc) = request.parsed_query() else {
        return false;
    };
    let op = match (&doc.operations, &name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name.as_str()),
        (DocumentOperations::Multiple(_), None) => None,
    };
    op.is_some_and(|op| op.node.ty == OperationType::Subscription)
}

/// Whether any operation of `doc` selects `__schema` or `__type` at its root, directly or
/// through fragments (async-graphql alone would answer null without saying why).
fn asks_introspection(doc: &ExecutableDocument) -> bool {
    let names = ["__schema", "__type"];
    doc.operations.iter().any(|(_, op)| {
        walk_fields(
            doc,
            &op.node.selection_set.node,
            &names,
            &mut HashSet::new(),
        )
    })
}

/// Whether `set` selects one of the fields `names` at its level (through fragments too).
fn walk_fields<'a>(
    doc: &'a ExecutableDocument,
    set: &'a SelectionSet,
    names: &[&str],
    seen: &mut HashSet<&'a str>,
) -> bool {
    set.items.iter().any(|item| match &item.node {
        Selection::Field(f) => names.contains(&f.node.name.node.as_str()),
        Selection::InlineFragment(i) => walk_fields(doc, &i.node.selection_set.node, names, seen),
        Selection::FragmentSpread(s) => {
            let name = s.node.fragment_name.node.as_str();
            seen.insert(name)
                && doc
                    .fragments
                    .get(&s.node.fragment_name.node)
                    .is_some_and(|f| walk_fields(doc, &f.node.selection_set.node, names, seen))
        }
    })
}

/// Whether the operation of `doc` that runs (`operation`, or the only one) is a mutation
/// selecting `backupStore`.
fn backs_up(doc: &ExecutableDocument, operation: Option<&str>) -> bool {
    doc.operations
        .iter()
        .filter(|(name, op)| {
            op.node.ty == async_graphql::parser::types::OperationType::Mutation
                && operation.is_none_or(|o| name.is_some_and(|n| n.as_str() == o))
        })
        .any(|(_, op)| {
            walk_fields(
                doc,
                &op.node.selection_set.node,
                &["backupStore"],
                &mut HashSet::new(),
            )
        })
}

/// How long a `backupStore` mutation may take: a copy of a large store on a slow disk takes
/// minutes, and answered `TIMEOUT` at 10 s it would go on writing while the admin who
/// asked is told it failed (and a second ask is refused as one is being written).
pub const BACKUP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `ok`, or `failing` (503) once the store has stopped. Why it stopped (an I/O or database
/// error, which may name paths or quote a row) is told to users of the node only: a
/// monitor without a token sees the status, the log has the rest.
async fn healthz(State(app): State<App>, headers: HeaderMap) -> axum::response::Response {
    let unit = app.backend.node_unit.to_string();
    match app.backend.store.failure() {
        None => Json(serde_json::json!({ "status": "ok", "unit": unit })).into_response(),
        Some(reason) => {
            let mut body = serde_json::json!({ "status": "failing", "unit": unit });
            if let Ok((Caller::User { .. }, _)) = authenticate(&app, &headers) {
                body["reason"] = reason.into();
            }
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

const GRAPHIQL_HTML: &str = include_str!("graphiql.html");

async fn graphiql() -> Html<&'static str> {
    Html(GRAPHIQL_HTML)
}

struct Asset {
    name: &'static str,
    mime: &'static str,
    bytes: &'static [u8],
}

/// GraphiQL 4.1.2 and React 18.3.1 standalone builds from npm, embedded so villages without
/// internet get a working IDE.
const ASSETS: &[Asset] = &[
    Asset {
        name: "graphiql.min.js",
        mime: "text/javascript",
        bytes: include_bytes!("../assets/graphiql.min.js"),
    },
    Asset {
        name: "graphiql.min.css",
        mime: "text/css",
        bytes: include_bytes!("../assets/graphiql.min.css"),
    },
    Asset {
        name: "react.production.min.js",
        mime: "text/javascript",
        bytes: include_bytes!("../assets/react.production.min.js"),
    },
    Asset {
        name: "react-dom.production.min.js",
        mime: "text/javascript",
        bytes: include_bytes!("../assets/react-dom.production.min.js"),
    },
];

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.mime),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            a.bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// Serve the gateway on `listener` until `shutdown` completes, then finish in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    backend: Backend,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, backend, GatewayOptions::default(), shutdown).await
}

/// Connections served at once; past it a new one is closed at once (it would hold a file
/// descriptor and a task).
const MAX_CONNECTIONS: usize = 512;

/// How long a stop waits for the requests under way.
const DRAIN: Duration = Duration::from_secs(5);

/// [`serve`] with options. HTTP/1.1 (WebSocket upgrades included) through hyper with a
/// header-read timeout and a bound on connections, which `axum::serve` does not set.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    backend: Backend,
    options: GatewayOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (header_timeout, write_stall) = (options.header_timeout, options.write_stall);
    let app = router_with(backend, options);
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let (stop, stopping) = tokio::sync::watch::channel(());
    let tasks = tokio_util::task::TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, or a connection reset before it was taken: the
                // listener itself is fine; a moment's pause keeps this from spinning.
                Err(e) => {
                    tracing::debug!("accepting an HTTP connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!("{MAX_CONNECTIONS} HTTP connections open: one more closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stopping = stopping.clone();
        tasks.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(
                    hyper_util::rt::TokioIo::new(WriteDeadline::new(stream, write_stall)),
                    service,
                )
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopping.changed() => {
                    // The request under way is answered, then the connection closes.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop.send(());
    tasks.close();
    let _ = tokio::time::timeout(DRAIN, tasks.wait()).await;
    Ok(())
}

/// A connection whose writes fail once one has waited [`GatewayOptions::write_stall`] for
/// the client to read (hyper sets no such limit; the connection then closes).
struct WriteDeadline {
    inner: tokio::net::TcpStream,
    limit: Duration,
    /// Running while a write waits.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteDeadline {
    fn new(inner: tokio::net::TcpStream, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            stalled: None,
        }
    }

    /// `poll` (a write or a flush) with the deadline: ready clears it, pending starts or
    /// checks it.
    fn guarded<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        poll: impl FnOnce(
            Pin<&mut tokio::net::TcpStream>,
            &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match poll(Pin::new(&mut self.inner), cx) {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.limit;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl tokio::io::AsyncRead for WriteDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for WriteDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.guarded(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.guarded(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.guarded(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.guarded(cx, |s, cx| s.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operations given the backup's time: a mutation that runs selecting
    /// `backupStore` at the top, directly or through a fragment, and no other.
    #[test]
    fn a_backup_is_told_apart_from_other_operations() {
        let runs = |q: &str, operation: Option<&str>| {
            let doc = async_graphql::parser::parse_query(q).unwrap();
            backs_up(&doc, operation)
        };
        let asks = |q: &str| runs(q, None);
        assert!(asks("mutation { backupStore { file } }"));
        assert!(asks(
            "mutation { ... on Mutation { b: backupStore { file } } }"
        ));
        assert!(asks(
            "mutation { ...B } fragment B on Mutation { backupStore { bytes } }"
        ));
        assert!(!asks("mutation { createMember(input: {}) { id } }"));
        assert!(!asks("{ backups { last { file } } }"));
        // Only the operation that runs: a query sent beside a backup keeps its 10 s.
        let two = "query Q { nodeUnit { name } } mutation M { backupStore { file } }";
        assert!(!runs(two, Some("Q")));
        assert!(runs(two, Some("M")));
    }

    /// Selections are counted as written (a spread counts one, its fragment once), and a
    /// query of many is not kept parsed.
    #[test]
    fn a_query_of_many_selections_is_not_kept_parsed() {
        let doc = |q: &str| async_graphql::parser::parse_query(q).unwrap();
        let q = "{ a { b c ...F } ... on Q { d } } fragment F on T { e f }";
        assert_eq!(selections(&doc(q)), 8);
        let cache = ParsedQueries::default();
        let kept = |q: String| {
            let mut request = async_graphql::Request::new(q);
            cache.attach(&mut request).unwrap();
            cache.docs.lock().unwrap().contains_key(&request.query)
        };
        let few = format!("{{ {} }}", "a ".repeat(PARSED_QUERY_SELECTIONS));
        let many = format!("{{ {} }}", "a ".repeat(PARSED_QUERY_SELECTIONS + 1));
        assert!(many.len() <= PARSED_QUERY_BYTES);
        assert!(kept(few));
        assert!(!kept(many));
    }
}
