//! How commands reach a source server. This version has the `local` kind (commands on
//! this machine, for the quickstart) and the rehearsal shell (nothing runs; rehearsals
//! never touch a server). SSH and WinRM arrive with their issue.

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
                "server `{}` is reached over {}, which this version of Wavelift cannot do yet: \
                 use `access: {{method: local}}` for servers on this machine, or rehearse the wave",
                server.name.value, server.access.method
            )));
        }
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(timeout, child).await {
            Err(_) => Err(ShellError::Timeout(timeout)),
            Ok(Err(err)) => Err(ShellError::Spawn(err.to_string())),
            Ok(Ok(output)) => Ok(CommandOutput {
                status: output.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }),
        }
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
