//! `wavelift token create|list|revoke`: API tokens for the dashboard and the API. A token
//! is printed once, when it is made; the store keeps only its SHA-256.

use std::process::ExitCode;

use super::state::StateArgs;
use crate::store::Role;

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (once)
    Create {
        /// What it may do
        #[arg(long, value_enum)]
        role: Role,
        /// Whose it is: shown in the log of what it approves or steers (default: $USER)
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Every token: id, name, role, when made, whether revoked
    List {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Revoke a token by its id (see `list`)
    Revoke {
        id: i64,
        #[command(flatten)]
        state: StateArgs,
    },
}

pub async fn run(command: &TokenCommand) -> anyhow::Result<ExitCode> {
    let now = jiff::Timestamp::now().as_millisecond();
    match command {
        TokenCommand::Create { role, name, state } => {
            let store = state.open_existing().await?;
            let name = super::state::operator(name.as_deref())?;
            let (id, token) = store.create_token(&name, *role, now).await?;
            eprintln!(
                "token {id} for {name}, role {}: shown once, keep it now",
                role.name()
            );
            outln!("{token}");
        }
        TokenCommand::List { state } => {
            let store = state.open_existing().await?;
            for t in store.tokens().await? {
                let made = crate::scheduler::clock::timestamp(t.created_at);
                let revoked = t
                    .revoked_at
                    .map(|r| format!(", revoked {}", crate::scheduler::clock::timestamp(r)))
                    .unwrap_or_default();
                outln!("{}  {}  {}  made {made}{revoked}", t.id, t.name, t.role);
            }
        }
        TokenCommand::Revoke { id, state } => {
            let store = state.open_existing().await?;
            if !store.revoke_token(*id, now).await? {
                if store.tokens().await?.iter().any(|t| t.id == *id) {
                    anyhow::bail!("token {id} is revoked already (see wavelift token list)");
                }
                anyhow::bail!("no token {id} to revoke (see wavelift token list)");
            }
            outln!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
