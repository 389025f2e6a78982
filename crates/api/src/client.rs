//! The HTTP client for the agent API, used by the CLI and by agents talking to each other.
//! Requests go through a `Transport`: HTTP over TCP, or the simulation's network.

use std::sync::Arc;
use std::time::Duration;

use pgfm_core::transport::{Method, Request, Transport};
use pgfm_core::NodeReport;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::transport::HttpTransport;
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
    address: String,
    token: String,
    timeout: Duration,
    transport: Arc<dyn Transport>,
}

impl ApiClient {
    /// A client for the agent at `address` (`host:port` or a full `http://` URL), over its
    /// own connections: HTTPS presenting `tls`'s certificate, or plain HTTP without.
    pub fn new(
        address: &str,
        token: &str,
        timeout: Duration,
        tls: Option<Arc<pgfm_tls::Tls>>,
    ) -> ApiClient {
        let transport = Arc::new(HttpTransport::new(timeout.min(Duration::from_secs(1)), tls));
        ApiClient::over(transport, address, token, timeout)
    }

    /// A client for the agent at `address` through `transport` (an agent's own).
    pub fn over(
        transport: Arc<dyn Transport>,
        address: &str,
        token: &str,
        timeout: Duration,
    ) -> ApiClient {
        ApiClient {
            address: address.trim_end_matches('/').to_string(),
            token: token.to_string(),
            timeout,
            transport,
        }
    }

    fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Request {
        Request {
            method,
            address: self.address.clone(),
            path: path.to_string(),
            token: self.token.clone(),
            body,
            timeout: self.timeout,
        }
    }

    /// Send a request: the status (401 already turned into an error), the URL and the body.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, String, Vec<u8>), ApiError> {
        let request = self.request(method, path, body);
        let url = request.url();
        let response = self
            .transport
            .send(request)
            .await
            .map_err(|e| ApiError::Unreachable {
                url: url.clone(),
                cause: e.to_string(),
            })?;
        match response.status {
            401 => Err(ApiError::Unauthorized { url }),
            status => Ok((status, url, response.body)),
        }
    }

    /// Send a request and read its JSON answer; any status but 2xx is an error carrying the
    /// agent's own message.
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ApiError> {
        let (status, url, body) = self.exchange(method, path, body).await?;
        if !(200..300).contains(&status) {
            let message = match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(body) => body.error,
                Err(_) => reason(status).to_string(),
            };
            return Err(ApiError::Failed {
                url,
                status,
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ApiError::Failed {
            url,
            status,
            message: format!("unreadable answer: {e}"),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.send(Method::Get, path, None).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.send(Method::Post, path, None).await
    }

    async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ApiError> {
        let body = serde_json::to_vec(body).map_err(|e| ApiError::Failed {
            url: self.request(Method::Post, path, None).url(),
            status: 0,
            message: format!("cannot encode the request: {e}"),
        })?;
        self.send(Method::Post, path, Some(body)).await
    }

    pub async fn status(&self) -> Result<ClusterStatus, ApiError> {
        self.get("/v1/status").await
    }

    pub async fn resume(&self) -> Result<Message, ApiError> {
        self.post("/v1/resume").await
    }

    pub async fn switchover(&self, to: Option<String>) -> Result<SwitchoverStarted, ApiError> {
        self.post_json("/v1/switchover", &SwitchoverRequest { to })
            .await
    }

    pub async fn promote(
        &self,
        to: Option<String>,
        force: bool,
    ) -> Result<PromoteStarted, ApiError> {
        self.post_json("/v1/promote", &PromoteRequest { to, force })
            .await
    }

    pub async fn set_priority(&self, node: &str, priority: u32) -> Result<Message, ApiError> {
        let body = PriorityRequest {
            node: node.to_string(),
            priority,
        };
        self.post_json("/v1/priority", &body).await
    }

    pub async fn set_synchronous(
        &self,
        request: &crate::types::SynchronousRequest,
    ) -> Result<Message, ApiError> {
        self.post_json("/v1/synchronous", request).await
    }

    /// `POST /v1/maintenance`: `pgfm maintenance NODE on|off`.
    pub async fn maintenance(
        &self,
        request: &crate::types::MaintenanceRequest,
    ) -> Result<crate::types::MaintenanceStarted, ApiError> {
        self.post_json("/v1/maintenance", request).await
    }

    /// `POST /v1/tags`: `pgfm set-tag NODE KEY=VALUE ...`.
    pub async fn set_tags(&self, request: &crate::types::TagsRequest) -> Result<Message, ApiError> {
        self.post_json("/v1/tags", request).await
    }

    /// `POST /v1/switchover/schedule`: `pgfm switchover --at TIME`.
    pub async fn schedule_switchover(
        &self,
        request: &crate::types::ScheduleRequest,
    ) -> Result<Message, ApiError> {
        self.post_json("/v1/switchover/schedule", request).await
    }

    /// `POST /v1/reload`: `pgfm reload [NODE ...]`.
    pub async fn reload(
        &self,
        request: &crate::types::ReloadRequest,
    ) -> Result<crate::types::NodesAsked, ApiError> {
        self.post_json("/v1/reload", request).await
    }

    /// `POST /v1/restart`: `pgfm restart --in-place`, one node.
    pub async fn restart(
        &self,
        request: &crate::types::RestartRequest,
    ) -> Result<crate::types::NodesAsked, ApiError> {
        self.post_json("/v1/restart", request).await
    }

    /// `POST /v1/restart/schedule`: `pgfm restart ... --at TIME`.
    pub async fn schedule_restart(
        &self,
        request: &crate::types::ScheduleRestartRequest,
    ) -> Result<Message, ApiError> {
        self.post_json("/v1/restart/schedule", request).await
    }

    /// `POST /v1/restart/cancel`: `pgfm restart --cancel`.
    pub async fn cancel_restart(
        &self,
        request: &crate::types::CancelRequest,
    ) -> Result<Message, ApiError> {
        self.post_json("/v1/restart/cancel", request).await
    }

    /// `POST /v1/reinit`: `pgfm reinit NODE`.
    pub async fn reinit(&self, request: &crate::types::ReinitRequest) -> Result<Message, ApiError> {
        self.post_json("/v1/reinit", request).await
    }

    /// `GET /v1/config`: the cluster-wide settings in force.
    pub async fn settings(&self) -> Result<crate::types::SettingsView, ApiError> {
        self.get("/v1/config").await
    }

    /// `POST /v1/config`: commit new cluster-wide settings.
    pub async fn edit_settings(
        &self,
        request: &crate::types::EditSettingsRequest,
    ) -> Result<Message, ApiError> {
        self.post_json("/v1/config", request).await
    }

    pub async fn allow_node(&self, name: &str, address: &str) -> Result<Message, ApiError> {
        let body = crate::types::AllowRequest {
            name: name.to_string(),
            address: address.to_string(),
        };
        self.post_json("/v1/members", &body).await
    }

    pub async fn disallow_node(&self, name: &str, force: bool) -> Result<Message, ApiError> {
        let body = crate::types::DisallowRequest {
            name: name.to_string(),
            force,
        };
        self.post_json("/v1/members/remove", &body).await
    }

    pub async fn stop_cluster(&self) -> Result<Message, ApiError> {
        self.post("/v1/stop-cluster").await
    }

    pub async fn stop_agent(&self) -> Result<Message, ApiError> {
        self.post("/v1/stop").await
    }

    pub async fn cancel_switchover(&self) -> Result<Message, ApiError> {
        self.post("/v1/switchover/cancel").await
    }

    pub async fn pause(&self) -> Result<Message, ApiError> {
        self.post("/v1/pause").await
    }

    pub async fn wal_position(&self) -> Result<crate::types::WalPosition, ApiError> {
        self.get("/v1/wal-position").await
    }

    pub async fn history(&self) -> Result<Vec<HistoryEntry>, ApiError> {
        self.get("/v1/history").await
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        let (status, url, body) = self.exchange(Method::Get, "/metrics", None).await?;
        if status != 200 {
            return Err(ApiError::Failed {
                url,
                status,
                message: "no metrics".into(),
            });
        }
        String::from_utf8(body).map_err(|e| ApiError::Failed {
            url,
            status,
            message: e.to_string(),
        })
    }

    /// GET a health endpoint (`/primary`, `/replica?max_lag=N`, `/health`): the status code
    /// and the answer.
    pub async fn health(&self, path: &str) -> Result<(u16, Health), ApiError> {
        let (status, url, body) = self.exchange(Method::Get, path, None).await?;
        let health = serde_json::from_slice(&body).map_err(|e| ApiError::Failed {
            url,
            status,
            message: format!("unreadable answer: {e}"),
        })?;
        Ok((status, health))
    }

    pub async fn report(&self, report: &NodeReport) -> Result<ReportAck, ApiError> {
        self.post_json("/v1/report", report).await
    }
}

/// The standard text of an HTTP status, for an error without a body of its own.
fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "error",
    }
}
