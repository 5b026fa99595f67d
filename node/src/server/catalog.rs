//! The catalog: which databases a server has, on disk and in memory.
//!
//! On disk, under the data directory (see [`Layout`]), each database has a directory holding
//! its `settings.toml`, its log, and, while it is unloaded, an `unloaded` marker file.
//!
//! In memory, each name that is loaded, or being opened, has a slot. A slot is reserved (and
//! its lock held) before a database is opened and filled after, so opening, which replays the
//! log and may take long, never holds the catalog's own lock: other databases keep serving,
//! and a second create or load of the same name is refused at once. The catalog's lock is a
//! plain mutex, never held across an `.await`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedRwLockWriteGuard, RwLock};

use crate::wire::DbSettings;

use super::database::Database;

/// The marker file that keeps a database unloaded across restarts.
const UNLOADED: &str = "unloaded";
/// A database's settings file.
const SETTINGS: &str = "settings.toml";

/// Where a server keeps its databases: `DIR/databases/NAME/` holds `settings.toml`, the log
/// in `log/`, and the `unloaded` marker. The offline log tools read the same layout.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout of the data directory `root`.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of every database.
    pub fn databases(&self) -> PathBuf {
        self.root.join("databases")
    }

    /// One database's directory.
    pub fn database(&self, name: &str) -> PathBuf {
        self.databases().join(name)
    }

    /// One database's settings file.
    pub fn settings(&self, name: &str) -> PathBuf {
        self.database(name).join(SETTINGS)
    }

    /// One database's log directory.
    pub fn log(&self, name: &str) -> PathBuf {
        self.database(name).join("log")
    }

    /// One database's unloaded marker.
    pub fn unloaded_marker(&self, name: &str) -> PathBuf {
        self.database(name).join(UNLOADED)
    }

    /// The name of every entry under [`Layout::databases`], sorted.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn names(&self) -> std::io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(self.databases())?
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }
}

/// Why the data directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A file or directory operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A settings file that does not parse.
    #[error("settings of database {db}")]
    Settings {
        /// The database.
        db: String,
        /// The parse error.
        #[source]
        error: toml::de::Error,
    },
    /// Settings that do not encode.
    #[error(transparent)]
    Encode(#[from] toml::ser::Error),
    /// The database was stopped but its marker not written: it loads again on restart.
    #[error("unloaded, but not recorded")]
    Unrecorded(#[source] std::io::Error),
    /// Another process holds the data directory's lock: a server running on it.
    #[error(
        "the data directory {dir} is in use by another repnode process{}: stop it first, or \
         give this one another --dir",
        holder.as_ref().map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// The process id recorded by the holder, if readable.
        holder: Option<String>,
    },
    /// A database's directory could not be removed.
    #[error("deleting {name}")]
    Delete {
        /// The database.
        name: String,
        /// The failure.
        #[source]
        error: std::io::Error,
    },
}

/// The lock file of a data directory, held (`flock`) by the server running on it.
const LOCK: &str = "repnode.lock";

/// Locks the data directory `dir` (creating it if missing) for this process: released when
/// the returned file is closed, which the kernel does when the process ends, however it ends.
/// The lock file records the holder's process id, for the refusal of the next.
///
/// # Errors
/// [`CatalogError::InUse`] while another process holds it; an IO error otherwise.
pub fn lock_dir(dir: &Path) -> Result<std::fs::File, CatalogError> {
    use std::io::{Seek, Write};
    std::fs::create_dir_all(dir)?;
    let path = dir.join(LOCK);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .map(|text| text.trim().to_string())
                .filter(|pid| !pid.is_empty());
            return Err(CatalogError::InUse {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(error)) => return Err(error.into()),
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

/// Refuses to go on while a server runs on the data directory `dir` (holds its lock): the
/// offline tools read files a running server changes under them. The lock is then held,
/// shared, until the returned file is dropped, so that no server starts on the directory
/// while the tool reads it.
///
/// # Errors
/// [`CatalogError::InUse`] while a server holds the lock.
pub fn ensure_stopped(dir: &Path) -> Result<Option<std::fs::File>, CatalogError> {
    let path = dir.join(LOCK);
    let Ok(file) = std::fs::File::open(&path) else {
        // No lock file: no server ever ran here, or it is not a data directory at all (the
        // tool says so itself).
        return Ok(None);
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(CatalogError::InUse {
            dir: dir.to_path_buf(),
            holder: std::fs::read_to_string(&path)
                .ok()
                .map(|text| text.trim().to_string())
                .filter(|pid| !pid.is_empty()),
        }),
        Err(std::fs::TryLockError::Error(error)) => Err(error.into()),
    }
}

/// Whether `name` can be a database's name: it becomes a directory name.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A database in memory: `None` once it failed to open or was unloaded (whoever waited on
/// the slot then finds it gone).
pub(crate) type Slot = Arc<RwLock<Option<Database>>>;

/// A name in the catalog.
struct Entry {
    slot: Slot,
    /// Reserved, its database not opened yet: listings and metrics leave it out rather than
    /// wait for it.
    opening: bool,
}

/// The databases of one server.
pub(crate) struct Catalog {
    layout: Layout,
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl Catalog {
    /// An empty catalog over `layout`.
    pub(crate) fn new(layout: Layout) -> Catalog {
        Catalog {
            layout,
            entries: Mutex::new(BTreeMap::new()),
        }
    }

    /// The data directory's layout.
    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // The map stays consistent whatever panicked while holding it: every change is a
        // single insert, remove or flag.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The slot of a loaded database, or of one being opened (waiting on it waits for the
    /// open).
    pub(crate) fn slot(&self, name: &str) -> Option<Slot> {
        self.lock().get(name).map(|entry| entry.slot.clone())
    }

    /// The slot of every loaded database, in name order; those being opened are left out.
    pub(crate) fn slots(&self) -> Vec<(String, Slot)> {
        self.lock()
            .iter()
            .filter(|(_, entry)| !entry.opening)
            .map(|(name, entry)| (name.clone(), entry.slot.clone()))
            .collect()
    }

    /// Empties the catalog, returning every slot, those being opened included.
    pub(crate) fn take_all(&self) -> Vec<Slot> {
        std::mem::take(&mut *self.lock())
            .into_values()
            .map(|entry| entry.slot)
            .collect()
    }

    /// Reserves `name` for a database about to be opened, or `None` when the name is
    /// loaded or reserved already.
    pub(crate) fn reserve(&self, name: &str) -> Option<Reservation<'_>> {
        let mut entries = self.lock();
        if entries.contains_key(name) {
            return None;
        }
        let slot: Slot = Arc::new(RwLock::new(None));
        let guard = slot.clone().try_write_owned().expect("a new lock is free");
        let entry = Entry {
            slot: slot.clone(),
            opening: true,
        };
        entries.insert(name.to_string(), entry);
        Some(Reservation {
            catalog: self,
            name: name.to_string(),
            slot,
            guard: Some(guard),
        })
    }

    /// Removes `name` from the catalog if it still maps to `slot` (it may have been taken by
    /// a shutdown and reserved again since).
    pub(crate) fn release(&self, name: &str, slot: &Slot) {
        let mut entries = self.lock();
        if entries
            .get(name)
            .is_some_and(|entry| Arc::ptr_eq(&entry.slot, slot))
        {
            entries.remove(name);
        }
    }

    /// Marks `name`'s database opened, if `name` still maps to `slot`.
    fn opened(&self, name: &str, slot: &Slot) {
        if let Some(entry) = self.lock().get_mut(name)
            && Arc::ptr_eq(&entry.slot, slot)
        {
            entry.opening = false;
        }
    }

    /// The names to open at startup: every database with settings and no unloaded marker.
    pub(crate) fn to_load(&self) -> Result<Vec<String>, CatalogError> {
        std::fs::create_dir_all(self.layout.databases())?;
        Ok(self
            .layout
            .names()?
            .into_iter()
            .filter(|name| {
                self.layout.settings(name).exists() && !self.layout.unloaded_marker(name).exists()
            })
            .collect())
    }

    /// Database names on disk that are unloaded.
    pub(crate) fn unloaded(&self) -> Vec<String> {
        self.layout
            .names()
            .map(|names| {
                names
                    .into_iter()
                    .filter(|name| self.layout.unloaded_marker(name).exists())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether a database directory of this name exists.
    pub(crate) fn exists_on_disk(&self, name: &str) -> bool {
        self.layout.database(name).exists()
    }

    /// A database's persisted settings.
    pub(crate) fn read_settings(&self, db: &str) -> Result<DbSettings, CatalogError> {
        let text = std::fs::read_to_string(self.layout.settings(db))?;
        toml::from_str(&text).map_err(|error| CatalogError::Settings {
            db: db.to_string(),
            error,
        })
    }

    /// Writes a database's settings atomically: a crash leaves the old file or the new one,
    /// never a torn one.
    pub(crate) fn persist(&self, db: &str, settings: &DbSettings) -> Result<(), CatalogError> {
        let dir = self.layout.database(db);
        std::fs::create_dir_all(&dir)?;
        let temporary = dir.join(format!("{SETTINGS}.tmp"));
        std::fs::write(&temporary, toml::to_string(settings)?)?;
        std::fs::File::open(&temporary)?.sync_all()?;
        std::fs::rename(&temporary, self.layout.settings(db))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    }

    /// Records that `db` stays unloaded across restarts.
    pub(crate) fn mark_unloaded(&self, db: &str) -> Result<(), CatalogError> {
        std::fs::write(self.layout.unloaded_marker(db), b"").map_err(CatalogError::Unrecorded)
    }

    /// Forgets the unloaded marker of `db`.
    pub(crate) fn clear_unloaded(&self, db: &str) {
        // Loaded all the same; at worst it stays unloaded after a restart.
        let _ = std::fs::remove_file(self.layout.unloaded_marker(db));
    }

    /// Deletes a database's directory, its log included.
    pub(crate) fn remove(&self, name: &str) -> Result<(), CatalogError> {
        std::fs::remove_dir_all(self.layout.database(name)).map_err(|error| CatalogError::Delete {
            name: name.to_string(),
            error,
        })
    }
}

/// A name reserved in the catalog while its database opens, or while it is deleted. Requests
/// for the name wait on its slot meanwhile. Dropped without [`Reservation::fill`], it
/// releases the name.
pub(crate) struct Reservation<'a> {
    catalog: &'a Catalog,
    name: String,
    slot: Slot,
    guard: Option<OwnedRwLockWriteGuard<Option<Database>>>,
}

impl Reservation<'_> {
    /// Puts the opened database in its slot; the slot's lock is released on return.
    pub(crate) fn fill(mut self, database: Database) {
        if let Some(guard) = self.guard.as_mut() {
            **guard = Some(database);
            self.catalog.opened(&self.name, &self.slot);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            // Out of the map before the lock is released, so a waiter that finds the slot
            // empty and asks again finds no name.
            if guard.is_none() {
                self.catalog.release(&self.name, &self.slot);
            }
            drop(guard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_persist_and_markers_decide_what_loads() {
        let root = tempfile::tempdir().expect("tempdir");
        let catalog = Catalog::new(Layout::new(root.path()));
        let settings = DbSettings {
            quorum: Some("majority".into()),
            ..DbSettings::default()
        };
        catalog.persist("b", &settings).expect("persist b");
        catalog
            .persist("a", &DbSettings::default())
            .expect("persist a");
        assert_eq!(catalog.read_settings("b").expect("read b"), settings);
        assert_eq!(catalog.to_load().expect("list"), ["a", "b"]);
        catalog.mark_unloaded("a").expect("mark");
        assert_eq!(catalog.to_load().expect("list"), ["b"]);
        assert_eq!(catalog.unloaded(), ["a"]);
        catalog.clear_unloaded("a");
        assert!(catalog.unloaded().is_empty());
        assert_eq!(
            catalog.layout().log("a"),
            root.path().join("databases").join("a").join("log")
        );
    }

    #[test]
    fn a_settings_file_that_does_not_parse_names_its_database() {
        let root = tempfile::tempdir().expect("tempdir");
        let catalog = Catalog::new(Layout::new(root.path()));
        std::fs::create_dir_all(catalog.layout().database("app")).expect("dir");
        std::fs::write(catalog.layout().settings("app"), "quorum = [").expect("write");
        let error = catalog.read_settings("app").expect_err("does not parse");
        assert!(
            crate::server::error::chain(&error).starts_with("settings of database app: "),
            "{error}"
        );
    }

    #[test]
    fn names_must_be_directory_names() {
        assert!(valid_name("app-2_b"));
        for bad in ["", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_reservation_refuses_its_name_until_filled_or_dropped() {
        let catalog = Catalog::new(Layout::new("unused"));
        let reservation = catalog.reserve("app").expect("free");
        assert!(catalog.reserve("app").is_none(), "reserved");
        assert!(
            catalog.slots().is_empty(),
            "an opening database is not listed"
        );
        let slot = catalog.slot("app").expect("requests find the slot");
        assert!(slot.try_read().is_err(), "and wait on it");
        drop(reservation);
        assert!(slot.read().await.is_none(), "a failed open leaves nothing");
        assert!(catalog.slot("app").is_none(), "and gives the name back");
        assert!(catalog.reserve("app").is_some());
    }
}
