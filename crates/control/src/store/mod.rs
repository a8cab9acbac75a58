//! The config store: the resources applied through the API (persisted in
//! redb) plus those of the watched config directory, and the effective set
//! computed from both.
//!
//! Every change (apply, delete, a config-directory edit) is checked before it
//! is accepted: conflicts are resolved ([`trellis_model::conflict::resolve`]:
//! the oldest wins), and the resolved set must pass the same validation as
//! the standalone proxy's. A rejected change returns every error and changes
//! nothing, in memory or on disk. An accepted one is written in one
//! transaction, then published as a new [`Snapshot`] on a watch channel that
//! the xDS server subscribes to.
//!
//! Not thread-safe by itself: the control plane keeps it behind a mutex, and
//! changes are serialized there.

mod db;
mod key;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use trellis_model::conflict::{self, Conflict, ResourceRef};
use trellis_model::validate::{Validated, validate};
use trellis_model::{ConfigError, ConfigErrors, Document, ResourceSet};

pub use db::{Batch, Db, Record, Seen, fnv1a};
pub use key::{API_SOURCE, Entry, Key, ProxyRef, Status};

use crate::metrics::Metrics;

/// Why the store refused a change or could not do its job. Messages are for
/// operators: what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{summary}")]
    Invalid {
        summary: String,
        errors: ConfigErrors,
    },
    #[error("{key} not found")]
    NotFound { key: Key },
    #[error(
        "{key} is defined in the config directory ({file}); change or delete it there, not through the API"
    )]
    ManagedByFile { key: Key, file: String },
    #[error(
        "the store {} is in use by another `trellis control`; stop it, or give this one another --data-dir",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error("cannot use the store {}: {source}", path.display())]
    Storage {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("cannot use {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stored resource {key} cannot be read: {reason}")]
    Corrupt { key: String, reason: String },
}

impl StoreError {
    fn storage(path: &Path, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Storage {
            path: path.to_path_buf(),
            source: e.into(),
        }
    }

    fn invalid(summary: impl Into<String>, errors: ConfigErrors) -> StoreError {
        StoreError::Invalid {
            summary: summary.into(),
            errors,
        }
    }

    /// The config errors behind a rejection, if it was one.
    pub fn details(&self) -> &[ConfigError] {
        match self {
            StoreError::Invalid { errors, .. } => &errors.0,
            _ => &[],
        }
    }
}

/// The effective config at one point in time: what proxies should get.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Bumped by every accepted change; 1 is the config at start.
    pub generation: u64,
    /// The effective resources: conflicts resolved, ordered oldest first.
    pub resources: ResourceSet,
    /// The same, validated and indexed by host.
    pub validated: Validated,
    /// Every conflict, including API resources shadowed by config-directory
    /// files of the same kind, namespace and name.
    pub conflicts: Vec<Conflict>,
}

/// One resource of an apply: the file (or name) it came from, and the document.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub file: String,
    pub doc: Document,
}

/// What an apply did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
        })
    }
}

/// The result of an apply for one resource.
#[derive(Debug, Clone)]
pub struct Applied {
    pub key: Key,
    pub action: Action,
    pub status: Status,
}

/// What a config-directory reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilesChange {
    pub created: Vec<Key>,
    pub configured: Vec<Key>,
    pub deleted: Vec<Key>,
}

impl FilesChange {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.configured.is_empty() && self.deleted.is_empty()
    }
}

pub struct Store {
    db: Db,
    api: BTreeMap<Key, Entry>,
    files: BTreeMap<Key, Entry>,
    next_order: u64,
    current: Arc<Snapshot>,
    publish: watch::Sender<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    /// The last config-directory change that was rejected, until one is accepted.
    file_errors: Option<ConfigErrors>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("db", &self.db)
            .field("api", &self.api.len())
            .field("files", &self.files.len())
            .field("generation", &self.current.generation)
            .finish()
    }
}

impl Store {
    /// Open the database at `db_path` and combine what it holds with the
    /// config directory's resources (`files`, None without a directory).
    /// Fails if the two together do not validate: nothing starts on a config
    /// the proxies could not be given.
    pub fn open(
        db_path: &Path,
        files: Option<Vec<Document>>,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        let db = Db::open(db_path)?;
        let contents = db.read_all()?;
        let mut api = BTreeMap::new();
        for (k, record) in contents.resources {
            let key = Key::parse_db_key(&k).ok_or_else(|| StoreError::Corrupt {
                key: k.clone(),
                reason: "not a kind/namespace/name key".into(),
            })?;
            let resource = trellis_model::load::from_json(API_SOURCE, record.document.clone())
                .map_err(|e| StoreError::Corrupt {
                    key: k.clone(),
                    reason: format!("{}: {}", e.field, e.reason),
                })?;
            api.insert(
                key.clone(),
                Entry {
                    key,
                    resource,
                    document: record.document,
                    generation: record.generation,
                    created_ms: record.created_ms,
                    order: record.order,
                },
            );
        }
        let seen: BTreeMap<String, Seen> = contents.seen.into_iter().collect();
        let mut store = Store {
            db,
            api,
            files: BTreeMap::new(),
            next_order: contents.next_order.max(1),
            current: Arc::new(Snapshot::default()),
            publish: watch::Sender::new(Arc::new(Snapshot::default())),
            metrics,
            file_errors: None,
        };
        let mut batch = Batch::default();
        if let Some(docs) = files {
            let (files, _) = store.file_entries(docs, &seen, &mut batch)?;
            store.files = files;
        }
        // Forget bookkeeping of file resources that are gone.
        for k in seen.keys() {
            if Key::parse_db_key(k).is_none_or(|key| !store.files.contains_key(&key)) {
                batch.seen_delete.push(k.clone());
            }
        }
        let all: BTreeSet<Key> = store.files.keys().cloned().collect();
        let snapshot = evaluate(&store.api, &store.files, &all)
            .map_err(|errors| StoreError::invalid(format!("the stored resources and the config directory do not validate together: {errors}"), errors))?;
        batch.next_order = Some(store.next_order);
        store.db.commit(batch)?;
        store.install(snapshot);
        Ok(store)
    }

    /// A receiver of every new effective config: the xDS server's input.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.publish.subscribe()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.clone()
    }

    pub fn db_path(&self) -> &Path {
        self.db.path()
    }

    /// The workload registrations stored by [`Store::save_registrations`]:
    /// (node id, the registry's encoding). Read once, at start.
    pub fn registrations(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.db.read_registrations()
    }

    /// Writes (Some) or deletes (None) registrations by node id, in one
    /// transaction. The registry's own data: not part of the config, no
    /// generation, no snapshot. Callers batch (one call per save tick).
    pub fn save_registrations(
        &self,
        changes: &[(String, Option<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.db.commit_registrations(changes)
    }

    /// The last rejected config-directory change, until one is accepted.
    pub fn file_errors(&self) -> Option<&ConfigErrors> {
        self.file_errors.as_ref()
    }

    /// Create or update resources through the API, all or nothing.
    pub fn apply(
        &mut self,
        incoming: Vec<Incoming>,
        dry_run: bool,
    ) -> Result<Vec<Applied>, StoreError> {
        let result = self.try_apply(incoming, dry_run);
        if !dry_run {
            self.metrics.apply(result.is_ok());
        }
        result
    }

    fn try_apply(
        &mut self,
        incoming: Vec<Incoming>,
        dry_run: bool,
    ) -> Result<Vec<Applied>, StoreError> {
        let mut errors = ConfigErrors::default();
        let mut seen_in_request: BTreeMap<Key, String> = BTreeMap::new();
        for inc in &incoming {
            let key = Key::of(&inc.doc.resource);
            if let Some(other) = seen_in_request.insert(key.clone(), inc.file.clone()) {
                errors.push(ConfigError::new(
                    &inc.file,
                    key.to_string(),
                    "metadata.name",
                    format!("{key} appears twice in this apply (also in {other}); give each resource its own name"),
                ));
            }
            if let Some(f) = self.files.get(&key) {
                errors.push(ConfigError::new(
                    &inc.file,
                    key.to_string(),
                    "metadata.name",
                    format!(
                        "{key} is defined in the config directory ({}); change it there, or apply it under another name",
                        f.source()
                    ),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(StoreError::invalid(rejected_summary(&errors), errors));
        }

        let now = now_ms();
        let mut api = self.api.clone();
        let mut next_order = self.next_order;
        let mut actions = Vec::with_capacity(incoming.len());
        let mut changed = BTreeSet::new();
        let mut files_of: BTreeMap<Key, String> = BTreeMap::new();
        for Incoming { file, doc } in incoming {
            let key = Key::of(&doc.resource);
            let mut resource = doc.resource;
            resource.set_source(API_SOURCE);
            let action = match api.get(&key) {
                Some(old) if old.resource == resource => Action::Unchanged,
                Some(old) => {
                    let (order, created_ms, generation) =
                        (old.order, old.created_ms, old.generation + 1);
                    api.insert(
                        key.clone(),
                        Entry {
                            key: key.clone(),
                            resource,
                            document: doc.raw,
                            generation,
                            created_ms,
                            order,
                        },
                    );
                    Action::Configured
                }
                None => {
                    api.insert(
                        key.clone(),
                        Entry {
                            key: key.clone(),
                            resource,
                            document: doc.raw,
                            generation: 1,
                            created_ms: now,
                            order: next_order,
                        },
                    );
                    next_order += 1;
                    Action::Created
                }
            };
            if action != Action::Unchanged {
                changed.insert(key.clone());
            }
            files_of.insert(key.clone(), file);
            actions.push((key, action));
        }

        let snapshot = evaluate(&api, &self.files, &changed).map_err(|mut errors| {
            // Name the file each new resource came from, not `api`.
            for e in &mut errors.0 {
                if e.file == API_SOURCE
                    && let Some((_, f)) = files_of.iter().find(|(k, _)| k.to_string() == e.resource)
                {
                    e.file = f.clone();
                }
            }
            StoreError::invalid(rejected_summary(&errors), errors)
        })?;

        let applied = actions
            .into_iter()
            .map(|(key, action)| {
                let status = status_of(&snapshot, &api[&key]);
                Applied {
                    key,
                    action,
                    status,
                }
            })
            .collect();
        if dry_run || changed.is_empty() {
            return Ok(applied);
        }
        let mut batch = Batch {
            next_order: Some(next_order),
            ..Batch::default()
        };
        for key in &changed {
            let e = &api[key];
            batch.put.push((
                key.db_key(),
                Record {
                    document: e.document.clone(),
                    source: API_SOURCE.to_string(),
                    generation: e.generation,
                    created_ms: e.created_ms,
                    order: e.order,
                },
            ));
        }
        self.db.commit(batch)?;
        self.api = api;
        self.next_order = next_order;
        self.install(snapshot);
        Ok(applied)
    }

    /// Delete a resource applied through the API, unless the rest of the
    /// config depends on it.
    pub fn delete(&mut self, key: &Key, dry_run: bool) -> Result<(), StoreError> {
        let result = self.try_delete(key, dry_run);
        if !dry_run {
            self.metrics.delete(result.is_ok());
        }
        result
    }

    fn try_delete(&mut self, key: &Key, dry_run: bool) -> Result<(), StoreError> {
        if !self.api.contains_key(key) {
            return Err(match self.files.get(key) {
                Some(f) => StoreError::ManagedByFile {
                    key: key.clone(),
                    file: f.source().to_string(),
                },
                None => StoreError::NotFound { key: key.clone() },
            });
        }
        let mut api = self.api.clone();
        api.remove(key);
        let snapshot = evaluate(&api, &self.files, &BTreeSet::new()).map_err(|errors| {
            StoreError::invalid(
                format!(
                    "deleting {key} was rejected: the rest of the config depends on it ({})",
                    count(&errors)
                ),
                errors,
            )
        })?;
        if dry_run {
            return Ok(());
        }
        self.db.commit(Batch {
            delete: vec![key.db_key()],
            ..Batch::default()
        })?;
        self.api = api;
        self.install(snapshot);
        Ok(())
    }

    /// Replace the config directory's resources with `docs` (a fresh read of
    /// the folder). On rejection the previous files stay in effect.
    pub fn set_files(&mut self, docs: Vec<Document>) -> Result<FilesChange, StoreError> {
        let result = self.try_set_files(docs);
        self.metrics.config_dir_reload(result.is_ok());
        match &result {
            Ok(_) => self.file_errors = None,
            Err(StoreError::Invalid { errors, .. }) => self.file_errors = Some(errors.clone()),
            Err(_) => {}
        }
        result
    }

    /// Record that the config directory could not be read or parsed: the
    /// previous files stay in effect.
    pub fn files_unreadable(&mut self, errors: ConfigErrors) {
        self.metrics.config_dir_reload(false);
        self.file_errors = Some(errors);
    }

    fn try_set_files(&mut self, docs: Vec<Document>) -> Result<FilesChange, StoreError> {
        let seen: BTreeMap<String, Seen> = self
            .files
            .values()
            .map(|e| (e.key.db_key(), seen_of(e)))
            .collect();
        let mut batch = Batch::default();
        let (files, mut change) = self.file_entries(docs, &seen, &mut batch)?;
        for key in self.files.keys() {
            if !files.contains_key(key) {
                batch.seen_delete.push(key.db_key());
                change.deleted.push(key.clone());
            }
        }
        if change.is_empty() {
            return Ok(change);
        }
        let changed: BTreeSet<Key> = change
            .created
            .iter()
            .chain(&change.configured)
            .cloned()
            .collect();
        let snapshot = evaluate(&self.api, &files, &changed).map_err(|errors| {
            StoreError::invalid(
                format!(
                    "the config directory change was rejected ({}); the previous files stay in effect",
                    count(&errors)
                ),
                errors,
            )
        })?;
        batch.next_order = Some(self.next_order);
        self.db.commit(batch)?;
        self.files = files;
        self.install(snapshot);
        Ok(change)
    }

    /// Entries for the config directory's documents, keeping the order and
    /// generation of those seen before. New bookkeeping goes into `batch`.
    fn file_entries(
        &mut self,
        docs: Vec<Document>,
        seen: &BTreeMap<String, Seen>,
        batch: &mut Batch,
    ) -> Result<(BTreeMap<Key, Entry>, FilesChange), StoreError> {
        let now = now_ms();
        let mut files: BTreeMap<Key, Entry> = BTreeMap::new();
        let mut change = FilesChange::default();
        let mut errors = ConfigErrors::default();
        for doc in docs {
            let key = Key::of(&doc.resource);
            let source = doc.resource.source().to_string();
            if let Some(first) = files.get(&key) {
                errors.push(ConfigError::new(
                    &source,
                    key.to_string(),
                    "metadata.name",
                    format!(
                        "{key} is also defined in {}; give each resource its own name",
                        first.source()
                    ),
                ));
                continue;
            }
            let hash = fnv1a(&serde_json::to_vec(&doc.raw).unwrap_or_default());
            let db_key = key.db_key();
            let s = match seen.get(&db_key) {
                Some(s) if s.hash == hash && s.source == source => s.clone(),
                Some(s) => {
                    change.configured.push(key.clone());
                    Seen {
                        source,
                        hash,
                        generation: s.generation + 1,
                        ..s.clone()
                    }
                }
                None => {
                    change.created.push(key.clone());
                    let s = Seen {
                        source,
                        order: self.next_order,
                        created_ms: now,
                        generation: 1,
                        hash,
                    };
                    self.next_order += 1;
                    s
                }
            };
            if seen.get(&db_key) != Some(&s) {
                batch.seen_put.push((db_key, s.clone()));
            }
            files.insert(
                key.clone(),
                Entry {
                    key,
                    resource: doc.resource,
                    document: doc.raw,
                    generation: s.generation,
                    created_ms: s.created_ms,
                    order: s.order,
                },
            );
        }
        if errors.is_empty() {
            Ok((files, change))
        } else {
            Err(StoreError::invalid(
                format!(
                    "the config directory change was rejected ({}); the previous files stay in effect",
                    count(&errors)
                ),
                errors,
            ))
        }
    }

    /// One resource and its status. A config-directory resource hides an API
    /// resource of the same identity (which `list` still shows).
    pub fn get(&self, key: &Key) -> Option<(&Entry, Status)> {
        let e = self.files.get(key).or_else(|| self.api.get(key))?;
        Some((e, self.status(e)))
    }

    /// Every resource, optionally of one kind and namespace, sorted by kind,
    /// namespace, name (an API resource before a file's of the same identity).
    pub fn list(
        &self,
        kind: Option<trellis_model::resource::Kind>,
        namespace: Option<&str>,
    ) -> Vec<(&Entry, Status)> {
        let mut out: Vec<&Entry> = self
            .api
            .values()
            .chain(self.files.values())
            .filter(|e| kind.is_none_or(|k| e.key.kind == k))
            .filter(|e| namespace.is_none_or(|ns| e.key.namespace == ns))
            .collect();
        out.sort_by(|a, b| (&a.key, a.from_file()).cmp(&(&b.key, b.from_file())));
        out.into_iter().map(|e| (e, self.status(e))).collect()
    }

    pub fn status(&self, e: &Entry) -> Status {
        status_of(&self.current, e)
    }

    fn install(&mut self, mut snapshot: Snapshot) {
        snapshot.generation = self.current.generation + 1;
        let snapshot = Arc::new(snapshot);
        self.metrics.resources(
            self.api.values().chain(self.files.values()),
            &snapshot.conflicts,
            snapshot.generation,
        );
        self.current = snapshot.clone();
        self.publish.send_replace(snapshot);
    }
}

fn seen_of(e: &Entry) -> Seen {
    Seen {
        source: e.source().to_string(),
        order: e.order,
        created_ms: e.created_ms,
        generation: e.generation,
        hash: fnv1a(&serde_json::to_vec(&e.document).unwrap_or_default()),
    }
}

fn status_of(snapshot: &Snapshot, e: &Entry) -> Status {
    let me = e.reference();
    let conflicts: Vec<Conflict> = snapshot
        .conflicts
        .iter()
        .filter(|c| c.loser == me || c.winner == me)
        .cloned()
        .collect();
    Status {
        accepted: !conflicts.iter().any(|c| c.loser == me),
        conflicts,
        source: e.source().to_string(),
        generation: e.generation,
        proxies: Vec::new(),
    }
}

/// The effective config from the API's and the config directory's entries,
/// or every reason it is not acceptable. `changed` are the resources this
/// change adds or modifies: if one of them loses a conflict it is still
/// checked on its own, so a broken resource is not accepted just because an
/// older one hides it.
fn evaluate(
    api: &BTreeMap<Key, Entry>,
    files: &BTreeMap<Key, Entry>,
    changed: &BTreeSet<Key>,
) -> Result<Snapshot, ConfigErrors> {
    let mut conflicts = Vec::new();
    let mut entries: Vec<&Entry> = files.values().collect();
    for (k, e) in api {
        match files.get(k) {
            Some(f) => conflicts.push(Conflict {
                loser: e.reference(),
                winner: f.reference(),
                reason: format!(
                    "{k} is also defined in the config directory ({}), which takes precedence over the API",
                    f.source()
                ),
            }),
            None => entries.push(e),
        }
    }
    entries.sort_by_key(|e| (e.order, e.key.clone()));
    let order: BTreeMap<&Key, u64> = entries.iter().map(|e| (&e.key, e.order)).collect();
    let set: ResourceSet = entries.iter().map(|e| e.resource.clone()).collect();
    let (resolved, lost) = conflict::resolve(&set, |kind, meta| {
        order
            .get(&Key::new(kind, &meta.namespace, &meta.name))
            .copied()
            .unwrap_or(u64::MAX)
    });
    let mut errors = ConfigErrors::default();
    let validated = match validate(&resolved) {
        Ok(v) => Some(v),
        Err(es) => {
            errors.0.extend(es.0);
            None
        }
    };
    // A changed resource that lost a conflict: check it in place of the
    // resources it lost to, and keep only the errors about itself.
    let losers: BTreeSet<&ResourceRef> = lost.iter().map(|c| &c.loser).collect();
    for loser in losers {
        let Some(entry) = entries.iter().find(|e| e.key.is(loser)) else {
            continue;
        };
        if !changed.contains(&entry.key) {
            continue;
        }
        let winners: Vec<&ResourceRef> = lost
            .iter()
            .filter(|c| &c.loser == loser)
            .map(|c| &c.winner)
            .collect();
        let alone: ResourceSet = entries
            .iter()
            .filter(|e| {
                let ek = &e.key;
                e.key == entry.key
                    || (!winners.iter().any(|w| ek.is(w)) && !lost.iter().any(|c| ek.is(&c.loser)))
            })
            .map(|e| e.resource.clone())
            .collect();
        if let Err(es) = validate(&alone) {
            let name = entry.key.to_string();
            errors
                .0
                .extend(es.0.into_iter().filter(|e| e.resource == name));
        }
    }
    conflicts.extend(lost);
    match validated {
        Some(validated) if errors.is_empty() => Ok(Snapshot {
            generation: 0,
            resources: resolved,
            validated,
            conflicts,
        }),
        _ => Err(errors),
    }
}

fn count(errors: &ConfigErrors) -> String {
    let n = errors.0.len();
    format!("{n} error{}", if n == 1 { "" } else { "s" })
}

fn rejected_summary(errors: &ConfigErrors) -> String {
    format!(
        "the change was rejected ({}); nothing was applied",
        count(errors)
    )
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
