//! `HttpTransport`: the production `Transport` — HTTP over TCP with reqwest, one connection
//! pool per transport. The agent hands one to its Raft backend and its API client; the CLI
//! makes its own.

use std::time::Duration;

use pgfm_core::transport::{Method, Pending, Request, Response, Transport, TransportError};

pub struct HttpTransport {
    client: reqwest::Client,
}

impl HttpTransport {
    /// A transport whose connections must be made within `connect_timeout` (a host that
    /// does not answer at all fails then, not at the request's whole timeout).
    pub fn new(connect_timeout: Duration) -> HttpTransport {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .build()
            .unwrap_or_default();
        HttpTransport { client }
    }
}

impl Transport for HttpTransport {
    fn send(&self, request: Request) -> Pending<'_, Result<Response, TransportError>> {
        Box::pin(async move {
            let url = request.url();
            let builder = match request.method {
                Method::Get => self.client.get(&url),
                Method::Post => self.client.post(&url),
            };
            let mut builder = builder
                .header("authorization", format!("Bearer {}", request.token))
                .timeout(request.timeout);
            if let Some(body) = request.body {
                builder = builder
                    .header("content-type", "application/json")
                    .body(body);
            }
            let response = builder
                .send()
                .await
                .map_err(|e| TransportError(e.to_string()))?;
            let status = response.status().as_u16();
            let body = response
                .bytes()
                .await
                .map_err(|e| TransportError(e.to_string()))?;
            Ok(Response {
                status,
                body: body.to_vec(),
            })
        })
    }
}
