//! The HTTP client for the agent API, used by the CLI and by agents talking to each other.

use std::time::Duration;

use pgfm_core::NodeReport;

use crate::types::{
    ClusterStatus, ErrorBody, Health, HistoryEntry, Message, PriorityRequest, PromoteRequest,
    PromoteStarted, ReportAck, SwitchoverRequest, SwitchoverStarted,
};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the agent at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("the agent at {url} refused the cluster token (401): check token_file")]
    Unauthorized { url: String },
    #[error("the agent at {url} answered {status}: {message}")]
    Failed {
        url: String,
        status: u16,
        message: String,
    },
}

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for the agent at `address` (`host:port` or a full `http://` URL).
    pub fn new(address: &str, token: &str, timeout: Duration) -> ApiClient {
        let base = if address.starts_with("http://") || address.starts_with("https://") {
            address.trim_end_matches('/').to_string()
        } else {
            format!("http://{address}")
        };
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(1)))
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        ApiClient {
            base,
            token: token.to_string(),
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: String,
    ) -> Result<T, ApiError> {
        let response = request
            .header("authorization", format!("Bearer {}", self.token))
            .send()
            .await
            .map_err(|e| ApiError::Unreachable {
                url: url.clone(),
                cause: e.to_string(),
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(ApiError::Unauthorized { url });
        }
        if !status.is_success() {
            let message = match response.json::<ErrorBody>().await {
                Ok(body) => body.error,
                Err(_) => status.canonical_reason().unwrap_or("error").to_string(),
            };
            return Err(ApiError::Failed {
                url,
                status: status.as_u16(),
                message,
            });
        }
        response.json().await.map_err(|e| ApiError::Failed {
            url,
            status: status.as_u16(),
            message: format!("unreadable answer: {e}"),
        })
    }

    pub async fn status(&self) -> Result<ClusterStatus, ApiError> {
        let url = format!("{}/v1/status", self.base);
        self.send(self.http.get(&url), url).await
    }

    pub async fn resume(&self) -> Result<Message, ApiError> {
        let url = format!("{}/v1/resume", self.base);
        self.send(self.http.post(&url), url).await
    }

    pub async fn switchover(&self, to: Option<String>) -> Result<SwitchoverStarted, ApiError> {
        let url = format!("{}/v1/switchover", self.base);
        let body = SwitchoverRequest { to };
        self.send(self.http.post(&url).json(&body), url).await
    }

    pub async fn promote(
        &self,
        to: Option<String>,
        force: bool,
    ) -> Result<PromoteStarted, ApiError> {
        let url = format!("{}/v1/promote", self.base);
        let body = PromoteRequest { to, force };
        self.send(self.http.post(&url).json(&body), url).await
    }

    pub async fn set_priority(&self, node: &str, priority: u32) -> Result<Message, ApiError> {
        let url = format!("{}/v1/priority", self.base);
        let body = PriorityRequest {
            node: node.to_string(),
            priority,
        };
        self.send(self.http.post(&url).json(&body), url).await
    }

    pub async fn set_synchronous(
        &self,
        request: &crate::types::SynchronousRequest,
    ) -> Result<Message, ApiError> {
        let url = format!("{}/v1/synchronous", self.base);
        self.send(self.http.post(&url).json(request), url).await
    }

    pub async fn allow_node(&self, name: &str, address: &str) -> Result<Message, ApiError> {
        let url = format!("{}/v1/members", self.base);
        let body = crate::types::AllowRequest {
            name: name.to_string(),
            address: address.to_string(),
        };
        self.send(self.http.post(&url).json(&body), url).await
    }

    pub async fn disallow_node(&self, name: &str, force: bool) -> Result<Message, ApiError> {
        let url = format!("{}/v1/members/remove", self.base);
        let body = crate::types::DisallowRequest {
            name: name.to_string(),
            force,
        };
        self.send(self.http.post(&url).json(&body), url).await
    }

    pub async fn stop_cluster(&self) -> Result<Message, ApiError> {
        let url = format!("{}/v1/stop-cluster", self.base);
        self.send(self.http.post(&url), url).await
    }

    pub async fn stop_agent(&self) -> Result<Message, ApiError> {
        let url = format!("{}/v1/stop", self.base);
        self.send(self.http.post(&url), url).await
    }

    pub async fn cancel_switchover(&self) -> Result<Message, ApiError> {
        let url = format!("{}/v1/switchover/cancel", self.base);
        self.send(self.http.post(&url), url).await
    }

    pub async fn pause(&self) -> Result<Message, ApiError> {
        let url = format!("{}/v1/pause", self.base);
        self.send(self.http.post(&url), url).await
    }

    pub async fn wal_position(&self) -> Result<crate::types::WalPosition, ApiError> {
        let url = format!("{}/v1/wal-position", self.base);
        self.send(self.http.get(&url), url).await
    }

    pub async fn history(&self) -> Result<Vec<HistoryEntry>, ApiError> {
        let url = format!("{}/v1/history", self.base);
        self.send(self.http.get(&url), url).await
    }

    /// GET `path` with the token; the status (401 already turned into an error) and the
    /// response, for the routes whose non-200 answers carry a body worth reading.
    async fn get_raw(&self, path: &str) -> Result<(u16, String, reqwest::Response), ApiError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .header("authorization", format!("Bearer {}", self.token))
            .send()
            .await
            .map_err(|e| ApiError::Unreachable {
                url: url.clone(),
                cause: e.to_string(),
            })?;
        match response.status().as_u16() {
            401 => Err(ApiError::Unauthorized { url }),
            status => Ok((status, url, response)),
        }
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        let (status, url, response) = self.get_raw("/metrics").await?;
        if status != 200 {
            return Err(ApiError::Failed {
                url,
                status,
                message: "no metrics".into(),
            });
        }
        response.text().await.map_err(|e| ApiError::Failed {
            url,
            status,
            message: e.to_string(),
        })
    }

    /// GET a health endpoint (`/primary`, `/replica?max_lag=N`, `/health`): the status code
    /// and the answer.
    pub async fn health(&self, path: &str) -> Result<(u16, Health), ApiError> {
        let (status, url, response) = self.get_raw(path).await?;
        let health = response.json().await.map_err(|e| ApiError::Failed {
            url,
            status,
            message: format!("unreadable answer: {e}"),
        })?;
        Ok((status, health))
    }

    pub async fn report(&self, report: &NodeReport) -> Result<ReportAck, ApiError> {
        let url = format!("{}/v1/report", self.base);
        self.send(self.http.post(&url).json(report), url).await
    }
}
