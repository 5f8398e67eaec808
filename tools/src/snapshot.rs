//! `shardflow snapshot FILE`: what a job snapshot holds (operator by operator:
//! key groups, keyed states and their entries, pending timers, operator lists
//! and a source's position), read checked, to look at before a restore.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use shardflow_engine::{JobSnapshot, OperatorSummary};

use crate::Exit;

/// `shardflow snapshot`.
#[derive(Debug, Args)]
pub(crate) struct SnapshotArgs {
    /// The snapshot file (`JobSnapshot::save` wrote it).
    file: PathBuf,
    /// One JSON array, an object per operator, instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn show(a: &SnapshotArgs) -> Result<Exit> {
    let snapshot = JobSnapshot::load(&a.file)?;
    let summaries = snapshot
        .operators
        .values()
        .map(|o| o.summary())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", a.file.display()))?;
    if a.json {
        println!("{}", serde_json::Value::Array(summaries.iter().map(as_json).collect()));
        return Ok(Exit::Done);
    }
    let bytes: u64 = summaries.iter().map(|s| s.keyed_bytes + s.list_bytes).sum();
    let operators = match summaries.len() {
        1 => "1 operator".to_string(),
        n => format!("{n} operators"),
    };
    println!("{}: {operators}, {bytes} bytes of state", a.file.display());
    println!(
        "{:<24} {:>14} {:>12} {:<28} {:>10} {:>13}",
        "OPERATOR", "KEY GROUPS", "KEYED BYTES", "KEYED STATES (ENTRIES)", "TIMER KEYS", "LISTS (ITEMS)"
    );
    for s in &summaries {
        let states: Vec<String> = s.keyed_states.iter().map(|(name, n)| format!("{name} {n}")).collect();
        println!(
            "{:<24} {:>14} {:>12} {:<28} {:>10} {:>13}",
            s.operator,
            format!("{} of {}", s.key_groups, s.max_parallelism),
            s.keyed_bytes,
            match (states.is_empty(), s.expiring) {
                (true, _) => "-".to_string(),
                (false, 0) => states.join(", "),
                (false, n) => format!("{} ({n} with a TTL)", states.join(", ")),
            },
            s.timer_keys,
            format!("{} ({})", s.lists, s.list_items),
        );
    }
    Ok(Exit::Done)
}

fn as_json(s: &OperatorSummary) -> serde_json::Value {
    json!({
        "operator": s.operator,
        "max_parallelism": s.max_parallelism,
        "key_groups": s.key_groups,
        "keyed_bytes": s.keyed_bytes,
        "keyed_states": s.keyed_states,
        "timer_keys": s.timer_keys,
        "expiring": s.expiring,
        "lists": s.lists,
        "list_items": s.list_items,
        "list_bytes": s.list_bytes,
    })
}
