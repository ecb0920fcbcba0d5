//! How commands reach a source server: `local` (commands on this machine, for the
//! quickstart), `ssh` (the system's OpenSSH client, see [`crate::ssh`]), and the
//! rehearsal shell (nothing runs; rehearsals never touch a server). [`AccessShell`] picks
//! by each server's `access.method`. Windows servers are not reached yet (WinRM, or
//! OpenSSH for Windows with PowerShell checks, is still to come).

use std::time::Duration;

use async_trait::async_trait;
use waves::model::{AccessMethod, Server};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    #[error("{0}")]
    Unavailable(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot run the command: {0}")]
    Spawn(String),
    /// The login failed: what happened, and what to do about it.
    #[error("{detail}")]
    Login { detail: String, remedy: String },
}

impl ShellError {
    /// What a user should do about it.
    pub fn remedy(&self) -> &str {
        match self {
            ShellError::Login { remedy, .. } => remedy,
            ShellError::Timeout(_) => {
                "the server did not answer in time: check it (load, a hung mount, a login script that waits), or raise ssh.command_timeout in wavelift.yaml"
            }
            ShellError::Unavailable(_) | ShellError::Spawn(_) => {
                "check the server's access settings and credential"
            }
        }
    }
}

#[async_trait]
pub trait RemoteShell: Send + Sync {
    /// True for the rehearsal shell: tasks report what they would check instead.
    fn is_rehearsal(&self) -> bool;

    async fn run(
        &self,
        server: &Server,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError>;

    /// Runs `command` as root where the server's access says so (`access.sudo`, with
    /// the password of `access.sudo_credential` when sudo asks for one); as the login
    /// account otherwise.
    async fn run_root(
        &self,
        server: &Server,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        self.run(server, command, timeout).await
    }

    /// Runs `command` with `input` on its standard input: how a secret (an agent's
    /// token) reaches the server without appearing on any command line.
    async fn run_with_input(
        &self,
        server: &Server,
        command: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        let _ = (command, input, timeout);
        Err(ShellError::Unavailable(format!(
            "server `{}`: this shell cannot pass input to a command",
            server.name.value
        )))
    }

    /// [`RemoteShell::run_with_input`] as root where the server's access says so (as
    /// [`RemoteShell::run_root`]): how the agent, which reads block devices, is installed.
    async fn run_root_with_input(
        &self,
        server: &Server,
        command: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        self.run_with_input(server, command, input, timeout).await
    }
}

/// The shell of each server's access method: local or SSH.
pub struct AccessShell {
    pub local: LocalShell,
    pub ssh: crate::ssh::SshShell,
}

impl AccessShell {
    fn pick(&self, server: &Server) -> Result<&dyn RemoteShell, ShellError> {
        match server.access.method {
            AccessMethod::Local => Ok(&self.local),
            AccessMethod::Ssh => Ok(&self.ssh),
            AccessMethod::Winrm => Err(ShellError::Unavailable(format!(
                "server `{}` is reached over WinRM: this version of Wavelift reaches no Windows server (neither WinRM nor OpenSSH for Windows): check it by hand and skip its prereq_check, or rehearse the wave",
                server.name.value
            ))),
        }
    }
}

#[async_trait]
impl RemoteShell for AccessShell {
    fn is_rehearsal(&self) -> bool {
        false
    }

    async fn run(
        &self,
        server: &Server,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        self.pick(server)?.run(server, command, timeout).await
    }

    async fn run_root(
        &self,
        server: &Server,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        self.pick(server)?.run_root(server, command, timeout).await
    }

    async fn run_with_input(
        &self,
        server: &Server,
        command: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        self.pick(server)?
            .run_with_input(server, command, input, timeout)
            .await
    }

    async fn run_root_with_input(
        &self,
        server: &Server,
        command: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        self.pick(server)?
            .run_root_with_input(server, command, input, timeout)
            .await
    }
}

/// Runs commands on this machine, for servers whose access method is `local`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalShell;

#[async_trait]
impl RemoteShell for LocalShell {
    fn is_rehearsal(&self) -> bool {
        false
    }

    async fn run(
        &self,
        server: &Server,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        if server.access.method != AccessMethod::Local {
            return Err(ShellError::Unavailable(format!(
                "server `{}` is reached over {}, not on this machine",
                server.name.value, server.access.method
            )));
        }
        local_sh(command, None, timeout).await
    }

    async fn run_with_input(
        &self,
        server: &Server,
        command: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        if server.access.method != AccessMethod::Local {
            return Err(ShellError::Unavailable(format!(
                "server `{}` is reached over {}, not on this machine",
                server.name.value, server.access.method
            )));
        }
        local_sh(command, Some(input), timeout).await
    }
}

/// `sh -c command` on this machine, with `input` on its standard input (else none).
async fn local_sh(
    command: &str,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<CommandOutput, ShellError> {
    use tokio::io::AsyncWriteExt as _;
    let run = async {
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(if input.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
            // A command that stops reading (it failed early) says why on its stderr:
            // the broken pipe is not the story.
            let _ = stdin.write_all(bytes).await;
        }
        child.wait_with_output().await
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(ShellError::Timeout(timeout)),
        Ok(Err(err)) => Err(ShellError::Spawn(err.to_string())),
        Ok(Ok(output)) => Ok(CommandOutput {
            status: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }),
    }
}

/// The rehearsal shell runs nothing: a rehearsal never touches a server.
#[derive(Debug, Default, Clone, Copy)]
pub struct RehearsalShell;

#[async_trait]
impl RemoteShell for RehearsalShell {
    fn is_rehearsal(&self) -> bool {
        true
    }

    async fn run(
        &self,
        server: &Server,
        command: &str,
        _timeout: Duration,
    ) -> Result<CommandOutput, ShellError> {
        Ok(CommandOutput {
            status: 0,
            stdout: format!("rehearsal: `{command}` not run on {}", server.name.value),
            stderr: String::new(),
        })
    }
}
