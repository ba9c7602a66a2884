//! `mailpush doctor`: reads the mail store's configuration beside mailpush's own and says, line
//! by line, what is missing or wrong for each output: Cyrus's `imapd.conf` ([`cyrus`]),
//! Dovecot's `dovecot.conf` ([`dovecot`]).
//!
//! Why: the commonest failure of a push gateway in the field is not in the gateway but in the
//! store's configuration: an `imapd.conf` without `modseq` in `event_extra_params`, a socket
//! Cyrus cannot write, a `dovecot.conf` whose driver points elsewhere. Each shows only as
//! silence. The checks are plain functions of the two configurations (and of the files they
//! name), so they are tested on real configuration files.

pub mod cyrus;
pub mod dovecot;

use std::fmt::Write as _;

pub use cyrus::check_cyrus;
pub use dovecot::check_dovecot;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// As it should be.
    Ok,
    /// An output works less well (no badge, no sender in alerts); not a failure.
    Warn,
    /// An output does not work at all.
    Fault,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub verdict: Verdict,
    pub message: String,
}

/// What the doctor found.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether nothing is at fault (warnings allowed).
    pub fn healthy(&self) -> bool {
        self.findings.iter().all(|f| f.verdict != Verdict::Fault)
    }

    /// One line per finding: `ok`, `warn` or `FAULT`, then what and why.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for finding in &self.findings {
            let label = match finding.verdict {
                Verdict::Ok => "ok   ",
                Verdict::Warn => "warn ",
                Verdict::Fault => "FAULT",
            };
            let _ = writeln!(out, "{label} {}", finding.message);
        }
        out
    }

    pub(crate) fn ok(&mut self, message: impl Into<String>) {
        self.push(Verdict::Ok, message);
    }

    pub(crate) fn warn(&mut self, message: impl Into<String>) {
        self.push(Verdict::Warn, message);
    }

    pub(crate) fn fault(&mut self, message: impl Into<String>) {
        self.push(Verdict::Fault, message);
    }

    /// Adds another report's findings after these.
    pub fn extend(&mut self, other: Report) {
        self.findings.extend(other.findings);
    }

    fn push(&mut self, verdict: Verdict, message: impl Into<String>) {
        self.findings.push(Finding {
            verdict,
            message: message.into(),
        });
    }
}
