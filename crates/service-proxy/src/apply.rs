//! Writes rulesets into the kernel with Debian's `nft`: the first sync
//! (and any sync after an error) replaces the whole table in one
//! transaction; later ones send only what changed, also in one
//! transaction, so a sync after one endpoint change costs a few lines
//! whatever the number of Services.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::TABLE;
use crate::rules::Ruleset;

/// Why `nft` failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// `nft` could not be started.
    #[error("running nft: {0} (is Debian's nftables package installed?)")]
    Spawn(#[source] std::io::Error),
    /// `nft` refused the script.
    #[error("nft {action} failed ({status}): {stderr}")]
    Nft {
        /// What was being done.
        action: &'static str,
        /// Its exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
}

/// Runs `nft` with `args`, feeding `script` on stdin.
pub fn nft(args: &[&str], script: &str, action: &'static str) -> Result<String, ApplyError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ApplyError::Spawn)?;
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        // A write error shows as nft's own failure below.
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(ApplyError::Spawn)?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // nft echoes the offending line; a whole ruleset is too much.
        if stderr.len() > 4000 {
            stderr.truncate(4000);
            stderr.push_str("...");
        }
        return Err(ApplyError::Nft {
            action,
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies `script` in one transaction.
pub fn apply_script(script: &str, action: &'static str) -> Result<(), ApplyError> {
    nft(&["-f", "-"], script, action).map(|_| ())
}

/// Checks `script` without applying it (`nft -c`).
pub fn check_script(script: &str) -> Result<(), ApplyError> {
    nft(&["-c", "-f", "-"], script, "check").map(|_| ())
}

/// Deletes the proxy's table; `Ok(false)` when there was none.
pub fn delete_table() -> Result<bool, ApplyError> {
    let script = format!("add table ip {TABLE}\ndelete table ip {TABLE}\n");
    let existed = nft(&["list", "table", "ip", TABLE], "", "list").is_ok();
    apply_script(&script, "delete table")?;
    Ok(existed)
}

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Whether the whole table was written.
    pub full: bool,
    /// Lines of the nft script.
    pub lines: usize,
    /// Time spent generating the script and running nft.
    pub took: Duration,
}

/// Keeps what the kernel holds and brings it to the desired ruleset.
#[derive(Debug, Default)]
pub struct Applier {
    current: Option<Ruleset>,
}

impl Applier {
    /// An applier whose first sync writes the whole table.
    pub fn new() -> Applier {
        Applier::default()
    }

    /// Forgets what the kernel holds: the next sync is a full one.
    pub fn force_full(&mut self) {
        self.current = None;
    }

    /// What the last successful sync wrote.
    pub fn current(&self) -> Option<&Ruleset> {
        self.current.as_ref()
    }

    /// Brings the table to `desired` in one transaction. After an error
    /// the next sync is a full one.
    pub fn sync(&mut self, desired: Ruleset) -> Result<SyncReport, ApplyError> {
        let started = Instant::now();
        let (script, full) = match self.current.as_ref().and_then(|c| desired.render_diff(c)) {
            Some(diff) => (diff, false),
            None => (desired.render_full(), true),
        };
        let lines = script.lines().count();
        if lines > 0 {
            let action = if full { "full sync" } else { "partial sync" };
            if let Err(e) = apply_script(&script, action) {
                self.current = None;
                return Err(e);
            }
        }
        self.current = Some(desired);
        Ok(SyncReport {
            full,
            lines,
            took: started.elapsed(),
        })
    }
}
