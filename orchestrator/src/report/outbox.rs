//! A report as an email (multipart/alternative: plain text and HTML), written to the
//! outbox folder as an `.eml` file a mail client opens. Without SMTP the outbox is where
//! every report goes; with SMTP, it keeps the reports that could not be delivered.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use lettre::Message;
use lettre::message::{Mailbox, MultiPart};

use super::Rendered;

/// Who the message is from when the configuration names no SMTP sender.
pub const DEFAULT_FROM: &str = "Wavelift <wavelift@localhost>";

/// Builds the message: every recipient once, in the order given.
pub fn message(
    rendered: &Rendered,
    from: &str,
    recipients: &[String],
    message_id: &str,
) -> anyhow::Result<Message> {
    let from: Mailbox = from
        .parse()
        .with_context(|| format!("the sender `{from}` is not an email address"))?;
    let mut builder = Message::builder()
        .from(from)
        .subject(rendered.subject.clone())
        .message_id(Some(message_id.to_owned()))
        .date_now();
    let mut seen = std::collections::BTreeSet::new();
    for to in recipients {
        if !seen.insert(to.to_ascii_lowercase()) {
            continue;
        }
        let mailbox: Mailbox = to
            .parse()
            .with_context(|| format!("the recipient `{to}` is not an email address"))?;
        builder = builder.to(mailbox);
    }
    if seen.is_empty() {
        anyhow::bail!("nobody to send it to: the wave has no `notify` and no application owner");
    }
    builder
        .multipart(MultiPart::alternative_plain_html(
            rendered.text.clone(),
            rendered.html.clone(),
        ))
        .context("cannot build the message")
}

/// Writes a message (RFC 5322 bytes) to `folder` as `NAME.eml`; returns the file. The
/// file appears whole or not at all (written aside, then renamed), and a name already
/// there is the same message written before: it is left as it is.
pub fn write_bytes(folder: &Path, name: &str, message: &[u8]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(folder)
        .with_context(|| format!("cannot create the outbox {}", folder.display()))?;
    let path = folder.join(format!("{name}.eml"));
    if path.exists() {
        return Ok(path);
    }
    let partial = folder.join(format!(".{name}.eml.partial"));
    std::fs::write(&partial, message)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, &path)
        .with_context(|| format!("cannot move the message to {}", path.display()))?;
    Ok(path)
}
