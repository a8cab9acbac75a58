//! The embedded database: one redb file under the data directory holding the
//! resources applied through the API, the creation order of resources
//! seen in the config directory (their content stays in the files), and
//! the workload registrations (so a restart serves them at once).

use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::StoreError;

/// `kind/namespace/name` -> [`Record`] as JSON.
const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
/// `kind/namespace/name` -> [`Seen`] as JSON, for config-directory resources.
const FILE_SEEN: TableDefinition<&str, &[u8]> = TableDefinition::new("file_seen");
/// Counters, e.g. `next_order`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Node id -> the registration as `registry::encode` wrote it.
const REGISTRATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("registrations");

/// A resource applied through the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The document as applied.
    pub document: Value,
    /// Always `api` today; kept so other writers (e.g. `trellis up`) can say who they are.
    #[serde(default = "api_source")]
    pub source: String,
    pub generation: u64,
    pub created_ms: u64,
    pub order: u64,
}

fn api_source() -> String {
    super::API_SOURCE.to_string()
}

/// Bookkeeping for a resource read from the config directory, so that its
/// creation order (who wins a conflict) and generation survive restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    pub source: String,
    pub order: u64,
    pub created_ms: u64,
    pub generation: u64,
    /// FNV-1a of the document's JSON: a change bumps the generation.
    pub hash: u64,
}

/// Everything in the database, read once at start.
#[derive(Debug, Default)]
pub struct Contents {
    pub resources: Vec<(String, Record)>,
    pub seen: Vec<(String, Seen)>,
    pub next_order: u64,
}

/// One atomic change.
#[derive(Debug, Default)]
pub struct Batch {
    pub put: Vec<(String, Record)>,
    pub delete: Vec<String>,
    pub seen_put: Vec<(String, Seen)>,
    pub seen_delete: Vec<String>,
    pub next_order: Option<u64>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty()
            && self.delete.is_empty()
            && self.seen_put.is_empty()
            && self.seen_delete.is_empty()
            && self.next_order.is_none()
    }
}

pub struct Db {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Open (or create) the database file, readable by its owner only.
    pub fn open(path: &Path) -> Result<Db, StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        // Create it 0600 ourselves: redb would create it with the umask's mode.
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                path: path.to_path_buf(),
            },
            e => StoreError::storage(path, e),
        })?;
        let me = Db {
            db,
            path: path.to_path_buf(),
        };
        // Make sure every table exists, so reads never meet a missing one.
        me.commit(Batch::default())?;
        Ok(me)
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::storage(&self.path, e)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read_all(&self) -> Result<Contents, StoreError> {
        let txn = self.db.begin_read().map_err(|x| self.err(x))?;
        let mut out = Contents::default();
        let table = txn.open_table(RESOURCES).map_err(|x| self.err(x))?;
        for item in table.iter().map_err(|x| self.err(x))? {
            let (k, v) = item.map_err(|x| self.err(x))?;
            let record: Record =
                serde_json::from_slice(v.value()).map_err(|err| StoreError::Corrupt {
                    key: k.value().to_string(),
                    reason: err.to_string(),
                })?;
            out.resources.push((k.value().to_string(), record));
        }
        let table = txn.open_table(FILE_SEEN).map_err(|x| self.err(x))?;
        for item in table.iter().map_err(|x| self.err(x))? {
            let (k, v) = item.map_err(|x| self.err(x))?;
            // Bookkeeping only: an unreadable record is forgotten, not fatal.
            if let Ok(seen) = serde_json::from_slice::<Seen>(v.value()) {
                out.seen.push((k.value().to_string(), seen));
            }
        }
        let table = txn.open_table(META).map_err(|x| self.err(x))?;
        out.next_order = table
            .get("next_order")
            .map_err(|x| self.err(x))?
            .map_or(1, |v| v.value());
        Ok(out)
    }

    /// Apply one batch in a single transaction: all of it or nothing.
    pub fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|x| self.err(x))?;
        {
            let mut t = txn.open_table(RESOURCES).map_err(|x| self.err(x))?;
            for (k, r) in &batch.put {
                let bytes = serde_json::to_vec(r).map_err(|err| StoreError::Corrupt {
                    key: k.clone(),
                    reason: err.to_string(),
                })?;
                t.insert(k.as_str(), bytes.as_slice())
                    .map_err(|x| self.err(x))?;
            }
            for k in &batch.delete {
                t.remove(k.as_str()).map_err(|x| self.err(x))?;
            }
            let mut t = txn.open_table(FILE_SEEN).map_err(|x| self.err(x))?;
            for (k, s) in &batch.seen_put {
                let bytes = serde_json::to_vec(s).map_err(|err| StoreError::Corrupt {
                    key: k.clone(),
                    reason: err.to_string(),
                })?;
                t.insert(k.as_str(), bytes.as_slice())
                    .map_err(|x| self.err(x))?;
            }
            for k in &batch.seen_delete {
                t.remove(k.as_str()).map_err(|x| self.err(x))?;
            }
            let mut t = txn.open_table(META).map_err(|x| self.err(x))?;
            if let Some(n) = batch.next_order {
                t.insert("next_order", n).map_err(|x| self.err(x))?;
            }
            // Opened so that it exists (the first commit is at open).
            txn.open_table(REGISTRATIONS).map_err(|x| self.err(x))?;
        }
        txn.commit().map_err(|x| self.err(x))?;
        Ok(())
    }

    /// Every stored registration: (node id, bytes).
    pub fn read_registrations(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(|x| self.err(x))?;
        let table = txn.open_table(REGISTRATIONS).map_err(|x| self.err(x))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|x| self.err(x))? {
            let (k, v) = item.map_err(|x| self.err(x))?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Writes (Some) or deletes (None) registrations, in one transaction.
    pub fn commit_registrations(
        &self,
        changes: &[(String, Option<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|x| self.err(x))?;
        {
            let mut t = txn.open_table(REGISTRATIONS).map_err(|x| self.err(x))?;
            for (k, v) in changes {
                match v {
                    Some(bytes) => t.insert(k.as_str(), bytes.as_slice()).map(drop),
                    None => t.remove(k.as_str()).map(drop),
                }
                .map_err(|x| self.err(x))?;
            }
        }
        txn.commit().map_err(|x| self.err(x))?;
        Ok(())
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms (std's hasher is not
/// promised to be), for telling whether a file's resource changed.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
