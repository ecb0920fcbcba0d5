//! Delivery of recorded reports: over SMTP when it is configured (the `smtp:` section, or
//! `WAVELIFT_SMTP_URL`), to the outbox folder as `.eml` files otherwise.
//!
//! Every report is in the store before its first attempt. An attempt takes the report
//! under a lease, sends the stored bytes (the same Message-ID every time), and records
//! the outcome. A failed attempt is retried with a doubling wait, up to the configured
//! number of attempts; a report given up on, or refused for good by the server (a 5xx
//! reply), is written to the outbox so that nothing is lost, and the log says where.
//!
//! Once per event: the store records one report per (wave, kind, event), whoever asks.
//! A process killed between the server's acceptance and the store's commit leaves the
//! report `sending`; when its lease ends it is sent again, with the same Message-ID (mail
//! clients show one message). That window is the length of one commit; a store that
//! refuses the commit (busy, its connection lost) is asked again for up to a minute.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use lettre::address::Envelope;
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Address, AsyncTransport as _, Tokio1Executor};
use waves::config::Config;
use waves::model::CredentialRef;

use super::outbox;
use crate::store::{ReportRow, Store};

/// How long one attempt may hold a report: a crashed attempt's report is retried after.
/// An SMTP conversation may take minutes; writing to the outbox takes milliseconds.
const SMTP_LEASE_MS: i64 = 5 * 60_000;
const OUTBOX_LEASE_MS: i64 = 10_000;
/// The longest wait between two attempts.
const MAX_RETRY_WAIT_MS: i64 = 3_600_000;
/// How long the SMTP conversation may wait for the server at each command.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one whole delivery may take, whatever the server does.
const SEND_TIMEOUT: Duration = Duration::from_secs(120);

/// Where reports go, and how hard delivery is tried.
pub struct Mailer {
    pub from: String,
    route: Route,
    outbox: PathBuf,
    attempts: u32,
    retry_after_ms: i64,
}

enum Route {
    Outbox,
    Smtp {
        transport: Box<AsyncSmtpTransport<Tokio1Executor>>,
        /// The server as it may be shown (no password).
        shown: String,
    },
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered {
        via: String,
    },
    /// Tried again from this moment (wall clock, ms).
    Retry {
        error: String,
        at: i64,
    },
    /// Given up on; kept in the outbox file if it could be written.
    Failed {
        error: String,
        kept: Option<String>,
    },
    /// Another process took it first.
    Taken,
}

/// Reads a secret from its reference; the error names the reference, never the value.
pub fn read_credential(reference: &CredentialRef) -> anyhow::Result<String> {
    reference.read().map_err(anyhow::Error::msg)
}

impl Mailer {
    /// The mailer of a configuration: SMTP when `smtp:` is written or
    /// `WAVELIFT_SMTP_URL` is set (it wins over the file's URL), the outbox otherwise.
    pub fn from_config(config: &Config) -> anyhow::Result<Mailer> {
        let env_url = std::env::var("WAVELIFT_SMTP_URL")
            .ok()
            .filter(|u| !u.trim().is_empty());
        let outbox = config.resolve(&config.outbox);
        let attempts = config.reports.attempts.max(1);
        let retry_after_ms = (config.reports.retry_after.approx_seconds() as i64 * 1000).max(1);
        let url = env_url.or_else(|| config.smtp.as_ref().map(|s| s.url.clone()));
        let Some(url) = url else {
            return Ok(Mailer {
                from: outbox::DEFAULT_FROM.to_owned(),
                route: Route::Outbox,
                outbox,
                attempts,
                retry_after_ms,
            });
        };
        let smtp = config.smtp.as_ref();
        let parsed = waves::smtp::SmtpUrl::parse(url.trim()).map_err(anyhow::Error::msg)?;
        let password = match smtp.and_then(|s| s.credential.as_ref()) {
            Some(reference) => Some(read_credential(reference)?),
            None => std::env::var("WAVELIFT_SMTP_PASSWORD").ok(),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&parsed.host)
            .port(parsed.port)
            .timeout(Some(SMTP_TIMEOUT));
        let mut tls = TlsParameters::builder(parsed.host.clone());
        if let Some(ca) = smtp.and_then(|s| s.ca_file.as_ref()) {
            let path = config.resolve(ca);
            let pem = std::fs::read(&path)
                .with_context(|| format!("cannot read smtp.ca_file {}", path.display()))?;
            let cert = Certificate::from_pem(&pem).with_context(|| {
                format!("smtp.ca_file {} is not a PEM certificate", path.display())
            })?;
            tls = tls.add_root_certificate(cert);
        }
        let tls = tls
            .build_rustls()
            .context("cannot set up TLS for the SMTP server")?;
        builder = builder.tls(match (parsed.implicit_tls, parsed.starttls) {
            (true, _) => Tls::Wrapper(tls),
            (false, Some(true)) => Tls::Required(tls),
            (false, Some(false)) => Tls::None,
            // A password never travels in clear: with one, STARTTLS is required.
            (false, None) if password.is_some() => Tls::Required(tls),
            (false, None) => Tls::Opportunistic(tls),
        });
        if let Some(password) = password {
            if parsed.starttls == Some(false) && !parsed.implicit_tls {
                anyhow::bail!(
                    "the SMTP URL says tls=none but a password is configured: a password never \
                     travels in clear; use STARTTLS (drop tls=none) or smtps://"
                );
            }
            let Some(user) = parsed.user.clone() else {
                anyhow::bail!(
                    "the SMTP URL names no user for the credential: write it as smtp://USER@HOST:PORT"
                );
            };
            builder = builder.credentials(Credentials::new(user, password));
        }
        let scheme = if parsed.implicit_tls { "smtps" } else { "smtp" };
        let shown = format!("{scheme}://{}:{}", parsed.host, parsed.port);
        Ok(Mailer {
            from: smtp
                .map(|s| s.from.clone())
                .or_else(|| std::env::var("WAVELIFT_SMTP_FROM").ok())
                .unwrap_or_else(|| outbox::DEFAULT_FROM.to_owned()),
            route: Route::Smtp {
                transport: Box::new(builder.build()),
                shown,
            },
            outbox,
            attempts,
            retry_after_ms,
        })
    }

    /// Where reports go, in words.
    pub fn describe(&self) -> String {
        match &self.route {
            Route::Outbox => format!("the outbox {}", self.outbox.display()),
            Route::Smtp { shown, .. } => shown.clone(),
        }
    }

    /// Tries every report due at `now` (wall clock, ms) once; returns the outcomes.
    pub async fn deliver_due(
        &self,
        store: &Store,
        now: i64,
    ) -> anyhow::Result<Vec<(ReportRow, Attempt)>> {
        let mut outcomes = Vec::new();
        for report in store.reports_to_deliver(now, 50).await? {
            // Each attempt takes its report at its own moment: a slow pass must not take
            // a report under a lease that has already run out.
            let attempt = self
                .attempt(store, &report, jiff::Timestamp::now().as_millisecond())
                .await?;
            outcomes.push((report, attempt));
        }
        Ok(outcomes)
    }

    /// One attempt at one report: taken under a lease, sent, and the outcome recorded.
    pub async fn attempt(
        &self,
        store: &Store,
        report: &ReportRow,
        now: i64,
    ) -> anyhow::Result<Attempt> {
        let lease = now + self.lease_ms();
        if !store
            .take_report(report.id, report.attempts, now, lease)
            .await?
        {
            return Ok(Attempt::Taken);
        }
        let number = report.attempts + 1;
        let result = self.send(report, std::time::Instant::now()).await;
        // Some recipients have it: the report goes on to the others only.
        if let Err(Failure {
            remaining: Some(remaining),
            ..
        }) = &result
        {
            write_outcome(|| store.report_narrowed(report, lease, remaining)).await?;
        }
        let at = jiff::Timestamp::now().as_millisecond();
        // Recorded and logged in the run's time (a warped run's clock while it is ahead
        // of the wall clock, as status and the other events speak); the next attempt is
        // due on the wall clock, which the delivery loop follows.
        // (A store that does not answer this read must not keep the outcome unwritten:
        // the report would go out again once its lease runs out.)
        let logged = crate::scheduler::clock::status_now(store)
            .await
            .map_or(at, |(now, _)| now);
        let attempt = match result {
            Ok(via) => {
                write_outcome(|| store.report_delivered(report, lease, logged, &via)).await?;
                Attempt::Delivered { via }
            }
            Err(failure) if !failure.permanent && (number as u32) < self.attempts => {
                let wait = self
                    .retry_after_ms
                    .saturating_mul(1i64 << (number - 1).clamp(0, 20))
                    .min(MAX_RETRY_WAIT_MS);
                let retry_at = at + wait;
                write_outcome(|| {
                    store.report_not_delivered(
                        report,
                        lease,
                        logged,
                        &failure.message,
                        Some(retry_at),
                        None,
                    )
                })
                .await?;
                Attempt::Retry {
                    error: failure.message,
                    at: retry_at,
                }
            }
            Err(failure) => {
                let (kept, not_kept) = match &self.route {
                    Route::Outbox => (None, None),
                    Route::Smtp { .. } => match self.keep(report) {
                        Ok(kept) => (Some(kept), None),
                        Err(err) => (None, Some(format!("; not kept in the outbox: {err:#}"))),
                    },
                };
                // The message kept lists every recipient; the report may have reached
                // some of them already: who is still without it is said.
                let without = failure
                    .remaining
                    .clone()
                    .unwrap_or_else(|| report.recipients());
                let mut error = if failure.permanent {
                    format!("refused for good: {}", failure.message)
                } else {
                    failure.message
                };
                if matches!(self.route, Route::Smtp { .. }) {
                    error.push_str(&format!("; not delivered to {}", without.join(", ")));
                }
                error.push_str(not_kept.as_deref().unwrap_or_default());
                write_outcome(|| {
                    store.report_not_delivered(report, lease, logged, &error, None, kept.as_deref())
                })
                .await?;
                Attempt::Failed { error, kept }
            }
        };
        Ok(attempt)
    }

    /// `taken`: when the attempt took the report (its lease runs from then).
    async fn send(&self, report: &ReportRow, taken: std::time::Instant) -> Result<String, Failure> {
        match &self.route {
            Route::Outbox => self
                .keep(report)
                .map_err(|e| Failure::new(format!("{e:#}"), false)),
            Route::Smtp { transport, shown } => {
                let envelope =
                    envelope(report).map_err(|e| Failure::new(format!("{e:#}"), true))?;
                if envelope.to().len() > MAX_RECIPIENTS {
                    return send_groups(transport, shown, &envelope, report, taken, MAX_RECIPIENTS)
                        .await;
                }
                match send_one(transport, shown, &envelope, report).await {
                    Ok(()) => Ok(shown.clone()),
                    Err(failure) if failure.of_a_mailbox() && envelope.to().len() > 1 => {
                        send_groups(transport, shown, &envelope, report, taken, 1).await
                    }
                    Err(failure) => Err(failure),
                }
            }
        }
    }

    fn lease_ms(&self) -> i64 {
        match self.route {
            Route::Outbox => OUTBOX_LEASE_MS,
            Route::Smtp { .. } => SMTP_LEASE_MS,
        }
    }

    /// Writes the report's message to the outbox; returns the file. The file is named
    /// after the report, so an attempt cut short after the write (the file appears whole
    /// or not at all) finds it and writes no second copy.
    fn keep(&self, report: &ReportRow) -> anyhow::Result<String> {
        let stamp = crate::scheduler::clock::timestamp(report.due_at)
            .strftime("%Y%m%dT%H%MZ")
            .to_string();
        let path = outbox::write_bytes(
            &self.outbox,
            &format!("{stamp}-{}-{}-{}", report.wave, report.kind, report.id),
            report.message.as_bytes(),
        )?;
        Ok(path.display().to_string())
    }
}

#[derive(Default)]
struct Failure {
    message: String,
    permanent: bool,
    /// The server's reply code, when it gave one.
    code: Option<u16>,
    /// Some recipients received it: those still to send it to (the others received it
    /// or refused it for good).
    remaining: Option<Vec<String>>,
}

impl Failure {
    fn new(message: String, permanent: bool) -> Failure {
        Failure {
            message,
            permanent,
            ..Failure::default()
        }
    }

    /// A refusal of one mailbox (550 to 553: unknown, not local, full, not allowed), not
    /// of the sender, the login or the message.
    fn of_a_mailbox(&self) -> bool {
        self.permanent && self.code.is_some_and(|c| (550..=553).contains(&c))
    }
}

/// How long an attempt's outcome is tried to be written (the store busy or its
/// connection lost): a delivery whose outcome is lost is sent again once its lease ends.
const OUTCOME_PATIENCE: Duration = Duration::from_secs(60);

/// Writes an attempt's outcome, trying again with a doubling pause (from 200 ms) for up
/// to [`OUTCOME_PATIENCE`].
async fn write_outcome<F, Fut>(mut write: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let deadline = std::time::Instant::now() + OUTCOME_PATIENCE;
    let mut pause = Duration::from_millis(200);
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(err) if std::time::Instant::now() + pause < deadline => {
                eprintln!("cannot record a report's outcome yet (trying again): {err:#}");
                tokio::time::sleep(pause).await;
                pause = pause.saturating_mul(2);
            }
            Err(err) => return Err(err.context("cannot record the report's outcome")),
        }
    }
}

/// One SMTP conversation for `envelope`.
async fn send_one(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    shown: &str,
    envelope: &Envelope,
    report: &ReportRow,
) -> Result<(), Failure> {
    // lettre's timeout covers connecting; a server that stops answering
    // mid-conversation is given up on here.
    let sent = tokio::time::timeout(
        SEND_TIMEOUT,
        transport.send_raw(envelope, report.message.as_bytes()),
    )
    .await;
    match sent {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => {
            let mut message = error_chain(&err);
            // A certificate the client does not trust stays untrusted: no retry mends it.
            let untrusted = message.contains("invalid peer certificate");
            if untrusted {
                message.push_str(
                    ": the SMTP server's certificate is not trusted here; if the relay has a CA of its own, give its certificate (PEM) as smtp.ca_file",
                );
            }
            Err(Failure {
                permanent: err.is_permanent() || untrusted,
                message,
                code: err.status().map(u16::from),
                remaining: None,
            })
        }
        Err(_) => Err(Failure::new(
            format!(
                "{shown} did not finish the conversation within {}s",
                SEND_TIMEOUT.as_secs()
            ),
            false,
        )),
    }
}

/// The recipients a server must take in one conversation (RFC 5321, 4.5.3.1.8): a
/// report to more goes in conversations of this many.
const MAX_RECIPIENTS: usize = 100;

/// The message in one conversation per group of `size` recipients. With groups of one,
/// after a mailbox's refusal for good of the whole envelope (the server stops a
/// conversation at the first recipient it refuses, so one departed owner would keep the
/// report from everyone); with groups of [`MAX_RECIPIENTS`], for a report to more people
/// than a server takes at once, a group a mailbox's refusal stopped sent again one by
/// one. Delivered when everyone else received it, with who did not and why in the
/// outcome. A recipient the server could not take yet (a 4xx reply), or not reached
/// while a send could still end inside the lease, is tried again with the report's next
/// attempt, without those who had it: nobody gets it twice.
async fn send_groups(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    shown: &str,
    envelope: &Envelope,
    report: &ReportRow,
    taken: std::time::Instant,
    size: usize,
) -> Result<String, Failure> {
    // A send started later could outlast the lease with its outcome's writing: another
    // attempt would then send the report again.
    let last_start =
        Duration::from_millis(SMTP_LEASE_MS as u64).saturating_sub(SEND_TIMEOUT + OUTCOME_PATIENCE);
    let mut delivered = 0;
    let mut refused = Vec::new();
    let mut later: Vec<(String, String)> = Vec::new();
    for group in envelope.to().chunks(size.max(1)) {
        if taken.elapsed() > last_start {
            later.extend(
                group
                    .iter()
                    .map(|to| (to.to_string(), "not tried in this attempt".to_owned())),
            );
            continue;
        }
        let to = group
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let one = Envelope::new(envelope.from().cloned(), group.to_vec())
            .map_err(|e| Failure::new(format!("the envelope to {to}: {e}"), true))?;
        match send_one(transport, shown, &one, report).await {
            Ok(()) => delivered += group.len(),
            Err(failure) if failure.of_a_mailbox() && group.len() > 1 => {
                for single in group {
                    if taken.elapsed() > last_start {
                        later.push((single.to_string(), "not tried in this attempt".to_owned()));
                        continue;
                    }
                    let alone = Envelope::new(envelope.from().cloned(), vec![single.clone()])
                        .map_err(|e| {
                            Failure::new(format!("the envelope to {single}: {e}"), true)
                        })?;
                    match send_one(transport, shown, &alone, report).await {
                        Ok(()) => delivered += 1,
                        Err(failure) if failure.permanent => {
                            refused.push((single.to_string(), failure.message));
                        }
                        Err(failure) => later.push((single.to_string(), failure.message)),
                    }
                }
            }
            Err(failure) if failure.permanent => refused.extend(
                group
                    .iter()
                    .map(|single| (single.to_string(), failure.message.clone())),
            ),
            Err(failure) => later.extend(
                group
                    .iter()
                    .map(|single| (single.to_string(), failure.message.clone())),
            ),
        }
    }
    let all = envelope.to().len();
    let each = by_reason(&refused);
    let refused_words = if refused.is_empty() {
        String::new()
    } else {
        format!(" (not delivered to {})", each.join("; "))
    };
    if later.is_empty() {
        if delivered == 0 {
            // One answer for every recipient, sent alone: the sender, or a server that
            // takes nothing from this one, rather than each mailbox.
            let first = refused.first().map(|(_, why)| why.as_str());
            if all > 1
                && refused.iter().all(|(_, why)| Some(why.as_str()) == first)
                && !first.is_some_and(names_a_mailbox)
            {
                let sender = envelope
                    .from()
                    .map_or_else(|| "<>".to_owned(), ToString::to_string);
                let how = if size == 1 {
                    "each sent alone"
                } else {
                    "in every conversation"
                };
                return Err(Failure::new(
                    format!(
                        "the server refused every recipient with the same answer, {how}: it refuses the sender {sender} or takes no mail from here, not each mailbox: {}",
                        first.unwrap_or_default()
                    ),
                    true,
                ));
            }
            return Err(Failure::new(
                format!("every recipient refused it: {}", each.join("; ")),
                true,
            ));
        }
        return Ok(format!(
            "{shown}, to {delivered} of {all} recipients{refused_words}"
        ));
    }
    let waiting = by_reason(&later);
    Err(Failure {
        message: format!(
            "delivered to {delivered} of {all} recipients{refused_words}; not yet to {}",
            waiting.join("; ")
        ),
        permanent: false,
        code: None,
        remaining: Some(later.into_iter().map(|(to, _)| to).collect()),
    })
}

/// Recipients with why each did not get it, one reason once with everyone it holds for
/// (a server down for 150 recipients said its words 150 times), in the order first met.
fn by_reason(recipients: &[(String, String)]) -> Vec<String> {
    let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
    for (to, why) in recipients {
        match reasons.iter_mut().find(|(reason, _)| reason == why) {
            Some((_, tos)) => tos.push(to),
            None => reasons.push((why, vec![to])),
        }
    }
    reasons
        .into_iter()
        .map(|(why, tos)| format!("{}: {why}", tos.join(", ")))
        .collect()
}

/// An SMTP answer whose enhanced status code is about the recipient's address or mailbox
/// (RFC 3463: 5.1.1 to 5.1.6, 5.1.10, 5.2.x): a server may give the same words for every
/// departed mailbox, so one answer for all recipients does not then mean the sender.
fn names_a_mailbox(answer: &str) -> bool {
    answer
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|code| {
            matches!(
                code,
                "5.1.1" | "5.1.2" | "5.1.3" | "5.1.4" | "5.1.5" | "5.1.6" | "5.1.10"
            ) || code.starts_with("5.2.")
        })
}

fn envelope(report: &ReportRow) -> anyhow::Result<Envelope> {
    let from: lettre::message::Mailbox = report
        .sender
        .parse()
        .with_context(|| format!("the sender `{}` is not an email address", report.sender))?;
    let to = report
        .recipients()
        .iter()
        .map(|r| {
            r.parse::<Address>()
                .with_context(|| format!("the recipient `{r}` is not an email address"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Envelope::new(Some(from.email), to).context("the message has no recipient")
}

/// An error with its causes, as one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if cause_text.contains(&text) {
            // The cause repeats this level's words and says more ("Connection error:
            // Connection error: invalid peer certificate"): its words alone.
            text = cause_text;
        } else if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    // A level that repeats the words of the one above ("Connection error: Connection
    // error: invalid peer certificate") is said once.
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {

    /// The enhanced codes of a departed mailbox (the same words for every one on some
    /// servers) are not read as a refused sender.
    #[test]
    fn an_error_chain_says_each_level_once() {
        #[derive(Debug)]
        struct Level(&'static str, Option<Box<Level>>);
        impl std::fmt::Display for Level {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Level {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|l| l as _)
            }
        }
        let err = Level(
            "Connection error: Connection error",
            Some(Box::new(Level(
                "invalid peer certificate: UnknownIssuer",
                None,
            ))),
        );
        assert_eq!(
            super::error_chain(&err),
            "Connection error: invalid peer certificate: UnknownIssuer"
        );
    }

    #[test]
    fn a_mailbox_code_is_told_from_a_sender_or_policy_one() {
        use super::names_a_mailbox;
        assert!(names_a_mailbox(
            "permanent error (550): 5.1.1 no such user here"
        ));
        assert!(names_a_mailbox(
            "permanent error (550): 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found"
        ));
        assert!(names_a_mailbox("permanent error (552): 5.2.2 mailbox full"));
        assert!(!names_a_mailbox(
            "permanent error (553): 5.7.1 sender address not allowed here"
        ));
        assert!(!names_a_mailbox(
            "permanent error (553): 5.1.8 bad sender's system address"
        ));
        assert!(!names_a_mailbox("permanent error (550): relaying denied"));
    }
    use super::*;

    /// An outcome the store refuses at first (busy, its connection lost) is written once
    /// it answers, not dropped: a lost outcome would have the report sent again.
    #[tokio::test]
    async fn an_outcome_is_written_once_the_store_answers_again() {
        let tries = std::sync::atomic::AtomicUsize::new(0);
        let written = write_outcome(|| {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n < 2 {
                    anyhow::bail!("database is locked")
                }
                Ok(())
            }
        })
        .await;
        assert!(written.is_ok(), "{written:?}");
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn a_password_never_travels_in_clear_nor_shows_in_a_message() {
        let secret =
            std::env::temp_dir().join(format!("wavelift-smtp-secret-{}", std::process::id()));
        std::fs::write(&secret, "hunter2\n").expect("the secret file");
        let mut config = Config::builtin(std::env::temp_dir());
        config.smtp = Some(waves::config::Smtp {
            url: "smtp://reports@127.0.0.1:25?tls=none".to_owned(),
            from: "wavelift@example.com".to_owned(),
            credential: Some(CredentialRef::File(secret.display().to_string())),
            ca_file: None,
        });
        let err = Mailer::from_config(&config).err().expect("refused");
        assert!(
            err.to_string()
                .contains("a password never travels in clear"),
            "{err}"
        );
        let _ = std::fs::remove_file(&secret);
        for url in [
            "smpt://me:hunter2@relay.example.com",
            "smtp://me:hun?ter2@relay.example.com:x",
        ] {
            let err = waves::smtp::SmtpUrl::parse(url).expect_err("refused");
            assert!(!err.contains("hunter2") && !err.contains("ter2"), "{err}");
        }
    }
}
