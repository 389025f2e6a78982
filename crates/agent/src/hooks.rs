//! Hooks (EFM's scripts): operator commands run on events, through `sh -c`, with the event
//! in environment variables, under a time limit, their output in the agent log.

use std::process::Stdio;

use pgfm_core::Generation;

use super::Agent;

/// What a hook is told.
pub(super) struct Event<'a> {
    pub name: &'a str,
    pub old_primary: Option<&'a str>,
    pub new_primary: Option<&'a str>,
    pub generation: Generation,
}

impl Agent {
    /// Run `command` for `event`; `Err` says why it failed (non-zero exit, time limit, ...).
    pub(super) async fn run_hook(
        &self,
        hook: &str,
        command: &str,
        event: &Event<'_>,
    ) -> Result<(), String> {
        let timeout = self.config.hooks.timeout;
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("PGFM_CLUSTER", &self.config.cluster)
            .env("PGFM_NODE", &self.config.name)
            .env("PGFM_HOOK", hook)
            .env("PGFM_EVENT", event.name)
            .env("PGFM_OLD_PRIMARY", event.old_primary.unwrap_or(""))
            .env("PGFM_NEW_PRIMARY", event.new_primary.unwrap_or(""))
            .env("PGFM_GENERATION", event.generation.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{hook} hook could not start: {e}"))?;
        let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(format!("{hook} hook failed: {e}")),
            Err(_) => {
                return Err(format!(
                    "{hook} hook did not finish within {timeout:?} (killed)"
                ))
            }
        };
        let generation = event.generation;
        for line in String::from_utf8_lossy(&output.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&output.stderr).lines())
        {
            tracing::info!(%generation, hook, event = event.name, "hook output: {line}");
        }
        if output.status.success() {
            tracing::info!(%generation, hook, event = event.name, "hook succeeded");
            Ok(())
        } else {
            Err(format!("{hook} hook exited with {}", output.status))
        }
    }

    /// The notification hook, if configured; failures are logged, never fatal.
    pub(super) async fn notify(&self, event: Event<'_>) {
        if let Some(command) = self.config.hooks.notification.clone() {
            if let Err(e) = self.run_hook("notification", &command, &event).await {
                tracing::warn!(generation = %event.generation, "{e}");
            }
        }
    }
}
