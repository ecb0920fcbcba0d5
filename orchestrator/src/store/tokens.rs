//! API tokens: stored as the SHA-256 of the token, with a name and a role.

use sea_orm::{ConnectionTrait, FromQueryResult};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::Store;

/// What a token may do. Every role may read; the others add their levers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads every page and every API resource
    Viewer,
    /// And retries, skips and cancels tasks
    Operator,
    /// And gives the go for cutovers (approve)
    Approver,
    /// Everything
    Admin,
}

/// A lever a route pulls; each role holds some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    Steer,
    Approve,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [Role::Viewer, Role::Operator, Role::Approver, Role::Admin]
            .into_iter()
            .find(|r| r.name() == text)
    }

    pub fn may(self, permission: Permission) -> bool {
        matches!(
            (self, permission),
            (_, Permission::Read)
                | (Role::Admin, _)
                | (Role::Operator, Permission::Steer)
                | (Role::Approver, Permission::Approve)
        )
    }
}

#[derive(Debug, Clone, PartialEq, FromQueryResult, Serialize)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// The stored form of a token.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Makes a token for `name` with `role`; returns its id and the token, which is not
    /// stored and cannot be shown again.
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        now: i64,
    ) -> anyhow::Result<(i64, String)> {
        // The token's name is who acts in the job progress log.
        super::steer::check_given("a token's name", name, super::steer::MAX_NAME)?;
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let token = format!(
            "wl_{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let row = self
            .db()
            .query_one_raw(self.stmt(
                "INSERT INTO api_tokens (name, role, hash, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                vec![name.into(), role.name().into(), token_hash(&token).into(), now.into()],
            ))
            .await?
            .ok_or_else(|| anyhow::anyhow!("the token was not stored"))?;
        Ok((row.try_get("", "id")?, token))
    }

    /// The token's name and role, if it is known and not revoked.
    pub async fn token_identity(&self, token: &str) -> anyhow::Result<Option<(String, Role)>> {
        self.token_identity_by_hash(&token_hash(token)).await
    }

    /// Like [`Store::token_identity`], from the token's stored hash (a session keeps it,
    /// so revoking the token ends the sessions made with it).
    pub async fn token_identity_by_hash(
        &self,
        hash: &str,
    ) -> anyhow::Result<Option<(String, Role)>> {
        let row = self
            .db()
            .query_one_raw(self.stmt(
                "SELECT name, role FROM api_tokens WHERE hash = ? AND revoked_at IS NULL",
                vec![hash.into()],
            ))
            .await?;
        let Some(row) = row else { return Ok(None) };
        let name: String = row.try_get("", "name")?;
        let role: String = row.try_get("", "role")?;
        Ok(Role::parse(&role).map(|role| (name, role)))
    }

    pub async fn tokens(&self) -> anyhow::Result<Vec<TokenRow>> {
        let rows = self
            .db()
            .query_all_raw(self.stmt(
                "SELECT id, name, role, created_at, revoked_at FROM api_tokens ORDER BY id",
                vec![],
            ))
            .await?;
        Ok(rows
            .iter()
            .map(|row| TokenRow::from_query_result(row, ""))
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// Revokes a token; false when there is no such token or it was revoked already.
    pub async fn revoke_token(&self, id: i64, now: i64) -> anyhow::Result<bool> {
        let result = self
            .db()
            .execute_raw(self.stmt(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                vec![now.into(), id.into()],
            ))
            .await?;
        Ok(result.rows_affected() == 1)
    }
}
