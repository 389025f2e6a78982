//! The OpenAPI document in the repository (`crates/api/openapi.json`) says what the code
//! serves: every route is documented and every documented path is served, and the main
//! schemas list exactly the fields the JSON has.

use std::collections::BTreeSet;

use serde_json::Value;

fn document() -> Value {
    let text = include_str!("../openapi.json");
    serde_json::from_str(text).expect("openapi.json is valid JSON")
}

/// `(path, method)` of every `.route("PATH", METHOD(...))` in a source file.
fn routes_in(source: &str) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    // rustfmt breaks a long `.route(` over lines: read the code without whitespace.
    let source: String = source.split_whitespace().collect();
    for part in source.split(".route(\"").skip(1) {
        let Some((path, rest)) = part.split_once('"') else {
            continue;
        };
        // `get(a::<A>)` or `get(a::<A>).post(b::<A>)`: the calls up to the next route.
        for call in rest.trim_start_matches(',').split(").") {
            let method = call.split('(').next().unwrap_or_default().trim();
            if ["get", "post", "put", "delete"].contains(&method) {
                found.insert((path.to_string(), method.to_string()));
            }
        }
    }
    found
}

#[test]
fn every_route_is_documented_and_every_documented_path_is_served() {
    let served: BTreeSet<(String, String)> = routes_in(include_str!("../src/routes.rs"))
        .into_iter()
        .chain(routes_in(include_str!("../../coord/src/http.rs")))
        .collect();
    assert!(
        served.len() >= 16,
        "the route scan found too little: {served:?}"
    );
    let doc = document();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |method| (path.clone(), method.clone()))
        })
        .collect();
    assert_eq!(served, documented, "routes and openapi.json disagree");
}

fn properties(doc: &Value, schema: &str) -> BTreeSet<String> {
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no schema {schema}"))
        .keys()
        .cloned()
        .collect()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

// Long: one value of every API type, each checked against its schema; it reads best in one piece.
#[test]
fn schemas_match_the_json_the_code_writes() {
    use pgfm_api::*;
    let node = NodeStatus {
        name: "pg1".into(),
        kind: NodeKindStatus::Primary,
        agent: Up::Up,
        db: DbStatus::Up,
        address: "127.0.0.1".into(),
        agent_port: 7000,
        pg_port: Some(5432),
        lsn: None,
        replayed_lsn: None,
        timeline: None,
        lag_bytes: None,
        in_sync: None,
        priority: None,
        promotable: None,
        vip: Some(true),
        sync_state: Some("sync".into()),
        watchdog: Some(WatchdogStatus {
            mode: pgfm_core::WatchdogMode::Required,
            armed: true,
            timeout_s: Some(1),
            problem: None,
        }),
        maintenance: Some(pgfm_core::model::Maintenance {
            since_unix_ms: 1,
            by: "root@db1".into(),
            keep_running: false,
            forced: false,
        }),
        pending_restart: vec!["shared_buffers".into()],
        tags: vec!["replicate_from=pg2".into()],
        upstream: Some("pg2".into()),
        reloaded: 1,
        restarted: 0,
        info: String::new(),
    };
    let status = ClusterStatus {
        cluster: "c".into(),
        coordinator: None,
        answered_by: "pg1".into(),
        generation: 1,
        primary: None,
        paused: false,
        auto_failover: true,
        max_lag_bytes: 1,
        nodes: vec![node.clone()],
        allowed: vec![],
        priority_list: vec![],
        promote_status: PromoteStatus {
            safe: false,
            message: String::new(),
        },
        vip: Some(VipStatus {
            address: "10.0.0.100/24".into(),
            on: vec!["pg1".into()],
        }),
        synchronous: Some(SyncStatus {
            mode: "on".into(),
            standbys: 1,
            minimum: 0,
            strict: false,
            source: "config".into(),
            committed: vec!["pg2".into()],
            committed_quorum: 1,
            waiting_for: vec!["pg2".into()],
            waiting_count: 1,
            degraded: false,
        }),
        problems: vec![],
        scheduled_switchover: Some(pgfm_core::model::ScheduledSwitchover {
            at_unix_ms: 1,
            to: Some("pg2".into()),
            by: "root@db1".into(),
            generation: pgfm_core::Generation(1),
        }),
        scheduled_restart: Some(pgfm_core::model::ScheduledRestart {
            at_unix_ms: 1,
            nodes: vec![],
            pending: true,
            in_place: false,
            by: "root@db1".into(),
            done: vec!["pg3".into()],
            passed_over: Vec::new(),
            step: Some(pgfm_core::model::RestartStep {
                node: "pg2".into(),
                phase: pgfm_core::model::RestartPhase::Stopping,
            }),
            progress_unix_ms: 2,
        }),
        last_restart: Some(pgfm_core::model::RestartEnded {
            scheduled_at_unix_ms: 1,
            by: "root@db1".into(),
            at_unix_ms: 3,
            restarted: vec!["pg2".into()],
            passed_over: vec![("pg3".into(), "no parameter pending restart".into())],
            stopped: None,
        }),
        tls: true,
    };
    let doc = document();
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(keys(&json), properties(&doc, "ClusterStatus"));
    assert_eq!(keys(&json["nodes"][0]), properties(&doc, "NodeStatus"));
    assert_eq!(
        keys(&json["nodes"][0]["watchdog"]),
        properties(&doc, "WatchdogStatus")
    );
    assert_eq!(json["nodes"][0]["watchdog"]["mode"], "required");
    assert_eq!(
        keys(&json["nodes"][0]["maintenance"]),
        properties(&doc, "Maintenance")
    );
    let asked = MaintenanceRequest {
        node: "pg1".into(),
        on: true,
        keep_running: false,
        force: false,
        by: "root@db1".into(),
    };
    assert_eq!(
        keys(&serde_json::to_value(&asked).unwrap()),
        properties(&doc, "MaintenanceRequest")
    );
    let begun = MaintenanceStarted {
        message: String::new(),
        switchover: Some(SwitchoverStarted {
            from: "pg1".into(),
            to: "pg2".into(),
            generation: 1,
        }),
    };
    let tagged = TagsRequest {
        node: "pg3".into(),
        tags: vec!["nosync=true".into()],
        force: false,
        by: "root@db1".into(),
    };
    assert_eq!(
        keys(&serde_json::to_value(&tagged).unwrap()),
        properties(&doc, "TagsRequest")
    );
    assert_eq!(
        keys(&json["scheduled_switchover"]),
        properties(&doc, "ScheduledSwitchover")
    );
    let schedule = ScheduleRequest {
        to: None,
        at_unix_ms: 1,
        by: "root@db1".into(),
    };
    assert_eq!(
        keys(&serde_json::to_value(&schedule).unwrap()),
        properties(&doc, "ScheduleRequest")
    );
    assert_eq!(
        keys(&json["scheduled_restart"]),
        properties(&doc, "ScheduledRestart")
    );
    assert_eq!(
        keys(&json["scheduled_restart"]["step"]),
        properties(&doc, "RestartStep")
    );
    assert_eq!(
        keys(&json["last_restart"]),
        properties(&doc, "RestartEnded")
    );
    let schedule_restart = ScheduleRestartRequest {
        nodes: vec!["pg1".into()],
        pending: false,
        in_place: false,
        at_unix_ms: 1,
        by: "root@db1".into(),
    };
    assert_eq!(
        keys(&serde_json::to_value(&schedule_restart).unwrap()),
        properties(&doc, "ScheduleRestartRequest")
    );
    let cancel = CancelRequest {
        by: "root@db1".into(),
    };
    assert_eq!(
        keys(&serde_json::to_value(&cancel).unwrap()),
        properties(&doc, "CancelRequest")
    );
    let reload = ReloadRequest {
        nodes: vec!["pg1".into()],
        by: "root@db1".into(),
    };
    assert_eq!(
        keys(&serde_json::to_value(&reload).unwrap()),
        properties(&doc, "ReloadRequest")
    );
    let reloading = NodesAsked {
        message: String::new(),
        asked: [("pg1".to_string(), 1)].into(),
    };
    assert_eq!(
        keys(&serde_json::to_value(&reloading).unwrap()),
        properties(&doc, "NodesAsked")
    );
    let restart = RestartRequest {
        node: "pg1".into(),
        by: "root@db1".into(),
    };
    assert_eq!(
        keys(&serde_json::to_value(&restart).unwrap()),
        properties(&doc, "RestartRequest")
    );
    let reinit = ReinitRequest {
        node: "pg2".into(),
        by: "root@db1".into(),
    };
    assert_eq!(
        keys(&serde_json::to_value(&reinit).unwrap()),
        properties(&doc, "ReinitRequest")
    );
    let json_begun = serde_json::to_value(&begun).unwrap();
    assert_eq!(keys(&json_begun), properties(&doc, "MaintenanceStarted"));
    assert_eq!(
        keys(&json_begun["switchover"]),
        properties(&doc, "SwitchoverStarted")
    );
    assert_eq!(keys(&json["vip"]), properties(&doc, "VipStatus"));
    assert_eq!(keys(&json["synchronous"]), properties(&doc, "SyncStatus"));
    let entry = HistoryEntry {
        generation: 2,
        at_unix_ms: 0,
        from: None,
        to: "pg2".into(),
        reason: String::new(),
        lsn: None,
        lost_bytes: None,
        lost_at_least: false,
        cancelled: false,
        failover_instead: false,
    };
    assert_eq!(
        keys(&serde_json::to_value(&entry).unwrap()),
        properties(&doc, "HistoryEntry")
    );
    let health = Health {
        ok: true,
        node: "n".into(),
        role: "primary".into(),
        generation: 1,
        detail: String::new(),
    };
    assert_eq!(
        keys(&serde_json::to_value(&health).unwrap()),
        properties(&doc, "Health")
    );
    let started = PromoteStarted {
        from: None,
        to: None,
        generation: 1,
        how: String::new(),
    };
    assert_eq!(
        keys(&serde_json::to_value(&started).unwrap()),
        properties(&doc, "PromoteStarted")
    );
    let set = SynchronousRequest {
        mode: "quorum".into(),
        standbys: Some(1),
        minimum: None,
        strict: false,
    };
    assert_eq!(
        keys(&serde_json::to_value(&set).unwrap()),
        properties(&doc, "SynchronousRequest")
    );
    let mut committed = pgfm_core::settings::CommittedSettings::first(Default::default(), "pg1", 0);
    committed.commit(
        pgfm_core::settings::Settings {
            max_lag: 1,
            ..Default::default()
        },
        "dba@host",
        1,
    );
    let view = SettingsView {
        revision: committed.revision,
        settings: committed.values.clone(),
        history: committed.history.clone(),
        file_differs: vec![],
    };
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(keys(&json), properties(&doc, "SettingsView"));
    assert_eq!(keys(&json["settings"]), properties(&doc, "Settings"));
    assert_eq!(
        keys(&json["settings"]["lease"]),
        properties(&doc, "LeaseSettings")
    );
    assert_eq!(
        keys(&json["settings"]["sync"]),
        properties(&doc, "SyncSettings")
    );
    assert_eq!(
        keys(&json["history"][1]),
        properties(&doc, "SettingsChange")
    );
    assert_eq!(
        keys(&json["history"][1]["changes"][0]),
        properties(&doc, "SettingChange")
    );
    assert_eq!(json["settings"]["rejoin"], "rewind-or-clone");
    let edit = EditSettingsRequest {
        base_revision: 2,
        settings: view.settings,
        by: "dba@host".into(),
    };
    assert_eq!(
        keys(&serde_json::to_value(&edit).unwrap()),
        properties(&doc, "EditSettingsRequest")
    );
}
