//! The node's HTTP listener (`--metrics ADDR:PORT`), served by tiny_http on
//! a thread of its own:
//!
//! - `GET /metrics`: Prometheus text (0.0.4);
//! - `GET /healthz`: 200 while the node's loop runs;
//! - `GET /readyz`: 200 when the node is listening and its store is usable,
//!   503 with a one-line reason otherwise (store unreachable, shutting
//!   down);
//! - `GET /namespaces?after=NAME&limit=N`: a point's namespaces and their
//!   registrations, as JSON, in name order, a page at a time.
//!
//! Every answer comes from the node's loop, through a channel: nothing is
//! counted twice, the hot path pays nothing, and a loop that no longer runs
//! answers nothing, so `/healthz` says so.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt, select};

/// How long a request waits for the node's loop before a 503.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests waiting for the node's loop; more are answered 503 at once.
const QUEUED: usize = 8;

/// Most namespaces on one page of `/namespaces`.
pub const MAX_NAMESPACES_PAGE: usize = 1000;

/// What a request asks the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// `/metrics`.
    Metrics,
    /// `/healthz`.
    Health,
    /// `/readyz`.
    Ready,
    /// `/namespaces`: those after `after` in name order, at most `limit`.
    Namespaces {
        /// Where the page starts (exclusive).
        after: Option<String>,
        /// Most namespaces on the page.
        limit: usize,
    },
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// Its content type.
    pub content_type: &'static str,
    /// Its body.
    pub body: String,
}

impl Reply {
    /// 200 with plain text.
    pub fn ok(body: impl Into<String>) -> Reply {
        Reply { status: 200, content_type: TEXT, body: body.into() }
    }

    /// `status` with a one-line reason.
    pub fn status(status: u16, reason: impl Into<String>) -> Reply {
        let mut body = reason.into();
        body.push('\n');
        Reply { status, content_type: TEXT, body }
    }

    /// 200 with JSON.
    pub fn json(value: &serde_json::Value) -> Reply {
        Reply { status: 200, content_type: "application/json", body: value.to_string() }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

/// A request waiting for the node's answer.
#[derive(Debug)]
pub struct Request {
    /// What it asks.
    pub query: Query,
    reply: oneshot::Sender<Reply>,
}

impl Request {
    /// Answers it.
    pub fn answer(self, reply: Reply) {
        let _ = self.reply.send(reply);
    }
}

/// The listener; requests arrive through [`Endpoint::next_request`].
/// Dropping it stops the server.
pub struct Endpoint {
    addr: SocketAddr,
    requests: mpsc::Receiver<Request>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Listens on `addr` (port 0: one the system picks).
    pub fn serve(addr: SocketAddr) -> io::Result<Endpoint> {
        let server = tiny_http::Server::http(addr).map_err(io::Error::other)?;
        let addr = server.server_addr().to_ip().ok_or_else(|| io::Error::other("not an IP"))?;
        let server = Arc::new(server);
        let (tx, requests) = mpsc::channel(QUEUED);
        let thread = std::thread::Builder::new().name("http".into()).spawn({
            let server = server.clone();
            move || serve(&server, tx)
        })?;
        Ok(Endpoint { addr, requests, server, thread: Some(thread) })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next request to answer.
    pub async fn next_request(&mut self) -> Request {
        match self.requests.next().await {
            Some(request) => request,
            None => futures::future::pending().await,
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The query a path and query string ask for, if any.
pub fn parse(url: &str) -> Option<Query> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    match path {
        "/metrics" => Some(Query::Metrics),
        "/healthz" => Some(Query::Health),
        "/readyz" => Some(Query::Ready),
        "/namespaces" => {
            let (mut after, mut limit) = (None, 100);
            for (name, value) in form_urlencoded::parse(query.as_bytes()) {
                match &*name {
                    "after" => after = Some(value.into_owned()),
                    "limit" => limit = value.parse().unwrap_or(limit),
                    _ => {}
                }
            }
            Some(Query::Namespaces { after, limit: limit.clamp(1, MAX_NAMESPACES_PAGE) })
        }
        _ => None,
    }
}

fn serve(server: &tiny_http::Server, mut requests: mpsc::Sender<Request>) {
    for request in server.incoming_requests() {
        let reply = match parse(request.url()) {
            None => {
                Reply::status(404, "the point answers /metrics, /healthz, /readyz and /namespaces")
            }
            Some(query) => {
                let health = query == Query::Health;
                let (reply, answer) = oneshot::channel();
                match requests.try_send(Request { query, reply }) {
                    Ok(()) => wait(answer).unwrap_or_else(|| {
                        let what = if health { "the point's loop" } else { "the point" };
                        Reply::status(
                            503,
                            format!("{what} did not answer within {} s", ANSWER_TIMEOUT.as_secs()),
                        )
                    }),
                    Err(_) => Reply::status(503, "too many requests at once"),
                }
            }
        };
        let content_type = tiny_http::Header::from_bytes(&b"Content-Type"[..], reply.content_type)
            .expect("a valid header");
        let response = tiny_http::Response::from_string(reply.body)
            .with_status_code(reply.status)
            .with_header(content_type);
        let _ = request.respond(response);
    }
}

fn wait(answer: oneshot::Receiver<Reply>) -> Option<Reply> {
    futures::executor::block_on(async {
        select! {
            reply = answer.fuse() => reply.ok(),
            _ = FutureExt::fuse(async_io::Timer::after(ANSWER_TIMEOUT)) => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_query_strings_name_the_query() {
        assert_eq!(parse("/metrics"), Some(Query::Metrics));
        assert_eq!(parse("/healthz?x=1"), Some(Query::Health));
        assert_eq!(parse("/readyz"), Some(Query::Ready));
        assert_eq!(
            parse("/namespaces?after=my%20app&limit=5"),
            Some(Query::Namespaces { after: Some("my app".into()), limit: 5 })
        );
        assert_eq!(
            parse("/namespaces?limit=1000000"),
            Some(Query::Namespaces { after: None, limit: MAX_NAMESPACES_PAGE })
        );
        assert_eq!(parse("/"), None);
    }
}
