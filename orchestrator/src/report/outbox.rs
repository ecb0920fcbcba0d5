//! A report as an email (multipart/alternative: plain text and HTML), written to the
//! outbox folder as an `.eml` file a mail client opens. Without SMTP the outbox is where
//! every report goes; with SMTP, it keeps the reports that could not be delivered.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use lettre::address::Envelope;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::{Address, Message};

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
    let mut seen = std::collections::BTreeSet::new();
    let mut to: Vec<Address> = Vec::new();
    for recipient in recipients {
        if !seen.insert(recipient.to_ascii_lowercase()) {
            continue;
        }
        to.push(
            recipient
                .parse()
                .with_context(|| format!("the recipient `{recipient}` is not an email address"))?,
        );
    }
    if to.is_empty() {
        anyhow::bail!("nobody to send it to: the wave has no `notify` and no application owner");
    }
    let envelope = Envelope::new(Some(from.email.clone()), to.clone())
        .context("the message has no recipient")?;
    Message::builder()
        .from(from)
        .raw_header(to_header(&to))
        .envelope(envelope)
        .subject(rendered.subject.clone())
        .message_id(Some(message_id.to_owned()))
        .date_now()
        .multipart(MultiPart::alternative_plain_html(
            rendered.text.clone(),
            rendered.html.clone(),
        ))
        .context("cannot build the message")
}

/// The `To:` header, folded (RFC 5322 allows 998 characters to a line, and mail servers
/// refuse longer ones: a report to some 25 people was refused whole). The addresses are
/// ASCII, checked by their parse: nothing to encode.
fn to_header(to: &[Address]) -> HeaderValue {
    const WIDTH: usize = 76;
    let addresses: Vec<&str> = to.iter().map(|a| -> &str { a.as_ref() }).collect();
    let raw = addresses.join(", ");
    let mut folded = String::new();
    // The line so far, `To: ` included.
    let mut line = "To: ".len();
    for (i, address) in addresses.iter().enumerate() {
        if i > 0 {
            folded.push(',');
            line += 1;
            if line + 1 + address.len() > WIDTH {
                folded.push_str("\r\n");
                line = 0;
            }
            folded.push(' ');
            line += 1;
        }
        folded.push_str(address);
        line += address.len();
    }
    HeaderValue::dangerous_new_pre_encoded(HeaderName::new_from_ascii_str("To"), raw, folded)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A report to many people: every header line within RFC 5322's limit (a mail
    /// server refused the whole message at 1,141 characters), every recipient in the
    /// unfolded `To:` once, in order, and in the envelope.
    #[test]
    fn a_report_to_many_recipients_keeps_its_lines_short() {
        let rendered = Rendered {
            subject: "[Wavelift] wave-1: readiness".to_owned(),
            html: "<p>ready</p>".to_owned(),
            text: "ready".to_owned(),
        };
        let mut recipients: Vec<String> = (0..154)
            .map(|i| format!("giulia.rossi{i:03}@migration-factory.example.com"))
            .collect();
        recipients.push("GIULIA.ROSSI000@migration-factory.example.com".to_owned());
        let message =
            message(&rendered, "wavelift@example.com", &recipients, "<1@x>").expect("the message");
        assert_eq!(message.envelope().to().len(), 154);
        let bytes = String::from_utf8(message.formatted()).expect("ASCII");
        let head = bytes.split("\r\n\r\n").next().unwrap_or_default();
        let longest = head.split("\r\n").map(str::len).max().unwrap_or(0);
        assert!(longest <= 78, "a header line of {longest} characters");
        let unfolded = head.replace("\r\n ", " ");
        let to = unfolded
            .lines()
            .find_map(|l| l.strip_prefix("To: "))
            .expect("a To header");
        let listed: Vec<&str> = to.split(", ").collect();
        assert_eq!(
            listed,
            recipients[..154]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        );
    }
}
