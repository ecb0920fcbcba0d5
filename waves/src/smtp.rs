//! The SMTP server's URL (`smtp.url`, or `WAVELIFT_SMTP_URL`): read here, so that
//! `validate` refuses what report delivery could not use, with the place, before a run
//! starts; the orchestrator connects with what it says.

/// How to reach the SMTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    /// `smtps://`: TLS from the first byte.
    pub implicit_tls: bool,
    /// `Some(true)`: STARTTLS required; `Some(false)`: plain; `None`: STARTTLS when offered.
    pub starttls: Option<bool>,
    /// The login's user name (percent-decoded), when the URL names one.
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
}

impl SmtpUrl {
    /// `smtp://[USER@]HOST[:PORT][/][?tls=required|opportunistic|none]`, or `smtps://`.
    /// A message never shows what stands before the host: a password typed into the
    /// URL must not end up in a log.
    pub fn parse(url: &str) -> Result<SmtpUrl, String> {
        let shown = without_user_info(url);
        let (implicit_tls, rest) = if let Some(rest) = url.strip_prefix("smtps://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("smtp://") {
            (false, rest)
        } else {
            return Err(format!("`{shown}` is not an smtp:// or smtps:// URL"));
        };
        // The user information ends at the last `@` (a password may hold `?` or `/`).
        let (user_info, rest) = match rest.rsplit_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, rest),
        };
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match authority.split_once('/') {
            Some((authority, path)) => (authority, path),
            None => (authority, ""),
        };
        if !path.is_empty() {
            return Err(format!(
                "`{shown}`: an SMTP URL has no path (`/{path}`): write smtp://HOST:PORT"
            ));
        }
        let user = match user_info {
            Some(user) if user.contains(':') => {
                return Err("the SMTP URL holds a password (not shown): put it in \
                            `smtp.credential` (env:NAME or file:PATH) or WAVELIFT_SMTP_PASSWORD"
                    .to_owned());
            }
            Some("") => return Err(format!("`{shown}`: the user before `@` is empty")),
            Some(user) => Some(percent_decode(user)),
            None => None,
        };
        // `[v6]:port`, `host:port`, or either without the port.
        let (host, port_text) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((host, rest)) => match rest {
                    "" => (host, None),
                    _ => match rest.strip_prefix(':') {
                        Some(port) => (host, Some(port)),
                        None => {
                            return Err(format!(
                                "`{shown}`: `{rest}` after the IPv6 address is not `:PORT`"
                            ));
                        }
                    },
                },
                None => return Err(format!("`{shown}`: an IPv6 address lacks its closing `]`")),
            },
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port_text {
            Some(port) => match port.parse::<u16>() {
                Ok(0) | Err(_) => {
                    return Err(format!(
                        "`{port}` is not a port in the SMTP URL `{shown}`: write a whole number from 1 to 65535"
                    ));
                }
                Ok(port) => Some(port),
            },
            None => None,
        };
        if host.is_empty() {
            return Err(format!("the SMTP URL `{shown}` has no host"));
        }
        let mut starttls = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair {
                "tls=required" | "starttls=required" => starttls = Some(true),
                "tls=none" | "tls=off" => starttls = Some(false),
                "tls=opportunistic" => starttls = None,
                other => {
                    return Err(format!(
                        "`{other}` in the SMTP URL: expected tls=required, tls=opportunistic or tls=none"
                    ));
                }
            }
        }
        if implicit_tls && starttls == Some(false) {
            return Err("smtps:// is TLS from the first byte; tls=none contradicts it".to_owned());
        }
        Ok(SmtpUrl {
            implicit_tls,
            starttls,
            user,
            host: host.to_owned(),
            port: port.unwrap_or(if implicit_tls { 465 } else { 587 }),
        })
    }

    /// Whether a password would travel in clear: plain SMTP asked for (`tls=none`).
    pub fn plain(&self) -> bool {
        !self.implicit_tls && self.starttls == Some(false)
    }
}

/// The URL without what stands between `://` and the last `@`.
fn without_user_info(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.split('@').next_back().unwrap_or("").to_owned(),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::SmtpUrl;

    #[test]
    fn smtp_urls_say_how_to_reach_the_server() {
        let u = SmtpUrl::parse("smtp://relay.example.com").expect("parses");
        assert_eq!(
            (u.host.as_str(), u.port, u.implicit_tls, u.starttls),
            ("relay.example.com", 587, false, None)
        );
        let u = SmtpUrl::parse("smtps://reports%40corp@mail.example.com").expect("parses");
        assert_eq!(u.user.as_deref(), Some("reports@corp"));
        assert_eq!((u.port, u.implicit_tls), (465, true));
        let u = SmtpUrl::parse("smtp://127.0.0.1:2525?tls=none").expect("parses");
        assert_eq!(
            (u.host.as_str(), u.port, u.starttls, u.plain()),
            ("127.0.0.1", 2525, Some(false), true)
        );
        let u = SmtpUrl::parse("smtp://[::1]:25/?tls=required").expect("parses");
        assert_eq!(
            (u.host.as_str(), u.port, u.starttls),
            ("::1", 25, Some(true))
        );
        let u = SmtpUrl::parse("smtp://[::1]").expect("parses");
        assert_eq!((u.host.as_str(), u.port), ("::1", 587));
    }

    #[test]
    fn bad_smtp_urls_are_refused_with_the_reason() {
        let err = |url| SmtpUrl::parse(url).expect_err("refused");
        assert!(err("http://x").contains("not an smtp:// or smtps:// URL"));
        assert!(err("smtp://me:secret@x").contains("holds a password"));
        assert!(!err("smtp://me:secret@x").contains("secret"));
        assert!(err("smtp://x:port").contains("is not a port"));
        assert!(err("smtp://x:99999").contains("from 1 to 65535"));
        assert!(err("smtp://x:0").contains("from 1 to 65535"));
        assert!(err("smtp://x:2601/extra").contains("has no path (`/extra`)"));
        assert!(err("smtp://x?tls=maybe").contains("tls=required"));
        assert!(err("smtp://x?TLS=none").contains("tls=required"));
        assert!(err("smtps://x?tls=none").contains("contradicts"));
        assert!(err("smtp://:25").contains("has no host"));
        assert!(err("smtp://@x").contains("the user before `@` is empty"));
        assert!(err("smtp://[::1]x").contains("is not `:PORT`"));
    }
}
