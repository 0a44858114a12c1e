//! The outcome of verifying a split: a list of named checks, each passed, passed within
//! tolerance, failed or skipped, with a one-line detail.

use std::fmt;
use std::path::PathBuf;

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckStatus {
    /// Checked and exactly as recorded.
    Pass,
    /// A verification vector whose output differs from the recorded bytes but lies within the
    /// recorded tolerance: expected on a machine with other floating-point kernels.
    WithinTolerance,
    /// Checked and wrong.
    Fail,
    /// Not checked because something it depends on already failed.
    Skipped,
}

impl CheckStatus {
    fn label(self) -> &'static str {
        match self {
            CheckStatus::Pass => "PASS",
            CheckStatus::WithinTolerance => "TOL ",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Skipped => "SKIP",
        }
    }
}

/// One check of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked (`layer ranges`, `shard 1 file`, `shard 1 verification vector`, ...).
    pub name: String,
    /// The shard the check is about, if it is about one.
    pub shard: Option<usize>,
    pub status: CheckStatus,
    /// What was found: every problem, for a failed check.
    pub detail: String,
}

/// Every check run on a split directory, in the order run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The directory verified.
    pub dir: PathBuf,
    /// The manifest's model id.
    pub model_id: String,
    pub checks: Vec<Check>,
}

impl VerifyReport {
    /// True when no check failed (passes within tolerance and skips do not fail a split;
    /// a skip only happens after a failure).
    pub fn is_ok(&self) -> bool {
        !self.checks.iter().any(|c| c.status == CheckStatus::Fail)
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == CheckStatus::Fail)
    }

    /// The first check called `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    pub(crate) fn push(
        &mut self,
        name: impl Into<String>,
        shard: Option<usize>,
        status: CheckStatus,
        detail: impl Into<String>,
    ) {
        self.checks.push(Check {
            name: name.into(),
            shard,
            status,
            detail: detail.into(),
        });
    }

    /// Records a check that passes when `problems` is empty and fails listing them otherwise.
    pub(crate) fn outcome(
        &mut self,
        name: impl Into<String>,
        shard: Option<usize>,
        problems: Vec<String>,
        ok_detail: impl Into<String>,
    ) -> bool {
        let ok = problems.is_empty();
        if ok {
            self.push(name, shard, CheckStatus::Pass, ok_detail);
        } else {
            self.push(name, shard, CheckStatus::Fail, problems.join("; "));
        }
        ok
    }
}

impl fmt::Display for VerifyReport {
    /// One line per check: `PASS layer ranges: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            // Details never span lines, whatever a manifest holds.
            let detail = c.detail.replace(['\n', '\r'], " ");
            writeln!(f, "{} {}: {}", c.status.label(), c.name, detail)?;
        }
        Ok(())
    }
}
