//! RemoteShell over SSH, through the system's OpenSSH client (`ssh`).
//!
//! Why the system client and not an SSH library: host keys are checked by OpenSSH itself
//! against the known_hosts file the factory already keeps (hashed entries,
//! `@cert-authority` and `@revoked` lines, every key type), the ssh-agent and
//! `~/.ssh/config` work as they do for the team's own logins, and the build gains no
//! cryptography crates. One login per server is shared by all its commands (connection
//! multiplexing, `ControlMaster`), so a prerequisite check of eight commands logs in
//! once.
//!
//! Credentials come from references (`env:NAME`, `file:PATH`, `ssh-agent`): a reference
//! whose secret is a private key (`-----BEGIN ... PRIVATE KEY-----`) logs in with the
//! key, any other secret is a password, given to OpenSSH through `SSH_ASKPASS` (a small
//! script in a private folder that prints it from the environment of that one `ssh`).
//! Secrets never reach a command line, and they are redacted from captured output.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt as _;
use waves::config::{HostKeys, Ssh};
use waves::model::{CredentialRef, Server};

use crate::shell::{CommandOutput, RemoteShell, ShellError};

/// How long an idle shared login stays open after its last command.
const PERSIST: &str = "60";

/// Logs in to servers with `ssh`; one instance per process.
pub struct SshShell {
    settings: Ssh,
    /// The known_hosts file, resolved against the configuration's folder.
    known_hosts: Option<PathBuf>,
    /// A private folder (0700) for the shared logins' sockets, the askpass script and
    /// keys that came from the environment.
    private: PathBuf,
    /// Where `file:` credentials with a relative path start from.
    base_dir: PathBuf,
    /// The sockets of the shared logins opened, closed when the shell is dropped.
    masters: std::sync::Mutex<std::collections::BTreeSet<PathBuf>>,
    /// Whether the private folder was made (on the first SSH command, so a process
    /// that reaches no server over SSH writes nothing), or why it could not be; made,
    /// it holds the folder's lock file, locked while this shell lives.
    made: std::sync::OnceLock<Result<Option<std::fs::File>, String>>,
}

impl SshShell {
    /// `base_dir` is the folder relative paths of the configuration start from.
    pub fn new(settings: &Ssh, base_dir: &Path) -> SshShell {
        // A short name: the sockets of shared logins live here, and a socket's path has at
        // most 108 bytes.
        let private =
            std::env::temp_dir().join(format!("wl-ssh-{}-{:x}", std::process::id(), unique()));
        let known_hosts = settings.known_hosts.as_ref().map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                base_dir.join(p)
            }
        });
        SshShell {
            settings: settings.clone(),
            known_hosts,
            private,
            base_dir: base_dir.to_path_buf(),
            masters: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            made: std::sync::OnceLock::new(),
        }
    }

    /// The private folder and its askpass script, made on first use (the folders of
    /// Wavelift processes that were killed before they could remove theirs go then).
    fn ensure_private(&self) -> Result<(), ShellError> {
        let made = self.made.get_or_init(|| {
            let made = || -> std::io::Result<Option<std::fs::File>> {
                create_private_dir(&self.private)?;
                let lock = hold_lock(&self.private);
                sweep_private_dirs(&self.private);
                write_private(
                    &self.private.join("askpass"),
                    "#!/bin/sh\nprintf '%s\\n' \"$WAVELIFT_SSH_SECRET\"\n",
                    0o700,
                )?;
                Ok(lock)
            };
            made().map_err(|err| {
                format!(
                    "cannot make Wavelift's private SSH folder {}: {err}",
                    self.private.display()
                )
            })
        });
        match made {
            Ok(_) => Ok(()),
            Err(detail) => Err(ShellError::Login {
                detail: detail.clone(),
                remedy: "check the temporary folder (TMPDIR): it must be writable".to_owned(),
            }),
        }
    }

    /// The `ssh` options every connection (and a jump host's) shares.
    fn common_options(&self) -> Vec<String> {
        let mut options = vec![
            "-o".to_owned(),
            format!(
                "StrictHostKeyChecking={}",
                match self.settings.host_keys {
                    HostKeys::Strict => "yes",
                    HostKeys::AcceptNew => "accept-new",
                }
            ),
            "-o".to_owned(),
            format!(
                "ConnectTimeout={}",
                self.settings.connect_timeout.approx_seconds().max(1)
            ),
            "-o".to_owned(),
            "ServerAliveInterval=15".to_owned(),
            "-o".to_owned(),
            "ServerAliveCountMax=2".to_owned(),
            // OpenSSH's own notes ("Permanently added ...") stay out of the output.
            "-o".to_owned(),
            "LogLevel=ERROR".to_owned(),
        ];
        if let Some(file) = &self.known_hosts {
            options.push("-o".to_owned());
            options.push(format!("UserKnownHostsFile={}", option_path(file)));
            options.push("-o".to_owned());
            options.push("GlobalKnownHostsFile=/dev/null".to_owned());
        }
        options
    }

    /// How `server` logs in: the options for its credential, the secret to redact and
    /// the environment of `ssh`.
    fn login(&self, server: &Server) -> Result<Login, ShellError> {
        let mut login = Login::default();
        match &server.access.credential {
            None => login.options.extend(batch()),
            Some(CredentialRef::SshAgent) => {
                if std::env::var_os("SSH_AUTH_SOCK").is_none() {
                    return Err(ShellError::Login {
                        detail: "the credential is the ssh-agent, but SSH_AUTH_SOCK is not set in Wavelift's environment".to_owned(),
                        remedy: "start Wavelift where the agent runs (eval $(ssh-agent); ssh-add KEY), or give a key as file:PATH".to_owned(),
                    });
                }
                login.options.extend(batch());
            }
            Some(reference) => {
                let reference = &self.resolved(reference);
                let secret = reference.read().map_err(|detail| ShellError::Login {
                    detail,
                    remedy: "set the variable or create the file the credential names".to_owned(),
                })?;
                if is_private_key(&secret) {
                    let path = match reference {
                        CredentialRef::File(path) => PathBuf::from(path),
                        _ => self.key_file(&secret).map_err(|err| ShellError::Login {
                            detail: format!("cannot keep the key from {reference}: {err}"),
                            remedy: "check the temporary folder".to_owned(),
                        })?,
                    };
                    login.options.extend(batch());
                    login.options.extend([
                        "-i".to_owned(),
                        path.display().to_string().replace('%', "%%"),
                        "-o".to_owned(),
                        "IdentitiesOnly=yes".to_owned(),
                    ]);
                } else {
                    login.options.extend([
                        "-o".to_owned(),
                        "BatchMode=no".to_owned(),
                        "-o".to_owned(),
                        "PreferredAuthentications=password,keyboard-interactive".to_owned(),
                        "-o".to_owned(),
                        "PubkeyAuthentication=no".to_owned(),
                        "-o".to_owned(),
                        "NumberOfPasswordPrompts=1".to_owned(),
                    ]);
                    login.env.push((
                        "SSH_ASKPASS".to_owned(),
                        self.private.join("askpass").display().to_string(),
                    ));
                    login
                        .env
                        .push(("SSH_ASKPASS_REQUIRE".to_owned(), "force".to_owned()));
                    login
                        .env
                        .push(("WAVELIFT_SSH_SECRET".to_owned(), secret.clone()));
                    login.secrets.push(secret);
                }
                login.credential = Some(reference.to_string());
            }
        }
        Ok(login)
    }

    /// A `file:` reference with a relative path, from the configuration's folder.
    fn resolved(&self, reference: &CredentialRef) -> CredentialRef {
        match reference {
            CredentialRef::File(path) if Path::new(path).is_relative() => {
                CredentialRef::File(self.base_dir.join(path).display().to_string())
            }
            other => other.clone(),
        }
    }

    /// A key given in the environment, kept as a 0600 file for `ssh -i`.
    fn key_file(&self, key: &str) -> std::io::Result<PathBuf> {
        let path = self
            .private
            .join(format!("key-{:016x}", fnv(key.as_bytes())));
        if !path.exists() {
            let tmp = self.private.join(format!("key-{:x}.tmp", unique()));
            write_private(&tmp, &format!("{}\n", key.trim_end()), 0o600)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(path)
    }

    /// The socket of the shared login for this server with this credential: logins with
    /// another credential, another jump or other host key rules never share it.
    fn control_path(&self, server: &Server) -> PathBuf {
        let access = &server.access;
        let identity = format!(
            "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            address(server),
            access.port,
            access.user,
            access
                .credential
                .as_ref()
                .map(|c| self.resolved(c).to_string()),
            access.jump,
            self.known_hosts,
            self.settings.host_keys,
        );
        self.private
            .join(format!("c-{:016x}", fnv(identity.as_bytes())))
    }

    /// Where the jump host's `ssh` writes its errors for this server.
    fn jump_log(&self, server: &Server) -> PathBuf {
        let mut log = self.control_path(server).into_os_string();
        log.push(".jump.log");
        PathBuf::from(log)
    }

    /// The full `ssh` command line (without the remote command) for `server`.
    fn arguments(&self, server: &Server, login: &Login) -> Vec<String> {
        let mut args = vec!["-T".to_owned()];
        args.extend(self.common_options());
        let control = self.control_path(server);
        if let Ok(mut masters) = self.masters.lock() {
            masters.insert(control.clone());
        }
        args.extend([
            "-o".to_owned(),
            "ControlMaster=auto".to_owned(),
            "-o".to_owned(),
            format!("ControlPath={}", option_path(&control)),
            "-o".to_owned(),
            format!("ControlPersist={PERSIST}"),
        ]);
        args.extend(login.options.iter().cloned());
        if let Some(port) = server.access.port {
            args.extend(["-p".to_owned(), port.to_string()]);
        }
        if let Some(user) = &server.access.user {
            args.extend(["-l".to_owned(), user.clone()]);
        }
        if let Some(jump) = &server.access.jump {
            // ProxyJump would not pass the options above to the jump host, so the jump
            // is an `ssh -W` of our own with the same host key rules and credential.
            let (user, host, port) = split_jump(jump);
            // A shared login sends the jump's own errors nowhere: they go to a log.
            let mut proxy = vec![
                "ssh".to_owned(),
                "-E".to_owned(),
                self.jump_log(server).display().to_string(),
            ];
            proxy.extend(self.common_options());
            proxy.extend(login.options.iter().cloned());
            if let Some(port) = port {
                proxy.extend(["-p".to_owned(), port.to_owned()]);
            }
            if let Some(user) = user.or(server.access.user.as_deref()) {
                proxy.extend(["-l".to_owned(), user.to_owned()]);
            }
            proxy.push(host.to_owned());
            // ProxyCommand expands `%` tokens: ours are doubled, except the target's.
            let mut proxy: Vec<String> =
                proxy.iter().map(|a| quote(a).replace('%', "%%")).collect();
            let last = proxy.len() - 1;
            proxy.insert(last, "-W %h:%p".to_owned());
            args.extend(["-o".to_owned(), format!("ProxyCommand={}", proxy.join(" "))]);
        }
        args.push(address(server));
        args
    }

    async fn execute(
        &self,
        server: &Server,
        command: &str,
        input: Option<&[u8]>,
        timeout: Duration,
        capped: bool,
    ) -> Result<CommandOutput, ShellError> {
        self.ensure_private()?;
        let login = self.login(server)?;
        // ssh.command_timeout bounds a command; a transfer (the agent's copy, a restore
        // step) is bounded by its caller, for its size.
        let timeout = if capped {
            timeout.min(Duration::from_secs(
                self.settings.command_timeout.approx_seconds().max(1),
            ))
        } else {
            timeout
        };
        // The server ends the command itself when its time is up (a killed client would
        // leave it running); the client waits a little longer for the answer.
        let seconds = timeout.as_secs().max(1);
        let remote = format!(
            "if command -v timeout >/dev/null 2>&1; then exec timeout -k 5 {seconds} sh -c {q}; else exec sh -c {q}; fi",
            q = quote(command)
        );
        let _ = std::fs::remove_file(self.jump_log(server));
        let started = std::time::Instant::now();
        let mut ssh = tokio::process::Command::new("ssh");
        ssh.args(self.arguments(server, &login))
            .arg("--")
            .arg(remote)
            .stdin(if input.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in &login.env {
            ssh.env(key, value);
        }
        let mut child = ssh.spawn().map_err(|err| {
            ShellError::Spawn(format!(
                "cannot start `ssh` ({err}): install the OpenSSH client (Debian: openssh-client)"
            ))
        })?;
        if let Some(input) = input
            && let Some(mut stdin) = child.stdin.take()
        {
            // A command that does not read its input must not make this fail.
            let _ = stdin.write_all(input).await;
            drop(stdin);
        }
        let waited = timeout + Duration::from_secs(10);
        let output = match tokio::time::timeout(waited, child.wait_with_output()).await {
            Err(_) => return Err(ShellError::Timeout(timeout)),
            Ok(Err(err)) => return Err(ShellError::Spawn(err.to_string())),
            Ok(Ok(output)) => output,
        };
        let redact = |bytes: &[u8]| {
            let mut text = String::from_utf8_lossy(bytes).into_owned();
            for secret in login.secrets.iter().filter(|s| !s.is_empty()) {
                text = text.replace(secret.as_str(), "[redacted]");
            }
            text
        };
        let stdout = redact(&output.stdout);
        let stderr = redact(&output.stderr);
        let status = output.status.code().unwrap_or(-1);
        if status == 124 && started.elapsed() + Duration::from_millis(500) >= timeout {
            return Err(ShellError::Timeout(timeout));
        }
        if status == 255 {
            let jump = std::fs::read_to_string(self.jump_log(server)).unwrap_or_default();
            let known_hosts = self.known_hosts.as_deref();
            if let Some(error) = ssh_error(server, &stderr, &jump, &login, known_hosts) {
                return Err(error);
            }
        }
        Ok(CommandOutput {
            status,
            stdout,
            stderr,
        })
    }
}

impl Drop for SshShell {
    fn drop(&mut self) {
        // The shared logins end now (they hold a password in their environment), then
        // the folder with its keys goes.
        let masters = self
            .masters
            .lock()
            .map(|m| m.iter().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        for control in masters.iter().filter(|c| c.exists()) {
            let _ = std::process::Command::new("ssh")
                .arg("-o")
                .arg(format!("ControlPath={}", option_path(control)))
                .args(["-O", "exit", "wavelift"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        if self.made.get().is_some_and(Result::is_ok) {
            let _ = std::fs::remove_dir_all(&self.private);
        }
    }
}

#[async_trait]
impl RemoteShell for SshShell {
    fn is_rehearsal(&self) -> bool {
        false
    }

    async fn run(
        &self,
        server: &Server,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        self.execute(server, command, None, timeout, true).await
    }

    async fn run_root(
        &self,
        server: &Server,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        self.root(server, command, None, timeout).await
    }

    async fn run_with_input(
        &self,
        server: &Server,
        command: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        self.execute(server, command, Some(input), timeout, false)
            .await
    }

    async fn run_root_with_input(
        &self,
        server: &Server,
        command: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        self.root(server, command, Some(input), timeout).await
    }
}

impl SshShell {
    /// `command` through sudo where `access.sudo` says so, with `input` (else nothing)
    /// on its standard input.
    async fn root(
        &self,
        server: &Server,
        command: &str,
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        if !server.access.sudo {
            return self
                .execute(server, command, input, timeout, input.is_none())
                .await;
        }
        let Some(reference) = &server.access.sudo_credential else {
            let wrapped = format!("sudo -n sh -c {}", quote(command));
            return self
                .execute(server, &wrapped, input, timeout, input.is_none())
                .await;
        };
        let password = self
            .resolved(reference)
            .read()
            .map_err(|detail| ShellError::Login {
                detail,
                remedy: "set the variable or create the file access.sudo_credential names"
                    .to_owned(),
            })?;
        // sudo reads its password line from the input when it asks for one, and nothing
        // when it does not (NOPASSWD, a cached login): the command skips lines up to a
        // marker that cannot be the password, so the password never becomes its input.
        let marker = format!("--wavelift-input-{:016x}", unique());
        let body = match input {
            None => format!("exec </dev/null; {command}"),
            Some(_) => format!(
                "while IFS= read -r line; do [ \"$line\" = {marker} ] && break; done; {command}"
            ),
        };
        let wrapped = format!("sudo -S -p '' sh -c {}", quote(&body));
        let mut stdin = format!("{password}\n").into_bytes();
        if let Some(input) = input {
            stdin.extend_from_slice(marker.as_bytes());
            stdin.push(b'\n');
            stdin.extend_from_slice(input);
        }
        let mut output = self
            .execute(server, &wrapped, Some(&stdin), timeout, input.is_none())
            .await?;
        if !password.is_empty() {
            output.stdout = output.stdout.replace(&password, "[redacted]");
            output.stderr = output.stderr.replace(&password, "[redacted]");
        }
        Ok(output)
    }
}

#[derive(Default)]
struct Login {
    options: Vec<String>,
    env: Vec<(String, String)>,
    secrets: Vec<String>,
    /// The credential reference, for messages.
    credential: Option<String>,
}

/// Never ask anything: a key or the agent logs in, or the login fails.
fn batch() -> [String; 2] {
    ["-o".to_owned(), "BatchMode=yes".to_owned()]
}

fn is_private_key(secret: &str) -> bool {
    let start = secret.trim_start();
    start.starts_with("-----BEGIN ") && start.contains("PRIVATE KEY-----")
}

/// Where the server is reached: its IP address, else its FQDN, else its name.
pub fn address(server: &Server) -> String {
    if let Some(ip) = &server.ip {
        return ip.value.to_string();
    }
    if let Some(fqdn) = &server.fqdn {
        return fqdn.value.clone();
    }
    server.name.value.clone()
}

/// `user@host:port` of a jump host, each part optional but the host.
fn split_jump(jump: &str) -> (Option<&str>, &str, Option<&str>) {
    let (user, rest) = match jump.split_once('@') {
        Some((user, rest)) => (Some(user), rest),
        None => (None, jump),
    };
    if let Some(inner) = rest.strip_prefix('[')
        && let Some((host, after)) = inner.split_once(']')
    {
        return (user, host, after.strip_prefix(':'));
    }
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (user, host, Some(port)),
        _ => (user, rest, None),
    }
}

/// What `ssh`'s own failure (exit status 255) means for a user, or `None` when the
/// remote command itself exited with 255.
fn ssh_error(
    server: &Server,
    stderr: &str,
    jump_log: &str,
    login: &Login,
    known_hosts: Option<&Path>,
) -> Option<ShellError> {
    if let Some(jump) = &server.access.jump
        && !jump_log.trim().is_empty()
    {
        let said = jump_log
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("");
        let remedy = if jump_log.contains("Host key verification failed") {
            "record the jump host's key in the known_hosts file, after checking its fingerprint"
        } else if jump_log.contains("Permission denied") {
            "check that the credential may log in to the jump host too"
        } else {
            "check the jump host's address and that it may reach the server"
        };
        return Some(ShellError::Login {
            detail: format!("the jump host {jump} failed: {said}"),
            remedy: remedy.to_owned(),
        });
    }
    let target = format!(
        "{}{}",
        address(server),
        server
            .access
            .port
            .map(|p| format!(":{p}"))
            .unwrap_or_default()
    );
    let file = known_hosts
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "~/.ssh/known_hosts".to_owned());
    let last = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("")
        .to_owned();
    let login_error = |detail: String, remedy: String| Some(ShellError::Login { detail, remedy });
    if stderr.contains("IDENTIFICATION HAS CHANGED") {
        return login_error(
            format!("the host key of {target} is not the one recorded in {file}"),
            format!(
                "someone may be intercepting the connection, or the server was rebuilt: check the key with the server's owner, then replace it (ssh-keygen -R '{}' -f {file})",
                known_hosts_name(server)
            ),
        );
    }
    if stderr.contains("Host key verification failed") {
        return login_error(
            format!("{target} is not in {file} and host keys are checked strictly"),
            format!(
                "record its key after checking the fingerprint (ssh-keyscan{} {} >> {file}), or set ssh.host_keys: accept-new in wavelift.yaml",
                server
                    .access
                    .port
                    .map(|p| format!(" -p {p}"))
                    .unwrap_or_default(),
                address(server)
            ),
        );
    }
    if stderr.contains("Permission denied") {
        let user = server
            .access
            .user
            .as_deref()
            .unwrap_or("(the local account name)");
        let with = login
            .credential
            .as_deref()
            .map(|c| format!("the credential {c}"))
            .unwrap_or_else(|| "the default keys and the ssh-agent".to_owned());
        return login_error(
            format!("{target} refused the login of {user} with {with}: {last}"),
            "check access.user and access.credential, and that the key is in the account's authorized_keys".to_owned(),
        );
    }
    if stderr.contains("UNPROTECTED PRIVATE KEY FILE") || stderr.contains("bad permissions") {
        return login_error(
            format!("OpenSSH refuses the key file: {last}"),
            "make the key readable by its owner only (chmod 600 FILE)".to_owned(),
        );
    }
    if stderr.contains("Connection refused") {
        return login_error(
            format!("cannot connect to {target}: connection refused"),
            "check that sshd runs and listens there (access.port)".to_owned(),
        );
    }
    if stderr.contains("timed out") {
        return login_error(
            format!("{target} did not answer: {last}"),
            "check the address, the route and the firewalls between Wavelift and the server"
                .to_owned(),
        );
    }
    if stderr.contains("Could not resolve hostname") {
        return login_error(
            format!("{target} does not resolve: {last}"),
            "check the server's fqdn or give its ip".to_owned(),
        );
    }
    if stderr.contains("Connection closed") || stderr.contains("kex_exchange_identification") {
        return login_error(
            format!("{target} closed the connection: {last}"),
            "check sshd's logs on the server (MaxStartups, AllowUsers, a firewall)".to_owned(),
        );
    }
    // Anything else `ssh` itself says (no route, no common algorithm, ...), or nothing.
    let from_ssh = last.is_empty()
        || last.starts_with("ssh:")
        || last.contains("Unable to negotiate")
        || last.contains("unreachable")
        || last.contains("No route")
        || last.contains("ControlPath");
    if from_ssh {
        let said = if last.is_empty() {
            "ssh ended without a message".to_owned()
        } else {
            last
        };
        return login_error(
            format!("cannot log in to {target}: {said}"),
            "check the server's address, port and sshd, and the network between Wavelift and it"
                .to_owned(),
        );
    }
    None
}

/// How OpenSSH names the server in known_hosts.
fn known_hosts_name(server: &Server) -> String {
    match server.access.port {
        Some(port) if port != 22 => format!("[{}]:{port}", address(server)),
        _ => address(server),
    }
}

/// A word for a POSIX shell: single-quoted unless plainly safe.
pub fn quote(text: &str) -> String {
    let safe = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%,+".contains(&b));
    if safe {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (u64::from(nanos) << 16) | NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A folder only this process's account can enter; an existing one is refused.
#[cfg(unix)]
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

/// The private folder's lock file, locked (flock) while the process lives: how a later
/// process tells a folder in use from one a killed process left. Best effort: `None`
/// when it cannot be made.
fn hold_lock(private: &Path) -> Option<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let file = options.open(private.join("lock")).ok()?;
    file.lock().ok()?;
    Some(file)
}

/// Removes the private folders beside `own` (`wl-ssh-PID-N`) that no live process
/// holds, made by the same user: a process killed with SIGKILL leaves its askpass
/// script and the sockets of its logins behind. A folder is in use while its lock file
/// is locked (whatever process namespace its owner is in); one without a lock file is
/// taken for left behind only when an hour old and its process is gone from /proc.
/// Best effort: what cannot be read or removed stays.
#[cfg(unix)]
fn sweep_private_dirs(own: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let (Some(parent), Ok(mine)) = (own.parent(), std::fs::symlink_metadata(own)) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let proc_fs = Path::new("/proc/self").exists();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("wl-ssh-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if path == own || !meta.is_dir() || meta.uid() != mine.uid() {
            continue;
        }
        let stale = match std::fs::File::open(path.join("lock")) {
            // Nobody holds it: its process is gone (the lock ends with it).
            Ok(lock) => lock.try_lock().is_ok(),
            Err(_) => {
                let old = meta
                    .modified()
                    .ok()
                    .and_then(|at| at.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(3600));
                old && proc_fs && !Path::new(&format!("/proc/{pid}")).exists()
            }
        };
        if stale {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[cfg(not(unix))]
fn sweep_private_dirs(_own: &Path) {}

#[cfg(not(unix))]
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir(path)
}

/// A new file with this mode from the start (never readable by others, even briefly).
fn write_private(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)?.write_all(text.as_bytes())
}

/// A path as an `ssh -o` value: quoted (spaces), `%` doubled (OpenSSH's tokens).
fn option_path(path: &Path) -> String {
    format!("\"{}\"", path.display().to_string().replace('%', "%%"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_folders_nobody_holds_are_swept_and_the_others_kept() {
        let parent = std::env::temp_dir().join(format!("wl-sweep-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        create_private_dir(&parent).expect("the test's folder");
        let own = parent.join(format!("wl-ssh-{}-1", std::process::id()));
        let left = parent.join("wl-ssh-4000001-2");
        let held = parent.join("wl-ssh-4000002-3");
        let young = parent.join("wl-ssh-4000003-4");
        let other = parent.join("not-ours-4000001-5");
        for dir in [&own, &left, &held, &young, &other] {
            create_private_dir(dir).expect("a folder");
        }
        // `left`: its process died, its lock file is free; `held`: a live process (this
        // test) holds its lock; `young`: no lock file yet, just made.
        drop(hold_lock(&left));
        let holding = hold_lock(&held).expect("a lock");
        write_private(&left.join("askpass"), "secret", 0o700).expect("a file");
        sweep_private_dirs(&own);
        assert!(!left.exists(), "a folder nobody holds is removed");
        assert!(held.exists(), "a folder whose lock is held stays");
        assert!(young.exists() && own.exists() && other.exists());
        drop(holding);
        let _ = std::fs::remove_dir_all(&parent);
    }

    #[test]
    fn words_are_quoted_for_the_remote_shell() {
        assert_eq!(quote("df"), "df");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$(reboot)"), "'$(reboot)'");
    }

    #[test]
    fn a_jump_host_is_user_host_and_port() {
        assert_eq!(split_jump("bastion"), (None, "bastion", None));
        assert_eq!(
            split_jump("ops@bastion:2222"),
            (Some("ops"), "bastion", Some("2222"))
        );
        assert_eq!(
            split_jump("[fd00::1]:2200"),
            (None, "fd00::1", Some("2200"))
        );
        assert_eq!(split_jump("fd00::1"), (None, "fd00::1", None));
    }

    #[test]
    fn a_private_key_is_told_from_a_password() {
        assert!(is_private_key(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----"
        ));
        assert!(is_private_key("-----BEGIN RSA PRIVATE KEY-----\n"));
        assert!(!is_private_key("correct horse battery staple"));
        assert!(!is_private_key("-----BEGIN CERTIFICATE-----"));
    }
}
