//! `HttpTransport`: the production `Transport` — HTTPS with mutual TLS (or plain HTTP
//! when TLS is off) over TCP with reqwest, one connection pool per transport. The agent
//! hands one to its Raft backend and its API client; the CLI makes its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgfm_tls::Tls;

use pgfm_core::transport::{
    Failure, Method, Pending, Request, Response, Transport, TransportError,
};

pub struct HttpTransport {
    connect_timeout: Duration,
    tls: Option<Arc<Tls>>,
    /// The client, and the version of the TLS set it was built with.
    client: Mutex<(u64, reqwest::Client)>,
}

impl HttpTransport {
    /// A transport whose connections must be made within `connect_timeout` (a host that
    /// does not answer at all fails then, not at the request's whole timeout), over HTTPS
    /// with `tls` (this node's certificate, checked against the cluster CA both ways), or
    /// plain HTTP without.
    pub fn new(connect_timeout: Duration, tls: Option<Arc<Tls>>) -> HttpTransport {
        let (version, client) = match build(connect_timeout, tls.as_deref()) {
            Ok(built) => built,
            Err(e) => {
                // Fails closed: a client without roots or certificate connects to no agent,
                // and says why in every error.
                tracing::error!("building the HTTPS client: {e}");
                (0, reqwest::Client::new())
            }
        };
        HttpTransport {
            connect_timeout,
            tls,
            client: Mutex::new((version, client)),
        }
    }

    /// The client to send with: rebuilt when the TLS files changed, so that new
    /// connections present the new certificate (pooled ones finish on the old).
    fn client(&self) -> reqwest::Client {
        let mut current = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tls) = &self.tls {
            if tls.client_config().0 != current.0 {
                match build(self.connect_timeout, Some(tls)) {
                    Ok(built) => *current = built,
                    // Keep the previous client: it still works with the previous set.
                    Err(e) => tracing::error!("rebuilding the HTTPS client: {e}"),
                }
            }
        }
        current.1.clone()
    }

    /// `request`'s URL, https:// when TLS is on.
    fn url(&self, request: &Request) -> String {
        let url = request.url();
        match (&self.tls, url.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => url,
        }
    }
}

fn build(
    connect_timeout: Duration,
    tls: Option<&Tls>,
) -> Result<(u64, reqwest::Client), reqwest::Error> {
    let builder = reqwest::Client::builder().connect_timeout(connect_timeout);
    let (version, builder) = match tls {
        Some(tls) => {
            let (version, config) = tls.client_config();
            (
                version,
                builder
                    .use_preconfigured_tls((*config).clone())
                    .https_only(true),
            )
        }
        None => (0, builder),
    };
    Ok((version, builder.build()?))
}

impl Transport for HttpTransport {
    fn send(&self, request: Request) -> Pending<'_, Result<Response, TransportError>> {
        Box::pin(async move {
            let url = self.url(&request);
            let client = self.client();
            let builder = match request.method {
                Method::Get => client.get(&url),
                Method::Post => client.post(&url),
            };
            let mut builder = builder
                .header("authorization", format!("Bearer {}", request.token))
                .timeout(request.timeout);
            if let Some(body) = request.body {
                builder = builder
                    .header("content-type", "application/json")
                    .body(body);
            }
            let response = builder.send().await.map_err(|e| failed(&e))?;
            let status = response.status().as_u16();
            let body = response.bytes().await.map_err(|e| failed(&e))?;
            Ok(Response {
                status,
                body: body.to_vec(),
            })
        })
    }
}

/// What a failed request tells its caller: the kind of failure, and the whole text.
fn failed(error: &reqwest::Error) -> TransportError {
    let failure = if error.is_connect() {
        Failure::Connect
    } else if error.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Other
    };
    TransportError::new(failure, chain(error))
}

/// `error` and its causes: reqwest's own text ("error sending request for url …") does not
/// say whether the connection was refused, reset or timed out.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let said = e.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_says_so() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let transport = HttpTransport::new(Duration::from_secs(1), None);
        let request = Request {
            method: Method::Get,
            address: format!("127.0.0.1:{port}"),
            path: "/v1/health".into(),
            token: String::new(),
            body: None,
            timeout: Duration::from_secs(1),
        };
        let error = runtime.block_on(transport.send(request)).unwrap_err();
        assert_eq!(error.failure, Failure::Connect, "{error}");
        assert!(error.message.contains("error sending request"), "{error}");
        assert!(error.message.to_lowercase().contains("refused"), "{error}");
    }
}
