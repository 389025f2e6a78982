//! The Prometheus text format of `GET /metrics`.

use std::fmt::Write;

use crate::types::Metrics;

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(m: &Metrics) -> String {
    let node = escape(&m.node);
    let mut out = String::new();
    role_families(&mut out, m, &node);
    event_families(&mut out, m, &node);
    health_families(&mut out, m, &node);
    sync_families(&mut out, m, &node);
    tls_family(&mut out, m, &node);
    out
}

/// One metric family: its help and type lines, then one sample per (labels, value).
fn family(out: &mut String, name: &str, help: &str, kind: &str, lines: Vec<(String, String)>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in lines {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// This node's role, the generation, whether it coordinates, and its lease.
fn role_families(out: &mut String, m: &Metrics, node: &str) {
    let roles = ["primary", "standby", "witness", "idle"];
    family(
        out,
        "pgfm_role",
        "1 for this node's current role.",
        "gauge",
        roles
            .iter()
            .map(|r| {
                (
                    format!("node=\"{node}\",role=\"{r}\""),
                    u8::from(m.role == *r).to_string(),
                )
            })
            .collect(),
    );
    family(
        out,
        "pgfm_generation",
        "The committed generation (promotions so far, plus one).",
        "gauge",
        vec![(format!("node=\"{node}\""), m.generation.to_string())],
    );
    family(
        out,
        "pgfm_coordinator",
        "1 when this agent is the coordinator.",
        "gauge",
        vec![(
            format!("node=\"{node}\""),
            u8::from(m.is_coordinator).to_string(),
        )],
    );
    family(
        out,
        "pgfm_lease_remaining_seconds",
        "Time left on this node's primary lease (absent when it holds none).",
        "gauge",
        m.lease_remaining_ms
            .map(|ms| {
                vec![(
                    format!("node=\"{node}\""),
                    format!("{:.3}", ms as f64 / 1000.0),
                )]
            })
            .unwrap_or_default(),
    );
}

/// The failovers and switchovers committed.
fn event_families(out: &mut String, m: &Metrics, node: &str) {
    family(
        out,
        "pgfm_failovers_total",
        "Automatic and operator failovers committed.",
        "counter",
        vec![(format!("node=\"{node}\""), m.failovers_total.to_string())],
    );
    family(
        out,
        "pgfm_switchovers_total",
        "Planned switchovers committed.",
        "counter",
        vec![(format!("node=\"{node}\""), m.switchovers_total.to_string())],
    );
}

/// The probe's latency, the standbys' lag and which agents report.
fn health_families(out: &mut String, m: &Metrics, node: &str) {
    family(
        out,
        "pgfm_probe_latency_seconds",
        "Duration of this agent's last probe of its PostgreSQL.",
        "gauge",
        m.probe_latency_ms
            .map(|ms| {
                vec![(
                    format!("node=\"{node}\""),
                    format!("{:.3}", ms as f64 / 1000.0),
                )]
            })
            .unwrap_or_default(),
    );
    family(
        out,
        "pgfm_standby_lag_bytes",
        "Replay lag of each standby behind the primary.",
        "gauge",
        m.lag_bytes
            .iter()
            .map(|(s, lag)| {
                (
                    format!("node=\"{node}\",standby=\"{}\"", escape(s)),
                    lag.to_string(),
                )
            })
            .collect(),
    );
    family(
        out,
        "pgfm_agent_up",
        "1 when the member's agent reports, as this agent sees it.",
        "gauge",
        m.agents_up
            .iter()
            .map(|(a, up)| {
                (
                    format!("node=\"{node}\",member=\"{}\"", escape(a)),
                    u8::from(*up).to_string(),
                )
            })
            .collect(),
    );
}

/// How long this agent's TLS certificate (or the CA) stays valid: alert well before 0.
fn tls_family(out: &mut String, m: &Metrics, node: &str) {
    family(
        out,
        "pgfm_tls_valid_seconds",
        "Seconds until this agent's TLS certificate or the cluster CA expires (negative: expired).",
        "gauge",
        m.tls_valid_for_s
            .iter()
            .map(|s| (format!("node=\"{node}\""), s.to_string()))
            .collect(),
    );
}

/// Synchronous replication: how many standbys a commit waits for, and whether fewer
/// than asked.
fn sync_families(out: &mut String, m: &Metrics, node: &str) {
    family(
        out,
        "pgfm_sync_standbys",
        "How many standbys each commit waits for now (synchronous replication only).",
        "gauge",
        m.sync_waiting
            .iter()
            .map(|(n, _)| (format!("node=\"{node}\""), n.to_string()))
            .collect(),
    );
    family(
        out,
        "pgfm_sync_degraded",
        "1 when commits wait for fewer standbys than asked (synchronous replication only).",
        "gauge",
        m.sync_waiting
            .iter()
            .map(|(_, d)| (format!("node=\"{node}\""), u8::from(*d).to_string()))
            .collect(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics {
            node: "pg1".into(),
            role: "primary".into(),
            generation: 3,
            is_coordinator: false,
            lease_remaining_ms: Some(2_750),
            failovers_total: 1,
            switchovers_total: 1,
            probe_latency_ms: Some(2),
            lag_bytes: vec![("pg2".into(), 0)],
            agents_up: vec![("pg1".into(), true), ("pg2".into(), false)],
            sync_waiting: Some((1, false)),
            tls_valid_for_s: Some(86_400),
        };
        let text = render(&m);
        assert!(
            text.contains("pgfm_role{node=\"pg1\",role=\"primary\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("pgfm_role{node=\"pg1\",role=\"standby\"} 0\n"));
        assert!(text.contains("pgfm_lease_remaining_seconds{node=\"pg1\"} 2.750\n"));
        assert!(text.contains("pgfm_standby_lag_bytes{node=\"pg1\",standby=\"pg2\"} 0\n"));
        assert!(text.contains("pgfm_agent_up{node=\"pg1\",member=\"pg2\"} 0\n"));
        assert!(text.contains("# TYPE pgfm_failovers_total counter\n"));
        assert!(text.contains("pgfm_sync_standbys{node=\"pg1\"} 1\n"));
        assert!(text.contains("pgfm_sync_degraded{node=\"pg1\"} 0\n"));
        assert!(text.contains("pgfm_tls_valid_seconds{node=\"pg1\"} 86400\n"));
        assert_eq!(escape("a\"b"), "a\\\"b");
    }
}
