//! `pgfm show-config` and `pgfm edit-config`: the cluster-wide settings committed in the
//! log, read from an agent and changed through it. The checks are `check-config`'s
//! (`pgfm_agent::config::parse_settings`) on this side, then the coordinator's and the
//! log's; a refusal changes nothing.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use pgfm_agent::config::{parse_settings, settings_set, settings_with, ConfigError};
use pgfm_api::status_text;
use pgfm_core::settings::Settings;

/// How `edit-config` gets the new settings.
pub enum Edit {
    /// `--set KEY=VALUE ...`: those keys, the others kept.
    Set(Vec<String>),
    /// `--file FILE`: the keys it sets, the others kept.
    File(PathBuf),
    /// `$EDITOR` on the whole of the settings; then a diff and a question.
    Editor,
}

pub fn show(client: &pgfm_api::ApiClient, json: bool) -> anyhow::Result<ExitCode> {
    let view = super::runtime()?.block_on(client.settings())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", status_text::settings(&view));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn edit(client: &pgfm_api::ApiClient, how: Edit, yes: bool) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    let view = runtime.block_on(client.settings())?;
    if view.revision == 0 {
        eprintln!(
            "pgfm: refused, nothing was changed: the cluster's settings are not committed \
             yet (its first coordinator commits its own file's; pgfm cluster-status shows \
             whether one is elected)"
        );
        return Ok(ExitCode::from(1));
    }
    let current = &view.settings;
    // The editor's file, kept until the edit is committed (or refused: it is not lost).
    let mut kept = None;
    let (next, ask) = match &how {
        Edit::Set(sets) => (settings_set(current, sets), false),
        Edit::File(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            (settings_with(current, file, &text), false)
        }
        Edit::Editor => match in_editor(current, view.revision)? {
            Edited::Same => {
                println!("nothing to change (revision {})", view.revision);
                return Ok(ExitCode::SUCCESS);
            }
            Edited::Text(file, text) => {
                let parsed = parse_settings(&file, &text).inspect_err(|_| {
                    eprintln!(
                        "pgfm: your edit is kept in {}; fix it and run pgfm edit-config --file {}",
                        file.display(),
                        file.display()
                    )
                });
                kept = Some(file);
                (parsed, !yes)
            }
        },
    };
    let next = match next {
        Ok(next) => next,
        Err(e) => return Ok(invalid(&e)),
    };
    let changes = next.changes_from(current);
    if changes.is_empty() {
        if let Some(file) = &kept {
            let _ = std::fs::remove_file(file);
        }
        println!("nothing to change (revision {})", view.revision);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Changes to the cluster's settings (revision {} -> {}):",
        view.revision,
        view.revision + 1
    );
    for change in &changes {
        println!("  {}: {} -> {}", change.key, change.from, change.to);
    }
    if ask && !confirmed()? {
        if let Some(file) = &kept {
            let _ = std::fs::remove_file(file);
        }
        println!("not changed");
        return Ok(ExitCode::from(1));
    }
    let request = pgfm_api::EditSettingsRequest {
        base_revision: view.revision,
        settings: next,
        by: who(),
    };
    let answer = runtime.block_on(client.edit_settings(&request));
    if let Some(file) = &kept {
        if answer.is_ok() {
            let _ = std::fs::remove_file(file);
        } else {
            eprintln!(
                "pgfm: your edit is kept in {}: run pgfm edit-config again and make it on the \
                 settings in force now (--file with it would set every key it holds)",
                file.display()
            );
        }
    }
    if let Err(
        e @ (pgfm_api::ApiError::Unreachable { .. }
        | pgfm_api::ApiError::Failed { status: 503, .. }),
    ) = &answer
    {
        // No answer in time (the coordinator frozen, say): the change may have been
        // committed or not; the revision says which.
        eprintln!(
            "pgfm: no answer ({e}): revision {} may or may not have been committed; pgfm \
             show-config shows the revision in force",
            view.revision + 1
        );
        return Ok(ExitCode::from(2));
    }
    super::refusable(answer)
}

/// A value the checks refuse: what and where, and that nothing changed.
fn invalid(e: &ConfigError) -> ExitCode {
    let at = e.file.display().to_string();
    let at = if at == "--set" {
        String::new()
    } else {
        format!("{at}: ")
    };
    let key = if e.key.is_empty() {
        String::new()
    } else {
        format!("{} ", e.key)
    };
    eprintln!("pgfm: refused, nothing was changed: {at}{key}{}", e.message);
    ExitCode::from(1)
}

enum Edited {
    Same,
    Text(PathBuf, String),
}

/// Open `$VISUAL`, `$EDITOR` or `vi` on the settings, in a file of this user's own.
fn in_editor(current: &Settings, revision: u64) -> anyhow::Result<Edited> {
    let text = format!(
        "# pgfm edit-config: the cluster's settings, revision {revision}. Every key is \
         here;\n# one left out takes its default. Save and quit to see the changes.\n\n{}",
        current.to_toml()
    );
    let dir = std::env::temp_dir();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let file = dir.join(format!("pgfm-settings-{}-{nanos}.toml", std::process::id()));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .with_context(|| format!("creating {}", file.display()))?;
        f.write_all(text.as_bytes())?;
    }
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|e| !e.trim().is_empty()))
        .unwrap_or_else(|| "vi".to_string());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&file)
        .status()
        .with_context(|| format!("running the editor {editor:?}"))?;
    if !status.success() {
        let _ = std::fs::remove_file(&file);
        anyhow::bail!("the editor {editor:?} failed ({status}); nothing was changed");
    }
    let edited = std::fs::read_to_string(&file)?;
    if edited == text {
        let _ = std::fs::remove_file(&file);
        return Ok(Edited::Same);
    }
    Ok(Edited::Text(file, edited))
}

fn confirmed() -> anyhow::Result<bool> {
    print!("Commit them? [y/N] ");
    std::io::stdout().flush()?;
    let stdin = std::io::stdin();
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// `user@host`, for the history.
pub(crate) fn who() -> String {
    let uid = nix::unistd::getuid();
    let user = std::env::var("SUDO_USER")
        .ok()
        .or_else(|| {
            nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| uid.to_string());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    format!("{user}@{host}")
}
