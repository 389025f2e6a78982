//! PostgreSQL's own parameters, set for the whole cluster (`[postgresql.parameters]`,
//! `Settings::parameters`): which names PostgreSQL knows and which of them need a restart
//! (PostgreSQL 15's `postgres --describe-config`), which pgfm owns and why, and the order
//! the hot-standby minimums must change in. Pure: the agent writes what `for_node` gives
//! into the file it owns (`pgfm.conf`) and reloads.

use std::collections::BTreeMap;

/// When a change of a parameter takes effect (`pg_settings.context`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Only at a restart.
    Postmaster,
    /// At a reload.
    Sighup,
    /// At a reload, or per session by a superuser.
    Superuser,
    /// At a reload, or per session.
    User,
    /// At a reload, for new sessions.
    Backend,
}

/// The parameters pgfm sets itself, and why an operator may not.
const OWNED: &[(&str, &str)] = &[
    ("port", "each node's own, set in its [postgres] section"),
    (
        "listen_addresses",
        "each node's own, set in its [postgres] section",
    ),
    (
        "unix_socket_directories",
        "each node's own, set in its [postgres] section",
    ),
    (
        "data_directory",
        "each node's own, set in its [postgres] section",
    ),
    (
        "config_file",
        "pgfm writes its settings into the data directory's files",
    ),
    (
        "hba_file",
        "pgfm writes its settings into the data directory's files",
    ),
    (
        "ident_file",
        "pgfm writes its settings into the data directory's files",
    ),
    (
        "wal_level",
        "replication and pg_rewind need replica (pgfm sets it)",
    ),
    (
        "hot_standby",
        "a standby must answer the agent's probes (pgfm sets it on)",
    ),
    ("wal_log_hints", "pg_rewind needs it (pgfm sets it on)"),
    (
        "hot_standby_feedback",
        "pgfm sets it on, so that a standby's queries do not cancel",
    ),
    ("cluster_name", "pgfm sets it to the node's name"),
    (
        "primary_conninfo",
        "pgfm points each standby at the primary",
    ),
    (
        "primary_slot_name",
        "pgfm gives each standby its replication slot",
    ),
    (
        "recovery_target_timeline",
        "pgfm follows the latest timeline",
    ),
    (
        "synchronous_standby_names",
        "pgfm names the synchronous standbys ([replication])",
    ),
    ("promote_trigger_file", "pgfm promotes through pg_promote()"),
    ("ssl", "pgfm sets TLS up from [tls]"),
    ("ssl_cert_file", "pgfm sets TLS up from [tls]"),
    ("ssl_key_file", "pgfm sets TLS up from [tls]"),
    ("ssl_ca_file", "pgfm sets TLS up from [tls]"),
];

/// Parameters a hot standby needs at least as high as its primary's (PostgreSQL refuses
/// to run recovery otherwise): raised on the standbys before the primary, lowered on the
/// primary before the standbys (`for_node`).
pub const HOT_STANDBY_MINIMUMS: [&str; 5] = [
    "max_connections",
    "max_prepared_transactions",
    "max_locks_per_transaction",
    "max_wal_senders",
    "max_worker_processes",
];

/// Every parameter PostgreSQL 15 knows, with its context (`postgres --describe-config`).
const KNOWN: &[(&str, Context)] = &[
    ("DateStyle", Context::User),
    ("IntervalStyle", Context::User),
    ("TimeZone", Context::User),
    ("archive_cleanup_command", Context::Sighup),
    ("archive_command", Context::Sighup),
    ("archive_library", Context::Sighup),
    ("archive_mode", Context::Postmaster),
    ("archive_timeout", Context::Sighup),
    ("array_nulls", Context::User),
    ("authentication_timeout", Context::Sighup),
    ("autovacuum", Context::Sighup),
    ("autovacuum_analyze_scale_factor", Context::Sighup),
    ("autovacuum_analyze_threshold", Context::Sighup),
    ("autovacuum_freeze_max_age", Context::Postmaster),
    ("autovacuum_max_workers", Context::Postmaster),
    ("autovacuum_multixact_freeze_max_age", Context::Postmaster),
    ("autovacuum_naptime", Context::Sighup),
    ("autovacuum_vacuum_cost_delay", Context::Sighup),
    ("autovacuum_vacuum_cost_limit", Context::Sighup),
    ("autovacuum_vacuum_insert_scale_factor", Context::Sighup),
    ("autovacuum_vacuum_insert_threshold", Context::Sighup),
    ("autovacuum_vacuum_scale_factor", Context::Sighup),
    ("autovacuum_vacuum_threshold", Context::Sighup),
    ("autovacuum_work_mem", Context::Sighup),
    ("backend_flush_after", Context::User),
    ("backslash_quote", Context::User),
    ("bgwriter_delay", Context::Sighup),
    ("bgwriter_flush_after", Context::Sighup),
    ("bgwriter_lru_maxpages", Context::Sighup),
    ("bgwriter_lru_multiplier", Context::Sighup),
    ("bonjour", Context::Postmaster),
    ("bonjour_name", Context::Postmaster),
    ("bytea_output", Context::User),
    ("check_function_bodies", Context::User),
    ("checkpoint_completion_target", Context::Sighup),
    ("checkpoint_flush_after", Context::Sighup),
    ("checkpoint_timeout", Context::Sighup),
    ("checkpoint_warning", Context::Sighup),
    ("client_connection_check_interval", Context::User),
    ("client_encoding", Context::User),
    ("client_min_messages", Context::User),
    ("cluster_name", Context::Postmaster),
    ("commit_delay", Context::Superuser),
    ("commit_siblings", Context::User),
    ("compute_query_id", Context::Superuser),
    ("constraint_exclusion", Context::User),
    ("cpu_index_tuple_cost", Context::User),
    ("cpu_operator_cost", Context::User),
    ("cpu_tuple_cost", Context::User),
    ("cursor_tuple_fraction", Context::User),
    ("data_directory", Context::Postmaster),
    ("data_sync_retry", Context::Postmaster),
    ("db_user_namespace", Context::Sighup),
    ("deadlock_timeout", Context::Superuser),
    ("debug_pretty_print", Context::User),
    ("debug_print_parse", Context::User),
    ("debug_print_plan", Context::User),
    ("debug_print_rewritten", Context::User),
    ("default_statistics_target", Context::User),
    ("default_table_access_method", Context::User),
    ("default_tablespace", Context::User),
    ("default_text_search_config", Context::User),
    ("default_toast_compression", Context::User),
    ("default_transaction_deferrable", Context::User),
    ("default_transaction_isolation", Context::User),
    ("default_transaction_read_only", Context::User),
    ("dynamic_library_path", Context::Superuser),
    ("dynamic_shared_memory_type", Context::Postmaster),
    ("effective_cache_size", Context::User),
    ("effective_io_concurrency", Context::User),
    ("enable_async_append", Context::User),
    ("enable_bitmapscan", Context::User),
    ("enable_gathermerge", Context::User),
    ("enable_hashagg", Context::User),
    ("enable_hashjoin", Context::User),
    ("enable_incremental_sort", Context::User),
    ("enable_indexonlyscan", Context::User),
    ("enable_indexscan", Context::User),
    ("enable_material", Context::User),
    ("enable_memoize", Context::User),
    ("enable_mergejoin", Context::User),
    ("enable_nestloop", Context::User),
    ("enable_parallel_append", Context::User),
    ("enable_parallel_hash", Context::User),
    ("enable_partition_pruning", Context::User),
    ("enable_partitionwise_aggregate", Context::User),
    ("enable_partitionwise_join", Context::User),
    ("enable_seqscan", Context::User),
    ("enable_sort", Context::User),
    ("enable_tidscan", Context::User),
    ("escape_string_warning", Context::User),
    ("event_source", Context::Postmaster),
    ("exit_on_error", Context::User),
    ("extension_destdir", Context::Superuser),
    ("external_pid_file", Context::Postmaster),
    ("extra_float_digits", Context::User),
    ("from_collapse_limit", Context::User),
    ("fsync", Context::Sighup),
    ("full_page_writes", Context::Sighup),
    ("geqo", Context::User),
    ("geqo_effort", Context::User),
    ("geqo_generations", Context::User),
    ("geqo_pool_size", Context::User),
    ("geqo_seed", Context::User),
    ("geqo_selection_bias", Context::User),
    ("geqo_threshold", Context::User),
    ("gin_fuzzy_search_limit", Context::User),
    ("gin_pending_list_limit", Context::User),
    ("hash_mem_multiplier", Context::User),
    ("hba_file", Context::Postmaster),
    ("hot_standby", Context::Postmaster),
    ("hot_standby_feedback", Context::Sighup),
    ("huge_page_size", Context::Postmaster),
    ("huge_pages", Context::Postmaster),
    ("ident_file", Context::Postmaster),
    ("idle_in_transaction_session_timeout", Context::User),
    ("idle_session_timeout", Context::User),
    ("jit", Context::User),
    ("jit_above_cost", Context::User),
    ("jit_inline_above_cost", Context::User),
    ("jit_optimize_above_cost", Context::User),
    ("jit_provider", Context::Postmaster),
    ("join_collapse_limit", Context::User),
    ("krb_caseins_users", Context::Sighup),
    ("krb_server_keyfile", Context::Sighup),
    ("lc_messages", Context::Superuser),
    ("lc_monetary", Context::User),
    ("lc_numeric", Context::User),
    ("lc_time", Context::User),
    ("listen_addresses", Context::Postmaster),
    ("lo_compat_privileges", Context::Superuser),
    ("local_preload_libraries", Context::User),
    ("lock_timeout", Context::User),
    ("log_autovacuum_min_duration", Context::Sighup),
    ("log_checkpoints", Context::Sighup),
    ("log_connections", Context::Backend),
    ("log_destination", Context::Sighup),
    ("log_directory", Context::Sighup),
    ("log_disconnections", Context::Backend),
    ("log_duration", Context::Superuser),
    ("log_error_verbosity", Context::Superuser),
    ("log_executor_stats", Context::Superuser),
    ("log_file_mode", Context::Sighup),
    ("log_filename", Context::Sighup),
    ("log_hostname", Context::Sighup),
    ("log_line_prefix", Context::Sighup),
    ("log_lock_waits", Context::Superuser),
    ("log_min_duration_sample", Context::Superuser),
    ("log_min_duration_statement", Context::Superuser),
    ("log_min_error_statement", Context::Superuser),
    ("log_min_messages", Context::Superuser),
    ("log_parameter_max_length", Context::Superuser),
    ("log_parameter_max_length_on_error", Context::User),
    ("log_parser_stats", Context::Superuser),
    ("log_planner_stats", Context::Superuser),
    ("log_recovery_conflict_waits", Context::Sighup),
    ("log_replication_commands", Context::Superuser),
    ("log_rotation_age", Context::Sighup),
    ("log_rotation_size", Context::Sighup),
    ("log_startup_progress_interval", Context::Sighup),
    ("log_statement", Context::Superuser),
    ("log_statement_sample_rate", Context::Superuser),
    ("log_statement_stats", Context::Superuser),
    ("log_temp_files", Context::Superuser),
    ("log_timezone", Context::Sighup),
    ("log_transaction_sample_rate", Context::Superuser),
    ("log_truncate_on_rotation", Context::Sighup),
    ("logging_collector", Context::Postmaster),
    ("logical_decoding_work_mem", Context::User),
    ("maintenance_io_concurrency", Context::User),
    ("maintenance_work_mem", Context::User),
    ("max_connections", Context::Postmaster),
    ("max_files_per_process", Context::Postmaster),
    ("max_locks_per_transaction", Context::Postmaster),
    ("max_logical_replication_workers", Context::Postmaster),
    ("max_parallel_maintenance_workers", Context::User),
    ("max_parallel_workers", Context::User),
    ("max_parallel_workers_per_gather", Context::User),
    ("max_pred_locks_per_page", Context::Sighup),
    ("max_pred_locks_per_relation", Context::Sighup),
    ("max_pred_locks_per_transaction", Context::Postmaster),
    ("max_prepared_transactions", Context::Postmaster),
    ("max_replication_slots", Context::Postmaster),
    ("max_slot_wal_keep_size", Context::Sighup),
    ("max_stack_depth", Context::Superuser),
    ("max_standby_archive_delay", Context::Sighup),
    ("max_standby_streaming_delay", Context::Sighup),
    ("max_sync_workers_per_subscription", Context::Sighup),
    ("max_wal_senders", Context::Postmaster),
    ("max_wal_size", Context::Sighup),
    ("max_worker_processes", Context::Postmaster),
    ("min_dynamic_shared_memory", Context::Postmaster),
    ("min_parallel_index_scan_size", Context::User),
    ("min_parallel_table_scan_size", Context::User),
    ("min_wal_size", Context::Sighup),
    ("old_snapshot_threshold", Context::Postmaster),
    ("parallel_leader_participation", Context::User),
    ("parallel_setup_cost", Context::User),
    ("parallel_tuple_cost", Context::User),
    ("password_encryption", Context::User),
    ("plan_cache_mode", Context::User),
    ("port", Context::Postmaster),
    ("primary_conninfo", Context::Sighup),
    ("primary_slot_name", Context::Sighup),
    ("promote_trigger_file", Context::Sighup),
    ("quote_all_identifiers", Context::User),
    ("random_page_cost", Context::User),
    ("recovery_end_command", Context::Sighup),
    ("recovery_init_sync_method", Context::Sighup),
    ("recovery_min_apply_delay", Context::Sighup),
    ("recovery_prefetch", Context::Sighup),
    ("recovery_target", Context::Postmaster),
    ("recovery_target_action", Context::Postmaster),
    ("recovery_target_inclusive", Context::Postmaster),
    ("recovery_target_lsn", Context::Postmaster),
    ("recovery_target_name", Context::Postmaster),
    ("recovery_target_time", Context::Postmaster),
    ("recovery_target_timeline", Context::Postmaster),
    ("recovery_target_xid", Context::Postmaster),
    ("recursive_worktable_factor", Context::User),
    ("restart_after_crash", Context::Sighup),
    ("restore_command", Context::Sighup),
    ("row_security", Context::User),
    ("search_path", Context::User),
    ("seq_page_cost", Context::User),
    ("session_preload_libraries", Context::Superuser),
    ("session_replication_role", Context::Superuser),
    ("shared_buffers", Context::Postmaster),
    ("shared_memory_type", Context::Postmaster),
    ("shared_preload_libraries", Context::Postmaster),
    ("ssl", Context::Sighup),
    ("ssl_ca_file", Context::Sighup),
    ("ssl_cert_file", Context::Sighup),
    ("ssl_ciphers", Context::Sighup),
    ("ssl_crl_dir", Context::Sighup),
    ("ssl_crl_file", Context::Sighup),
    ("ssl_dh_params_file", Context::Sighup),
    ("ssl_ecdh_curve", Context::Sighup),
    ("ssl_key_file", Context::Sighup),
    ("ssl_max_protocol_version", Context::Sighup),
    ("ssl_min_protocol_version", Context::Sighup),
    ("ssl_passphrase_command", Context::Sighup),
    ("ssl_passphrase_command_supports_reload", Context::Sighup),
    ("ssl_prefer_server_ciphers", Context::Sighup),
    ("standard_conforming_strings", Context::User),
    ("statement_timeout", Context::User),
    ("stats_fetch_consistency", Context::User),
    ("superuser_reserved_connections", Context::Postmaster),
    ("synchronize_seqscans", Context::User),
    ("synchronous_commit", Context::User),
    ("synchronous_standby_names", Context::Sighup),
    ("syslog_facility", Context::Sighup),
    ("syslog_ident", Context::Sighup),
    ("syslog_sequence_numbers", Context::Sighup),
    ("syslog_split_messages", Context::Sighup),
    ("tcp_keepalives_count", Context::User),
    ("tcp_keepalives_idle", Context::User),
    ("tcp_keepalives_interval", Context::User),
    ("tcp_user_timeout", Context::User),
    ("temp_buffers", Context::User),
    ("temp_file_limit", Context::Superuser),
    ("temp_tablespaces", Context::User),
    ("timezone_abbreviations", Context::User),
    ("track_activities", Context::Superuser),
    ("track_activity_query_size", Context::Postmaster),
    ("track_commit_timestamp", Context::Postmaster),
    ("track_counts", Context::Superuser),
    ("track_functions", Context::Superuser),
    ("track_io_timing", Context::Superuser),
    ("track_wal_io_timing", Context::Superuser),
    ("transform_null_equals", Context::User),
    ("unix_socket_directories", Context::Postmaster),
    ("unix_socket_group", Context::Postmaster),
    ("unix_socket_permissions", Context::Postmaster),
    ("update_process_title", Context::Superuser),
    ("vacuum_cost_delay", Context::User),
    ("vacuum_cost_limit", Context::User),
    ("vacuum_cost_page_dirty", Context::User),
    ("vacuum_cost_page_hit", Context::User),
    ("vacuum_cost_page_miss", Context::User),
    ("vacuum_defer_cleanup_age", Context::Sighup),
    ("vacuum_failsafe_age", Context::User),
    ("vacuum_freeze_min_age", Context::User),
    ("vacuum_freeze_table_age", Context::User),
    ("vacuum_multixact_failsafe_age", Context::User),
    ("vacuum_multixact_freeze_min_age", Context::User),
    ("vacuum_multixact_freeze_table_age", Context::User),
    ("wal_buffers", Context::Postmaster),
    ("wal_compression", Context::Superuser),
    ("wal_decode_buffer_size", Context::Postmaster),
    ("wal_init_zero", Context::Superuser),
    ("wal_keep_size", Context::Sighup),
    ("wal_level", Context::Postmaster),
    ("wal_log_hints", Context::Postmaster),
    ("wal_receiver_create_temp_slot", Context::Sighup),
    ("wal_receiver_status_interval", Context::Sighup),
    ("wal_receiver_timeout", Context::Sighup),
    ("wal_recycle", Context::Superuser),
    ("wal_retrieve_retry_interval", Context::Sighup),
    ("wal_sender_timeout", Context::User),
    ("wal_skip_threshold", Context::User),
    ("wal_sync_method", Context::Sighup),
    ("wal_writer_delay", Context::Sighup),
    ("wal_writer_flush_after", Context::Sighup),
    ("work_mem", Context::User),
    ("xmlbinary", Context::User),
    ("xmloption", Context::User),
];

/// `name`'s context, if PostgreSQL knows it (case does not matter, as in PostgreSQL).
pub fn context(name: &str) -> Option<Context> {
    KNOWN
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
        .map(|(_, c)| *c)
}

/// Whether a change of `name` takes effect only at a restart. An extension's parameter
/// (`auto_explain.log_min_duration`) is taken to be reloadable.
pub fn needs_restart(name: &str) -> bool {
    context(name) == Some(Context::Postmaster)
}

/// Why `name = value` cannot be a cluster-wide parameter, if it cannot (to follow its key,
/// `postgresql.parameters.NAME`, as `Settings::problem` words it): a name PostgreSQL
/// does not know (an extension's, with a dot, is let through: PostgreSQL keeps it as a
/// placeholder), one pgfm owns, a value that cannot be written into a config file, or
/// `synchronous_commit` weaker than synchronous replication needs.
pub fn problem(name: &str, value: &str, synchronous: bool) -> Option<String> {
    if let Some((_, why)) = OWNED.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        return Some(format!("is set by pgfm: {why}"));
    }
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !name.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if !valid_name {
        return Some("is not a parameter name (letters, digits, _ and . only)".to_string());
    }
    if context(name).is_none() && !name.contains('.') {
        return Some(
            "is not a parameter PostgreSQL knows (pg_settings lists them; an extension's is \
             written with its prefix, as auto_explain.log_min_duration)"
                .to_string(),
        );
    }
    if value.chars().any(|c| c == '\n' || c == '\r' || c == '\0') {
        return Some("has a line break in its value".to_string());
    }
    if name.eq_ignore_ascii_case("synchronous_commit")
        && synchronous
        && !["on", "remote_apply"].contains(&value.to_ascii_lowercase().as_str())
    {
        return Some(format!(
            "is {value:?}, which lets the primary acknowledge commits no synchronous standby \
             holds while replication.synchronous is on (use on or remote_apply, or turn \
             synchronous replication off)"
        ));
    }
    None
}

/// A digest of `parameters`, stable across runs and machines (FNV-1a over `name=value`
/// lines in order): what a node's `pgfm.conf` was written with, to compare with the
/// committed parameters without sending them in every report.
pub fn digest(parameters: &BTreeMap<String, String>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, value) in parameters {
        for byte in name
            .bytes()
            .chain(std::iter::once(b'='))
            .chain(value.bytes())
            .chain(std::iter::once(b'\n'))
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The hot-standby minimums a primary runs with, or standbys run with (their own view of
/// `pg_settings`), by name.
pub type Running = BTreeMap<String, i64>;

/// What `node` writes into its `pgfm.conf`: the committed parameters, with the hot-standby
/// minimums held where PostgreSQL needs them while a change goes round (each takes effect
/// at a restart). A standby never writes less than its primary runs with (a raise reaches
/// the standbys first); the primary never writes more than a standby runs with (a cut
/// reaches the primary first). `primary_runs`: what the primary runs with, for a standby;
/// `standbys_run`: what each standby runs with, for the primary.
pub fn for_node(
    committed: &BTreeMap<String, String>,
    is_primary: bool,
    primary_runs: Option<&Running>,
    standbys_run: &[&Running],
) -> BTreeMap<String, String> {
    let mut out = committed.clone();
    for name in HOT_STANDBY_MINIMUMS {
        let Some(wanted) = committed
            .get(name)
            .and_then(|v| v.trim().parse::<i64>().ok())
        else {
            continue;
        };
        let held = if is_primary {
            standbys_run
                .iter()
                .filter_map(|r| r.get(name))
                .copied()
                .min()
                .map(|lowest| wanted.min(lowest))
        } else {
            primary_runs
                .and_then(|r| r.get(name))
                .map(|running| wanted.max(*running))
        };
        if let Some(value) = held {
            out.insert(name.to_string(), value.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_by_name_ownership_and_value() {
        assert_eq!(problem("work_mem", "64MB", false), None);
        assert_eq!(problem("WORK_MEM", "64MB", false), None);
        assert_eq!(problem("auto_explain.log_min_duration", "1s", false), None);
        assert_eq!(
            problem("port", "5433", false).as_deref(),
            Some("is set by pgfm: each node's own, set in its [postgres] section")
        );
        assert_eq!(
            problem("wal_level", "logical", false).as_deref(),
            Some("is set by pgfm: replication and pg_rewind need replica (pgfm sets it)")
        );
        assert_eq!(
            problem("work_mme", "64MB", false).as_deref(),
            Some("is not a parameter PostgreSQL knows (pg_settings lists them; an extension's is written with its prefix, as auto_explain.log_min_duration)")
        );
        assert!(problem("work mem", "1", false).is_some());
        assert!(problem("work_mem", "1\nport = 1", false).is_some());
        assert_eq!(problem("synchronous_commit", "off", false), None);
        assert!(problem("synchronous_commit", "local", true).is_some());
        assert_eq!(problem("synchronous_commit", "remote_apply", true), None);
        assert!(needs_restart("shared_buffers") && needs_restart("max_connections"));
        assert!(!needs_restart("work_mem") && !needs_restart("auto_explain.x"));
    }

    #[test]
    fn the_digest_changes_with_any_name_or_value_and_not_otherwise() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let a = map(&[("work_mem", "64MB"), ("max_connections", "200")]);
        assert_eq!(digest(&a), digest(&a.clone()));
        assert_ne!(digest(&a), digest(&map(&[("work_mem", "64MB")])));
        assert_ne!(
            digest(&a),
            digest(&map(&[("work_mem", "64MB"), ("max_connections", "201")]))
        );
        assert_ne!(digest(&map(&[("a", "bc")])), digest(&map(&[("ab", "c")])));
        assert_ne!(digest(&BTreeMap::new()), digest(&a));
    }

    /// A raise reaches the standbys first, a cut the primary first: each side holds the
    /// other's running value until it has it.
    #[test]
    fn hot_standby_minimums_change_in_the_order_postgresql_needs() {
        let committed: BTreeMap<String, String> = [
            ("max_connections".to_string(), "200".to_string()),
            ("work_mem".to_string(), "64MB".to_string()),
        ]
        .into();
        let runs = |n: i64| -> Running { [("max_connections".to_string(), n)].into() };
        // Raised from 100: the standby writes 200, the primary stays at 100 until the
        // standby runs with 200.
        let standby = for_node(&committed, false, Some(&runs(100)), &[]);
        assert_eq!(standby["max_connections"], "200");
        assert_eq!(standby["work_mem"], "64MB");
        let primary = for_node(&committed, true, None, &[&runs(100)]);
        assert_eq!(primary["max_connections"], "100");
        let primary = for_node(&committed, true, None, &[&runs(200), &runs(250)]);
        assert_eq!(primary["max_connections"], "200");
        // Cut from 300: the primary writes 200 at once; the standby keeps 300 while the
        // primary runs with it.
        assert_eq!(
            for_node(&committed, true, None, &[&runs(300)])["max_connections"],
            "200"
        );
        assert_eq!(
            for_node(&committed, false, Some(&runs(300)), &[])["max_connections"],
            "300"
        );
        assert_eq!(
            for_node(&committed, false, Some(&runs(200)), &[])["max_connections"],
            "200"
        );
        // Nothing known of the others: the committed value.
        assert_eq!(
            for_node(&committed, true, None, &[])["max_connections"],
            "200"
        );
    }
}
