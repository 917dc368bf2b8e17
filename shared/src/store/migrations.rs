//! Reversible migrations, embedded in the binary: `migrations/postgres` and
//! `migrations/sqlite` hold the same schema in each dialect. Applied by the harness at
//! start and by `local-dev migrate`; a Lambda never migrates on a cold start.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migrate, Migration, MigrationType, Migrator};

use super::{Database, StoreError};

/// (version, description, up, down) for each dialect, oldest first.
type Script = (i64, &'static str, &'static str, &'static str);

const POSTGRES: &[Script] = &[
    (
        1,
        "init",
        include_str!("../../../migrations/postgres/0001_init.up.sql"),
        include_str!("../../../migrations/postgres/0001_init.down.sql"),
    ),
    (
        2,
        "spirit turns",
        include_str!("../../../migrations/postgres/0002_spirit_turns.up.sql"),
        include_str!("../../../migrations/postgres/0002_spirit_turns.down.sql"),
    ),
    (
        3,
        "turn functions",
        include_str!("../../../migrations/postgres/0003_turn_functions.up.sql"),
        include_str!("../../../migrations/postgres/0003_turn_functions.down.sql"),
    ),
    (
        4,
        "claim with history",
        include_str!("../../../migrations/postgres/0004_claim_with_history.up.sql"),
        include_str!("../../../migrations/postgres/0004_claim_with_history.down.sql"),
    ),
];

#[cfg(feature = "sqlite")]
const SQLITE: &[Script] = &[
    (
        1,
        "init",
        include_str!("../../../migrations/sqlite/0001_init.up.sql"),
        include_str!("../../../migrations/sqlite/0001_init.down.sql"),
    ),
    (
        2,
        "spirit turns",
        include_str!("../../../migrations/sqlite/0002_spirit_turns.up.sql"),
        include_str!("../../../migrations/sqlite/0002_spirit_turns.down.sql"),
    ),
];

fn migrator(scripts: &[Script]) -> Migrator {
    let migrations = scripts
        .iter()
        .flat_map(|&(version, description, up, down)| {
            [
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::ReversibleUp,
                    up.into_sql_str(),
                    false,
                ),
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::ReversibleDown,
                    down.into_sql_str(),
                    false,
                ),
            ]
        })
        .collect();
    Migrator::with_migrations(migrations)
}

/// What `migrate up|down|status` (the harness CLI and the `migrate` Lambda) can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationAction {
    Up,
    Down,
    Status,
}

/// The outcome, for people (its `Display`) and for the Lambda's JSON answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationReport {
    pub applied: Vec<i64>,
    pub reverted: Vec<i64>,
    pub migrations: Vec<MigrationStatus>,
}

impl std::fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for version in &self.applied {
            writeln!(f, "applied {version:04}")?;
        }
        for version in &self.reverted {
            writeln!(f, "reverted {version:04}")?;
        }
        for m in &self.migrations {
            let state = match m.state {
                MigrationState::Applied => "applied",
                MigrationState::Pending => "pending",
            };
            writeln!(f, "{:04} {state:<8} {}", m.version, m.description)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationState {
    Applied,
    Pending,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub state: MigrationState,
}

fn migrate_err(err: sqlx::migrate::MigrateError) -> StoreError {
    match err {
        sqlx::migrate::MigrateError::Execute(inner) => StoreError::from(inner),
        other => StoreError::Internal(other.to_string()),
    }
}

impl Database {
    fn migrator(&self) -> Migrator {
        match self {
            Self::Postgres(_) => migrator(POSTGRES),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => migrator(SQLITE),
        }
    }

    /// Runs one migration command and reports the state afterwards.
    pub async fn migrate(&self, action: MigrationAction) -> Result<MigrationReport, StoreError> {
        let (applied, reverted) = match action {
            MigrationAction::Up => (self.migrate_up().await?, Vec::new()),
            MigrationAction::Down => (Vec::new(), self.migrate_down().await?.into_iter().collect()),
            MigrationAction::Status => (Vec::new(), Vec::new()),
        };
        Ok(MigrationReport {
            applied,
            reverted,
            migrations: self.migration_status().await?,
        })
    }

    /// Applies every pending migration; returns the versions it applied.
    pub async fn migrate_up(&self) -> Result<Vec<i64>, StoreError> {
        let before = self.applied_versions().await?;
        let migrator = self.migrator();
        match self {
            Self::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                let ran = migrator.run(&mut *conn).await;
                if ran.is_ok() {
                    conn.release();
                }
                ran
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite(pool) => migrator.run(pool).await,
        }
        .map_err(migrate_err)?;
        let after = self.applied_versions().await?;
        Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
    }

    /// Reverts the newest applied migration; returns its version, or `None` if none was.
    pub async fn migrate_down(&self) -> Result<Option<i64>, StoreError> {
        let applied = self.applied_versions().await?;
        let Some(&newest) = applied.last() else {
            return Ok(None);
        };
        let target = applied.iter().rev().nth(1).copied().unwrap_or(0);
        let migrator = self.migrator();
        match self {
            Self::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                let undone = migrator.undo(&mut *conn, target).await;
                if undone.is_ok() {
                    conn.release();
                }
                undone
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite(pool) => migrator.undo(pool, target).await,
        }
        .map_err(migrate_err)?;
        Ok(Some(newest))
    }

    /// Every known migration and whether it is applied, oldest first.
    pub async fn migration_status(&self) -> Result<Vec<MigrationStatus>, StoreError> {
        let applied = self.applied_versions().await?;
        Ok(self
            .migrator()
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| MigrationStatus {
                version: m.version,
                description: m.description.to_string(),
                state: if applied.contains(&m.version) {
                    MigrationState::Applied
                } else {
                    MigrationState::Pending
                },
            })
            .collect())
    }

    async fn applied_versions(&self) -> Result<Vec<i64>, StoreError> {
        const TABLE: &str = "_sqlx_migrations";
        let mut versions: Vec<i64> = match self {
            Self::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                conn.ensure_migrations_table(TABLE)
                    .await
                    .map_err(migrate_err)?;
                let applied = conn
                    .list_applied_migrations(TABLE)
                    .await
                    .map_err(migrate_err)?;
                conn.release();
                applied
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                conn.ensure_migrations_table(TABLE)
                    .await
                    .map_err(migrate_err)?;
                conn.list_applied_migrations(TABLE)
                    .await
                    .map_err(migrate_err)?
            }
        }
        .into_iter()
        .map(|m| m.version)
        .collect();
        versions.sort_unstable();
        Ok(versions)
    }
}
