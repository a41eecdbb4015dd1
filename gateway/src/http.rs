//! The HTTP face of a node: `/graphql`, GraphiQL at `/` with embedded assets, `/healthz`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::ErrorExtensions;
use async_graphql::parser::types::ExecutableDocument;
use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use grassroots_node::auth::token_hash;
use grassroots_schema::Caller;

use crate::error::{Code, error, internal};
use crate::graphql::{Backend, GatewaySchema, StatusOnce, build_schema};

/// Largest request body accepted.
pub const MAX_BODY: usize = 256 * 1024;
/// Longest a query may run.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct App {
    schema: GatewaySchema,
    backend: Backend,
    parsed: Arc<ParsedQueries>,
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

/// Queries kept parsed at most, and the longest query text kept.
const PARSED_QUERIES: usize = 256;
const PARSED_QUERY_BYTES: usize = 4096;

impl ParsedQueries {
    /// Give `request` its parsed document from the cache, or parse it now and keep it.
    /// A query that does not parse is left alone: execution reports the syntax error.
    fn attach(&self, request: &mut async_graphql::Request) {
        let hit = self
            .docs
            .lock()
            .ok()
            .and_then(|docs| docs.get(&request.query).cloned());
        if let Some(doc) = hit {
            request.set_parsed_query(doc);
            return;
        }
        if request.query.len() > PARSED_QUERY_BYTES {
            return;
        }
        let Ok(doc) = request.parsed_query().cloned() else {
            return;
        };
        if let Ok(mut docs) = self.docs.lock() {
            if docs.len() >= PARSED_QUERIES {
                docs.clear();
            }
            docs.insert(request.query.clone(), doc);
        }
    }
}

/// The router of a node's gateway.
pub fn router(backend: Backend) -> Router {
    let app = App {
        schema: build_schema(backend.clone()),
        backend,
        parsed: Arc::default(),
    };
    Router::new()
        .route("/", get(graphiql))
        .route("/graphql", get(graphiql).post(graphql))
        .route("/assets/{file}", get(asset))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

fn reply_error(e: async_graphql::Error) -> Json<async_graphql::Response> {
    Json(async_graphql::Response::from_errors(vec![
        e.into_server_error(async_graphql::Pos::default()),
    ]))
}

/// The caller a request's bearer token names; no header means anonymous.
fn authenticate(app: &App, headers: &HeaderMap) -> Result<Caller, async_graphql::Error> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Caller::Anonymous);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            error(
                Code::Unauthenticated,
                "expected 'Authorization: Bearer <token>'",
            )
        })?;
    match app
        .backend
        .reader
        .user(&token_hash(token))
        .map_err(internal)?
    {
        Some((unit, role)) => Ok(Caller::User { unit, role }),
        None => Err(error(Code::Unauthenticated, "unknown token")),
    }
}

async fn graphql(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<async_graphql::Request>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let mut request = match body {
        Ok(Json(r)) => r,
        Err(e) => {
            let status = e.status();
            let reply = reply_error(error(
                Code::BadUserInput,
                format!("request body: {}", e.body_text()),
            ));
            return (status, reply).into_response();
        }
    };
    let caller = match authenticate(&app, &headers) {
        Ok(c) => c,
        Err(e) => return (StatusCode::UNAUTHORIZED, reply_error(e)).into_response(),
    };
    app.parsed.attach(&mut request);
    match tokio::time::timeout(
        QUERY_TIMEOUT,
        app.schema
            .execute(request.data(caller).data(StatusOnce::default())),
    )
    .await
    {
        Ok(resp) => Json(resp).into_response(),
        Err(_) => reply_error(
            async_graphql::Error::new("query timed out")
                .extend_with(|_, e| e.set("code", Code::Timeout.as_str())),
        )
        .into_response(),
    }
}

async fn healthz(State(app): State<App>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "unit": app.backend.node_unit.to_string() }))
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
    axum::serve(listener, router(backend))
        .with_graceful_shutdown(shutdown)
        .await
}
