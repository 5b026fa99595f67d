//! Who may do what. A client's identity is its certificate's common name, authenticated by
//! the transport. Admins (`serve --admins`, by default `client`, the identity `certs init`
//! issues) may do everything; other identities only what a database grants them:
//! `--readers` may read it (`get`, `status`, `db digest`, `db members`), `--writers` may
//! also write (`put`, `del`, `tx`, and an external replicator's pushes). Changing databases
//! (`db create`, `update`, `load`, `unload`, `delete`, `compact`, `members --remove`),
//! promotion and switchover are for admins. Replication itself is governed by each
//! database's `--replicators` (see the router), not here.

use crate::wire::{DbSettings, Request};

use super::{Server, ServerError};

/// What a request needs of its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Reading one database.
    Read,
    /// Writing one database.
    Write,
    /// Changing the server's databases.
    Admin,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Admin => "administer",
        })
    }
}

/// The permission `request` needs, and the database it concerns (`None`: the server's).
pub fn needed(request: &Request) -> (Permission, Option<&str>) {
    match request {
        Request::Write { db, .. } | Request::Replicate { db, .. } => (Permission::Write, Some(db)),
        Request::Get { db, .. }
        | Request::Status { db }
        | Request::StateDigest { db }
        | Request::Members { db, remove: None } => (Permission::Read, Some(db)),
        // Listing shows each identity the databases it may read: no permission of its own.
        Request::ListDbs => (Permission::Read, None),
        Request::CreateDb { name, .. }
        | Request::UpdateDb { name, .. }
        | Request::LoadDb { name }
        | Request::UnloadDb { name }
        | Request::DeleteDb { name } => (Permission::Admin, Some(name)),
        Request::Promote { db, .. }
        | Request::SwitchoverBegin { db, .. }
        | Request::SwitchoverAbort { db }
        | Request::CompactDb { db }
        | Request::Members {
            db,
            remove: Some(_),
        } => (Permission::Admin, Some(db)),
    }
}

/// Whether `identity`, not an admin, holds `permission` on a database with `settings`.
pub fn granted(settings: &DbSettings, identity: &str, permission: Permission) -> bool {
    let holds = |list: &Option<Vec<String>>| list.iter().flatten().any(|id| id == identity);
    match permission {
        Permission::Read => holds(&settings.readers) || holds(&settings.writers),
        Permission::Write => holds(&settings.writers),
        Permission::Admin => false,
    }
}

impl Server {
    /// Whether `identity` is an admin here.
    pub fn is_admin(&self, identity: &str) -> bool {
        self.admins.iter().any(|admin| admin == identity)
    }

    /// Refuses `request` unless `identity` may make it, naming the identity, the permission
    /// and how to grant it.
    ///
    /// # Errors
    /// [`ServerError::Unauthorized`].
    pub async fn authorize(&self, identity: &str, request: &Request) -> Result<(), ServerError> {
        if self.is_admin(identity) {
            return Ok(());
        }
        let (permission, db) = needed(request);
        let refused = || ServerError::Unauthorized {
            identity: identity.to_string(),
            permission,
            db: db.map(str::to_string),
        };
        match (permission, db) {
            (Permission::Admin, _) => Err(refused()),
            // Filtered by `visible_dbs` instead.
            (_, None) => Ok(()),
            (_, Some(db)) => {
                // An unknown database is refused as unauthorized too: its existence is not
                // shown to whoever may not read it.
                let settings = self.with_database(db, |d| d.settings.clone()).await;
                match settings {
                    Ok(settings) if granted(&settings, identity, permission) => Ok(()),
                    _ => Err(refused()),
                }
            }
        }
    }

    /// The databases `identity` may see in `db list`: all for an admin, else those it may
    /// read.
    pub fn visible_to(
        &self,
        identity: &str,
        dbs: Vec<(String, bool, DbSettings)>,
    ) -> Vec<(String, bool, DbSettings)> {
        if self.is_admin(identity) {
            return dbs;
        }
        dbs.into_iter()
            .filter(|(_, _, settings)| granted(settings, identity, Permission::Read))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_read_and_write_readers_only_read_and_changes_are_for_admins() {
        let settings = DbSettings {
            readers: Some(vec!["bob".into()]),
            writers: Some(vec!["alice".into()]),
            ..DbSettings::default()
        };
        assert!(granted(&settings, "alice", Permission::Write));
        assert!(granted(&settings, "alice", Permission::Read));
        assert!(granted(&settings, "bob", Permission::Read));
        assert!(!granted(&settings, "bob", Permission::Write));
        assert!(!granted(&settings, "carol", Permission::Read));
        assert!(!granted(&settings, "alice", Permission::Admin));
        let write = Request::Write {
            db: "app".into(),
            ops: vec![],
        };
        assert_eq!(needed(&write), (Permission::Write, Some("app")));
        let remove = Request::Members {
            db: "app".into(),
            remove: Some("n2/app".into()),
        };
        assert_eq!(needed(&remove).0, Permission::Admin);
        let list = Request::Members {
            db: "app".into(),
            remove: None,
        };
        assert_eq!(needed(&list).0, Permission::Read);
        let delete = Request::DeleteDb { name: "app".into() };
        assert_eq!(needed(&delete).0, Permission::Admin);
    }
}
