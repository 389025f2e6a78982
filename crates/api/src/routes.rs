//! The agent's routes. The agent implements `AgentApi`; this module only translates
//! between HTTP and those calls.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use pgfm_core::NodeReport;

use crate::types::{
    AgedReport, AllowRequest, CancelRequest, ClusterStatus, DisallowRequest, EditSettingsRequest,
    ErrorBody, Health, HistoryEntry, MaintenanceRequest, MaintenanceStarted, Message, Metrics,
    NodesAsked, PriorityRequest, PromoteRequest, PromoteStarted, ReinitRequest, ReloadRequest,
    ReportAck, RestartRequest, ScheduleRequest, ScheduleRestartRequest, SettingsView,
    SwitchoverRequest, SwitchoverStarted, SynchronousRequest, TagsRequest, WalPosition,
};

/// What happened to a report sent to this agent.
pub enum ReportOutcome {
    /// Accepted by the coordinator, which answers with every fresh report it holds.
    Accepted(Vec<AgedReport>),
    NotCoordinator(Option<String>),
}

/// The agent behind the routes.
pub trait AgentApi: Send + Sync + 'static {
    fn status(&self) -> impl Future<Output = Result<ClusterStatus, String>> + Send;
    fn report(&self, report: NodeReport) -> impl Future<Output = ReportOutcome> + Send;
    fn resume(&self) -> impl Future<Output = Result<String, String>> + Send;
    fn health(&self, check: HealthCheck) -> impl Future<Output = Health> + Send;
    fn metrics(&self) -> impl Future<Output = Metrics> + Send;
    fn history(&self) -> impl Future<Output = Vec<HistoryEntry>> + Send;
    /// This node's WAL position, read from its PostgreSQL now.
    fn wal_position(&self) -> impl Future<Output = Result<WalPosition, Refusal>> + Send;
    fn promote(
        &self,
        request: PromoteRequest,
    ) -> impl Future<Output = Result<PromoteStarted, Refusal>> + Send;
    fn set_priority(
        &self,
        request: PriorityRequest,
    ) -> impl Future<Output = Result<String, Refusal>> + Send;
    fn set_synchronous(
        &self,
        request: SynchronousRequest,
    ) -> impl Future<Output = Result<String, Refusal>> + Send;
    fn pause(&self) -> impl Future<Output = Result<String, Refusal>> + Send;
    /// `pgfm show-config`: the cluster-wide settings in force and their history.
    fn settings(&self) -> impl Future<Output = SettingsView> + Send;
    /// `pgfm edit-config`: commit new cluster-wide settings; `Err` is a refusal with its
    /// reason (nothing was changed).
    fn edit_settings(
        &self,
        request: EditSettingsRequest,
    ) -> impl Future<Output = Result<String, Refusal>> + Send;

    /// `pgfm switchover --cancel`: end the switchover under way; the old primary stays (or
    /// starts again as) the primary.
    fn cancel_switchover(&self) -> impl Future<Output = Result<String, Refusal>> + Send;
    /// Stop every agent of the cluster (PostgreSQL keeps running).
    fn stop_cluster(&self) -> impl Future<Output = Result<String, Refusal>> + Send;
    /// Stop this agent (PostgreSQL keeps running).
    fn stop_agent(&self) -> impl Future<Output = String> + Send;
    fn allow_node(
        &self,
        request: AllowRequest,
    ) -> impl Future<Output = Result<String, Refusal>> + Send;
    fn disallow_node(
        &self,
        request: DisallowRequest,
    ) -> impl Future<Output = Result<String, Refusal>> + Send;
    /// `pgfm maintenance NODE on|off`; `Err` is a refusal with its reason (nothing was
    /// changed).
    fn maintenance(
        &self,
        request: MaintenanceRequest,
    ) -> impl Future<Output = Result<MaintenanceStarted, Refusal>> + Send;
    /// `pgfm set-tag NODE KEY=VALUE ...`; `Err` is a refusal with its reason (nothing was
    /// changed).
    fn set_tags(
        &self,
        request: TagsRequest,
    ) -> impl Future<Output = Result<String, Refusal>> + Send;
    /// `pgfm switchover --at TIME`; `Err` is a refusal with its reason (nothing was
    /// changed).
    fn schedule_switchover(
        &self,
        request: ScheduleRequest,
    ) -> impl Future<Output = Result<String, Refusal>> + Send;
    /// `pgfm reload [NODE ...]`; `Err` is a refusal with its reason (nothing was
    /// changed).
    fn reload(
        &self,
        request: ReloadRequest,
    ) -> impl Future<Output = Result<NodesAsked, Refusal>> + Send;
    /// `pgfm restart --in-place` of one node; `Err` is a refusal with its reason (nothing
    /// was changed).
    fn restart(
        &self,
        request: RestartRequest,
    ) -> impl Future<Output = Result<NodesAsked, Refusal>> + Send;
    /// `pgfm restart ... --at TIME`; `Err` is a refusal with its reason (nothing was
    /// changed).
    fn schedule_restart(
        &self,
        request: ScheduleRestartRequest,
    ) -> impl Future<Output = Result<String, Refusal>> + Send;
    /// `pgfm restart --cancel`; `Err` when none is scheduled.
    fn cancel_restart(
        &self,
        request: CancelRequest,
    ) -> impl Future<Output = Result<String, Refusal>> + Send;
    /// `pgfm reinit NODE`; `Err` is a refusal with its reason (nothing was changed).
    fn reinit(
        &self,
        request: ReinitRequest,
    ) -> impl Future<Output = Result<String, Refusal>> + Send;
    /// Start a switchover; `Err` is a refusal with its reason (nothing was changed).
    fn switchover(
        &self,
        request: SwitchoverRequest,
    ) -> impl Future<Output = Result<SwitchoverStarted, Refusal>> + Send;
}

/// The health checks a load balancer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheck {
    /// 200 only on the node that holds the primary lease.
    Primary,
    /// 200 on a streaming standby, within `max_lag` bytes when given.
    Replica { max_lag: Option<u64> },
    /// 200 when the agent runs and, on a data node, its PostgreSQL answers.
    Node,
    /// 200 on a streaming standby in the committed synchronous set (`sync`) or outside it
    /// (`async`).
    Synchronous { member: bool },
}

#[derive(Debug, serde::Deserialize)]
struct ReplicaQuery {
    max_lag: Option<u64>,
}

/// Why a command was not carried out: refused (409, nothing changed) or failed (503).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Refused(String),
    Unavailable(String),
}

pub fn router<A: AgentApi>(agent: Arc<A>) -> Router {
    Router::new()
        .route("/v1/status", get(status::<A>))
        .route("/v1/report", post(report::<A>))
        .route("/v1/resume", post(resume::<A>))
        .route("/v1/switchover", post(switchover::<A>))
        .route("/v1/history", get(history::<A>))
        .route("/v1/wal-position", get(wal_position::<A>))
        .route("/v1/promote", post(promote::<A>))
        .route("/v1/priority", post(priority::<A>))
        .route("/v1/synchronous", post(synchronous::<A>))
        .route(
            "/v1/config",
            get(show_settings::<A>).post(edit_settings::<A>),
        )
        .route("/v1/pause", post(pause::<A>))
        .route("/v1/maintenance", post(maintenance::<A>))
        .route("/v1/reinit", post(reinit::<A>))
        .route("/v1/tags", post(set_tags::<A>))
        .route("/v1/reload", post(reload::<A>))
        .route("/v1/restart", post(restart::<A>))
        .route("/v1/restart/schedule", post(schedule_restart::<A>))
        .route("/v1/restart/cancel", post(cancel_restart::<A>))
        .route("/v1/switchover/cancel", post(cancel_switchover::<A>))
        .route("/v1/switchover/schedule", post(schedule_switchover::<A>))
        .route("/v1/stop-cluster", post(stop_cluster::<A>))
        .route("/v1/stop", post(stop_agent::<A>))
        .route("/v1/members", post(allow::<A>))
        .route("/v1/members/remove", post(disallow::<A>))
        .route("/primary", get(primary::<A>))
        .route("/replica", get(replica::<A>))
        .route("/health", get(health::<A>))
        .route("/sync", get(sync::<A>))
        .route("/async", get(not_sync::<A>))
        .route("/metrics", get(metrics::<A>))
        .with_state(agent)
}

async fn status<A: AgentApi>(State(agent): State<Arc<A>>) -> Response {
    match agent.status().await {
        Ok(status) => Json(status).into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, Json(ErrorBody { error })).into_response(),
    }
}

async fn resume<A: AgentApi>(State(agent): State<Arc<A>>) -> Response {
    match agent.resume().await {
        Ok(message) => Json(Message { message }).into_response(),
        Err(error) => (StatusCode::CONFLICT, Json(ErrorBody { error })).into_response(),
    }
}

fn health_response(health: Health) -> Response {
    let code = if health.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(health)).into_response()
}

async fn primary<A: AgentApi>(State(agent): State<Arc<A>>) -> Response {
    health_response(agent.health(HealthCheck::Primary).await)
}

async fn replica<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Query(query): Query<ReplicaQuery>,
) -> Response {
    health_response(
        agent
            .health(HealthCheck::Replica {
                max_lag: query.max_lag,
            })
            .await,
    )
}

async fn sync<A: AgentApi>(State(agent): State<Arc<A>>) -> Response {
    health_response(
        agent
            .health(HealthCheck::Synchronous { member: true })
            .await,
    )
}

async fn not_sync<A: AgentApi>(State(agent): State<Arc<A>>) -> Response {
    health_response(
        agent
            .health(HealthCheck::Synchronous { member: false })
            .await,
    )
}

async fn health<A: AgentApi>(State(agent): State<Arc<A>>) -> Response {
    health_response(agent.health(HealthCheck::Node).await)
}

async fn metrics<A: AgentApi>(State(agent): State<Arc<A>>) -> Response {
    let text = crate::metrics::render(&agent.metrics().await);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

async fn history<A: AgentApi>(State(agent): State<Arc<A>>) -> Json<Vec<HistoryEntry>> {
    Json(agent.history().await)
}

async fn wal_position<A: AgentApi>(State(agent): State<Arc<A>>) -> Response {
    match agent.wal_position().await {
        Ok(position) => Json(position).into_response(),
        Err(r) => refusal(r),
    }
}

fn refusal(refusal: Refusal) -> Response {
    match refusal {
        Refusal::Refused(error) => {
            (StatusCode::CONFLICT, Json(ErrorBody { error })).into_response()
        }
        Refusal::Unavailable(error) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(ErrorBody { error })).into_response()
        }
    }
}

async fn promote<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(request): Json<PromoteRequest>,
) -> Response {
    match agent.promote(request).await {
        Ok(started) => Json(started).into_response(),
        Err(r) => refusal(r),
    }
}

async fn priority<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(request): Json<PriorityRequest>,
) -> Response {
    match agent.set_priority(request).await {
        Ok(message) => Json(Message { message }).into_response(),
        Err(r) => refusal(r),
    }
}

async fn synchronous<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(request): Json<SynchronousRequest>,
) -> Response {
    match agent.set_synchronous(request).await {
        Ok(message) => Json(Message { message }).into_response(),
        Err(r) => refusal(r),
    }
}

async fn show_settings<A: AgentApi>(State(agent): State<Arc<A>>) -> Response {
    Json(agent.settings().await).into_response()
}

async fn edit_settings<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(request): Json<EditSettingsRequest>,
) -> Response {
    match agent.edit_settings(request).await {
        Ok(message) => Json(Message { message }).into_response(),
        Err(r) => refusal(r),
    }
}

async fn allow<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(request): Json<AllowRequest>,
) -> Response {
    match agent.allow_node(request).await {
        Ok(message) => Json(Message { message }).into_response(),
        Err(r) => refusal(r),
    }
}

async fn disallow<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(request): Json<DisallowRequest>,
) -> Response {
    match agent.disallow_node(request).await {
        Ok(message) => Json(Message { message }).into_response(),
        Err(r) => refusal(r),
    }
}

async fn stop_cluster<A: AgentApi>(State(agent): State<Arc<A>>) -> Response {
    match agent.stop_cluster().await {
        Ok(message) => Json(Message { message }).into_response(),
        Err(r) => refusal(r),
    }
}

async fn stop_agent<A: AgentApi>(State(agent): State<Arc<A>>) -> Json<Message> {
    Json(Message {
        message: agent.stop_agent().await,
    })
}

async fn cancel_switchover<A: AgentApi>(State(agent): State<Arc<A>>) -> Response {
    match agent.cancel_switchover().await {
        Ok(message) => Json(Message { message }).into_response(),
        Err(r) => refusal(r),
    }
}

async fn maintenance<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(request): Json<MaintenanceRequest>,
) -> Response {
    match agent.maintenance(request).await {
        Ok(started) => Json(started).into_response(),
        Err(r) => refusal(r),
    }
}

async fn set_tags<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(request): Json<TagsRequest>,
) -> Response {
    match agent.set_tags(request).await {
        Ok(message) => Json(Message { message }).into_response(),
        Err(r) => refusal(r),
    }
}

async fn schedule_switchover<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(request): Json<ScheduleRequest>,
) -> Response {
    match agent.schedule_switchover(request).await {
        Ok(message) => Json(Message { message }).into_response(),
        Err(r) => refusal(r),
    }
}

async fn reload<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(request): Json<ReloadRequest>,
) -> Response {
    match agent.reload(request).await {
        Ok(started) => Json(started).into_response(),
        Err(r) => refusal(r),
    }
}

async fn restart<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(request): Json<RestartRequest>,
) -> Response {
    match agent.restart(request).await {
        Ok(asked) => Json(asked).into_response(),
        Err(r) => refusal(r),
    }
}

async fn schedule_restart<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(request): Json<ScheduleRestartRequest>,
) -> Response {
    match agent.schedule_restart(request).await {
        Ok(message) => Json(Message { message }).into_response(),
        Err(r) => refusal(r),
    }
}

async fn cancel_restart<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(request): Json<CancelRequest>,
) -> Response {
    match agent.cancel_restart(request).await {
        Ok(message) => Json(Message { message }).into_response(),
        Err(r) => refusal(r),
    }
}

async fn reinit<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(request): Json<ReinitRequest>,
) -> Response {
    match agent.reinit(request).await {
        Ok(message) => Json(Message { message }).into_response(),
        Err(r) => refusal(r),
    }
}

async fn pause<A: AgentApi>(State(agent): State<Arc<A>>) -> Response {
    match agent.pause().await {
        Ok(message) => Json(Message { message }).into_response(),
        Err(r) => refusal(r),
    }
}

async fn switchover<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(request): Json<SwitchoverRequest>,
) -> Response {
    match agent.switchover(request).await {
        Ok(started) => Json(started).into_response(),
        Err(Refusal::Refused(error)) => {
            (StatusCode::CONFLICT, Json(ErrorBody { error })).into_response()
        }
        Err(Refusal::Unavailable(error)) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(ErrorBody { error })).into_response()
        }
    }
}

async fn report<A: AgentApi>(
    State(agent): State<Arc<A>>,
    Json(report): Json<NodeReport>,
) -> Json<ReportAck> {
    Json(match agent.report(report).await {
        ReportOutcome::Accepted(reports) => ReportAck {
            accepted: true,
            coordinator: None,
            reports,
        },
        ReportOutcome::NotCoordinator(coordinator) => ReportAck {
            accepted: false,
            coordinator,
            reports: Vec::new(),
        },
    })
}
