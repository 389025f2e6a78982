//! How an agent's requests reach another agent: one HTTP request and its answer, whatever
//! carries them. The agent's runtime hands a `Transport` to the Raft backend and the API
//! client: in production it is HTTP over TCP (`pgfm_api::HttpTransport`); in the
//! simulation it delivers the request to the other agent's router in the same process,
//! through a simulated network. Defining it here does no I/O: it is only the shape.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A future a trait object can return (`Send`, borrowing from `'a`).
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// One request from an agent (or the CLI) to an agent.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// `host:port` of the agent, or a base URL (`http://host:port`).
    pub address: String,
    /// The route, from its leading `/`: `/v1/report`, `/raft/append`.
    pub path: String,
    /// The cluster token, sent as `Authorization: Bearer ...`.
    pub token: String,
    /// A JSON body, when there is one.
    pub body: Option<Vec<u8>>,
    /// No answer within this time is an error.
    pub timeout: Duration,
}

impl Request {
    /// The URL a user would recognise in an error: `http://host:port/path`.
    pub fn url(&self) -> String {
        let base = self.address.trim_end_matches('/');
        if base.starts_with("http://") || base.starts_with("https://") {
            format!("{base}{}", self.path)
        } else {
            format!("http://{base}{}", self.path)
        }
    }
}

/// An answer: the HTTP status and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// No answer came: the connection was refused or not made in time, or the answer did not
/// arrive before the request's timeout. `message` says which, for the user; `failure` for
/// the Raft backend, which tries again at once a peer that was only slow to answer, and
/// pauses before it tries any other failed one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    pub failure: Failure,
    pub message: String,
}

/// What went wrong with a request that got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made: refused, no route, no such host, or not in time.
    Connect,
    /// Connected (or connecting still), but no answer came within the request's timeout.
    Timeout,
    /// Anything else: the connection dropped mid-request, a body that could not be read.
    Other,
}

impl TransportError {
    pub fn new(failure: Failure, message: impl Into<String>) -> TransportError {
        TransportError {
            failure,
            message: message.into(),
        }
    }
}

/// Carries requests between agents. Implementations must be cheap to share: every loop of
/// an agent sends through the same one.
pub trait Transport: Send + Sync {
    fn send(&self, request: Request) -> Pending<'_, Result<Response, TransportError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_accepts_an_address_or_a_base_url() {
        let mut request = Request {
            method: Method::Get,
            address: "127.0.0.1:7001".into(),
            path: "/v1/status".into(),
            token: String::new(),
            body: None,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(request.url(), "http://127.0.0.1:7001/v1/status");
        request.address = "https://pg1.example:7001/".into();
        assert_eq!(request.url(), "https://pg1.example:7001/v1/status");
    }
}
