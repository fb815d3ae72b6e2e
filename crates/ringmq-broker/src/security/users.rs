//! The users SCRAM authenticates against: per user and mechanism the salt, the iteration
//! count, StoredKey and ServerKey (RFC 5802), never a password.
//!
//! Shard 0 owns changes, as it owns the topic table: it writes `<store>/users.json`
//! atomically, then hands the new table to every shard, which swaps it in (`Metadata`); each
//! shard's connections read their own copy. A master ships the table to its slaves in its
//! metadata frames; slave shard 0 publishes it the same way. `ringmq user create --store DIR`
//! writes the same file on a stopped broker's store (under the store lock), so the first
//! superuser can be made before authentication is turned on.
//!
//! `unknown_user_key` makes up the answer to a name that is not a user: a salt and keys derived
//! from it and the name, stable for that name, so an unknown user's exchange looks and costs
//! the same as a real one's and then fails like a wrong password. It is random per store and
//! travels with the table (a slave answers an unknown name as its master does).

use crate::protocol::scram::{Credential, Mechanism, DEFAULT_ITERATIONS, MAX_USER_BYTES};
use crate::protocol::scram::{StoredCredential, UserSummary, SALT_BYTES};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bytes of `unknown_user_key`.
pub const UNKNOWN_USER_KEY_BYTES: usize = 32;
/// Most users one store holds: the table is copied to every shard and into every metadata
/// frame, so it stays small (each user costs under 400 bytes).
pub const MAX_USERS: usize = 10_000;

#[derive(Clone, PartialEq, Eq)]
pub struct UserTable {
    /// Counts changes since the store was made; 0: no user was ever created, and the table is
    /// not shipped to slaves (an older slave, which knows no users, keeps working).
    pub generation: u64,
    pub unknown_user_key: [u8; UNKNOWN_USER_KEY_BYTES],
    pub users: BTreeMap<String, Vec<Credential>>,
}

impl std::fmt::Debug for UserTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "UserTable(generation {}, {} users, <keys redacted>)",
            self.generation,
            self.users.len()
        )
    }
}

impl Default for UserTable {
    fn default() -> Self {
        UserTable {
            generation: 0,
            unknown_user_key: [0; UNKNOWN_USER_KEY_BYTES],
            users: BTreeMap::new(),
        }
    }
}

/// `users.json`: bytes in base64.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    generation: u64,
    unknown_user_key: String,
    users: BTreeMap<String, Vec<CredentialFile>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialFile {
    mechanism: String,
    salt: String,
    iterations: u32,
    stored_key: String,
    server_key: String,
}

pub fn users_path(store_dir: &Path) -> PathBuf {
    store_dir.join("users.json")
}

/// A user name: what a principal is, so what ACLs and `superusers` name. Printable ASCII
/// without spaces or commas (SCRAM escapes `,` and `=`; names stay easy to write in TOML
/// lists), 1 to 255 bytes.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_USER_BYTES {
        return Err(format!("a user name must be 1 to {MAX_USER_BYTES} bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b',' && b != b'=')
    {
        return Err(format!(
            "user name `{}` may contain only printable ASCII without spaces, ',' or '='",
            name.escape_default()
        ));
    }
    Ok(())
}

/// Fresh random bytes from the kernel (getrandom(2)).
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: getrandom writes at most the length given into the buffer given.
        let n = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(error);
            }
            continue;
        }
        filled += n as usize;
    }
    Ok(bytes)
}

impl UserTable {
    /// An empty table with a fresh unknown-user key (a store without `users.json`).
    pub fn fresh() -> std::io::Result<UserTable> {
        Ok(UserTable {
            unknown_user_key: random_bytes()?,
            ..UserTable::default()
        })
    }

    /// Reads `<store>/users.json` (blocking I/O: at start-up and in the offline CLI); a
    /// missing file is a fresh table. The error names the file.
    pub fn load(store_dir: &Path) -> Result<UserTable, String> {
        let path = users_path(store_dir);
        tighten_mode(&path)?;
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return UserTable::fresh().map_err(|e| format!("random bytes: {e}"))
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        UserTable::from_json(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_json(bytes: &[u8]) -> Result<UserTable, String> {
        let file: UserFile =
            serde_json::from_slice(bytes).map_err(|e| format!("not a valid user table: {e}"))?;
        let key = BASE64
            .decode(&file.unknown_user_key)
            .ok()
            .and_then(|k| <[u8; UNKNOWN_USER_KEY_BYTES]>::try_from(k).ok())
            .ok_or("unknown_user_key must be 32 bytes in base64")?;
        let mut users = BTreeMap::new();
        for (name, credentials) in file.users {
            let credentials = credentials
                .iter()
                .map(credential_from_file)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("user `{name}`: {e}"))?;
            users.insert(name, credentials);
        }
        let table = UserTable {
            generation: file.generation,
            unknown_user_key: key,
            users,
        };
        table.check()?;
        Ok(table)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let file = UserFile {
            generation: self.generation,
            unknown_user_key: BASE64.encode(self.unknown_user_key),
            users: self
                .users
                .iter()
                .map(|(name, credentials)| {
                    (
                        name.clone(),
                        credentials.iter().map(credential_to_file).collect(),
                    )
                })
                .collect(),
        };
        serde_json::to_vec_pretty(&file).expect("a user table serializes")
    }

    /// Whether every name and credential is one a broker accepts (a table from a file or a
    /// master is checked like one made here).
    pub fn check(&self) -> Result<(), String> {
        if self.users.len() > MAX_USERS {
            return Err(format!("{} users; at most {MAX_USERS}", self.users.len()));
        }
        for (name, credentials) in &self.users {
            validate_user_name(name)?;
            check_credentials(credentials).map_err(|e| format!("user `{name}`: {e}"))?;
        }
        Ok(())
    }

    /// A new table with `name` holding `credentials` (replacing what it held).
    /// Salts are [`SALT_BYTES`] long (what `ringmq user create` makes, and what an unknown
    /// name is answered with), so a salt's length does not tell a user from a made-up one.
    pub fn with_user(&self, name: &str, credentials: Vec<Credential>) -> Result<UserTable, String> {
        validate_user_name(name)?;
        check_credentials(&credentials)?;
        if let Some(odd) = credentials.iter().find(|c| c.salt.len() != SALT_BYTES) {
            return Err(format!(
                "{}: the salt is {} bytes; users are made with {SALT_BYTES}-byte salts",
                odd.mechanism,
                odd.salt.len()
            ));
        }
        if !self.users.contains_key(name) && self.users.len() >= MAX_USERS {
            return Err(format!(
                "the store holds {MAX_USERS} users, the most it may"
            ));
        }
        let mut table = self.clone();
        table.generation += 1;
        table.users.insert(name.to_string(), credentials);
        Ok(table)
    }

    /// A new table without `name`; `None` when there is no such user.
    pub fn without_user(&self, name: &str) -> Option<UserTable> {
        let mut table = self.clone();
        table.users.remove(name)?;
        table.generation += 1;
        Some(table)
    }

    /// Names and mechanisms, never keys.
    pub fn summaries(&self) -> Vec<UserSummary> {
        self.users
            .iter()
            .map(|(name, credentials)| UserSummary {
                name: name.clone(),
                mechanisms: credentials
                    .iter()
                    .map(|c| c.mechanism.name().to_string())
                    .collect(),
            })
            .collect()
    }

    /// The credential to run an exchange with: the user's for `mechanism`, or, for a name
    /// that is not a user (or has no key of that mechanism), one made up from
    /// `unknown_user_key` and the name, which no password matches. The made-up one is computed
    /// every time, so a known and an unknown name cost the same here too.
    pub fn credential_for(&self, name: &str, mechanism: Mechanism) -> (Credential, bool) {
        let made_up = std::hint::black_box(self.made_up_credential(name, mechanism));
        let known = self
            .users
            .get(name)
            .and_then(|credentials| credentials.iter().find(|c| c.mechanism == mechanism));
        match known {
            Some(credential) => (credential.clone(), true),
            None => (made_up, false),
        }
    }

    /// The iteration count an unknown name is answered with: the one most of this
    /// mechanism's credentials use (the larger on a tie), so an unknown name looks like most
    /// users whatever `--iterations` they were made with; the default in a table without any.
    fn made_up_iterations(&self, mechanism: Mechanism) -> u32 {
        let mut counts = BTreeMap::<u32, usize>::new();
        for credential in self.users.values().flatten() {
            if credential.mechanism == mechanism {
                *counts.entry(credential.iterations).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .max_by_key(|(iterations, n)| (*n, *iterations))
            .map_or(DEFAULT_ITERATIONS, |(iterations, _)| iterations)
    }

    fn made_up_credential(&self, name: &str, mechanism: Mechanism) -> Credential {
        let derive = |label: &[u8], bytes: usize| {
            let mut out = mechanism.hmac(&self.unknown_user_key, &[label, name.as_bytes()]);
            out.truncate(bytes);
            out
        };
        let keys = mechanism.key_bytes();
        Credential {
            mechanism,
            salt: derive(b"ringmq unknown user salt", SALT_BYTES),
            iterations: self.made_up_iterations(mechanism),
            stored_key: derive(b"ringmq unknown user stored key", keys),
            server_key: derive(b"ringmq unknown user server key", keys),
        }
    }

    /// The wire form in metadata frames.
    pub fn to_wire(&self) -> Vec<(String, Vec<StoredCredential>)> {
        self.users
            .iter()
            .map(|(name, c)| (name.clone(), c.iter().map(Credential::to_stored).collect()))
            .collect()
    }
}

fn check_credentials(credentials: &[Credential]) -> Result<(), String> {
    if credentials.is_empty() {
        return Err("a user needs a key of at least one mechanism".to_string());
    }
    for (i, credential) in credentials.iter().enumerate() {
        credential.check()?;
        if credentials[..i]
            .iter()
            .any(|c| c.mechanism == credential.mechanism)
        {
            return Err(format!("{} is given twice", credential.mechanism));
        }
    }
    Ok(())
}

fn credential_from_file(file: &CredentialFile) -> Result<Credential, String> {
    let mechanism = Mechanism::from_name(&file.mechanism)
        .ok_or_else(|| format!("unknown mechanism `{}`", file.mechanism))?;
    let bytes = |what: &str, text: &str| {
        BASE64
            .decode(text)
            .map_err(|_| format!("{what} is not base64"))
    };
    let credential = Credential {
        mechanism,
        salt: bytes("salt", &file.salt)?,
        iterations: file.iterations,
        stored_key: bytes("stored_key", &file.stored_key)?,
        server_key: bytes("server_key", &file.server_key)?,
    };
    credential.check()?;
    Ok(credential)
}

fn credential_to_file(credential: &Credential) -> CredentialFile {
    CredentialFile {
        mechanism: credential.mechanism.name().to_string(),
        salt: BASE64.encode(&credential.salt),
        iterations: credential.iterations,
        stored_key: BASE64.encode(&credential.stored_key),
        server_key: BASE64.encode(&credential.server_key),
    }
}

/// Writes `users.json` with plain blocking I/O (the offline CLI): a temporary file made `0600`,
/// fsync, rename over the old one, fsync of the directory, so a crash leaves the old table or
/// the new one (the store's one atomic write, which the broker's shard 0 also uses).
pub fn write_blocking(store_dir: &Path, table: &UserTable) -> std::io::Result<()> {
    crate::store::glommio_disk::write_atomic_blocking(&users_path(store_dir), &table.to_json())
}

/// Removes group and other permissions from `users.json` when it has any (a file from before
/// the broker made it `0600`, or a copy made by hand); the warning says the keys may have been
/// read. Nothing to do when there is no file.
fn tighten_mode(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::metadata(path) {
        Ok(metadata) => metadata.permissions().mode(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if mode & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(crate::store::glommio_disk::PRIVATE_FILE_MODE),
    )
    .map_err(|e| format!("{}: could not make it 0600: {e}", path.display()))?;
    tracing::warn!(
        file = %path.display(),
        mode = format!("{:o}", mode & 0o777),
        "users.json was readable by other local users; made it 0600. Its keys may have been \
         copied: reset the passwords (ringmq user create NAME) if others share this machine"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(mechanism: Mechanism, password: &[u8]) -> Credential {
        Credential::derive(mechanism, password, b"salt-salt-salt16", DEFAULT_ITERATIONS)
    }

    #[test]
    fn a_table_round_trips_through_its_file_without_passwords() {
        let table = UserTable::fresh()
            .unwrap()
            .with_user(
                "alice",
                vec![
                    credential(Mechanism::ScramSha256, b"hunter2"),
                    credential(Mechanism::ScramSha512, b"hunter2"),
                ],
            )
            .unwrap();
        let json = table.to_json();
        // What could leak by mistake is not the password (the broker never gets it) but what
        // stands in for it: SaltedPassword and ClientKey must not be in the file.
        let text = String::from_utf8_lossy(&json);
        for mechanism in Mechanism::ALL {
            let salted =
                mechanism.salted_password(b"hunter2", b"salt-salt-salt16", DEFAULT_ITERATIONS);
            let client_key = mechanism.hmac(&salted, &[b"Client Key"]);
            assert!(
                !text.contains(&BASE64.encode(&salted)),
                "SaltedPassword stored"
            );
            assert!(
                !text.contains(&BASE64.encode(&client_key)),
                "ClientKey stored"
            );
        }
        assert!(text.contains(&BASE64.encode(&table.users["alice"][0].stored_key)));
        assert_eq!(UserTable::from_json(&json).unwrap(), table);
        assert_eq!(table.generation, 1);
        let gone = table.without_user("alice").unwrap();
        assert!(gone.users.is_empty());
        assert_eq!(gone.generation, 2);
        assert!(gone.without_user("alice").is_none());
    }

    #[test]
    fn bad_names_and_credentials_are_refused() {
        let table = UserTable::default();
        let good = vec![credential(Mechanism::ScramSha256, b"p")];
        for name in ["", "a b", "a,b", "a=b", "\u{e9}"] {
            assert!(table.with_user(name, good.clone()).is_err(), "{name:?}");
        }
        assert!(table.with_user("bob", Vec::new()).is_err());
        assert!(table
            .with_user("bob", vec![good[0].clone(), good[0].clone()])
            .is_err());
        assert!(UserTable::from_json(b"{").is_err());
        assert!(
            UserTable::from_json(br#"{"generation":1,"unknown_user_key":"AA==","users":{}}"#)
                .is_err()
        );
    }

    #[test]
    fn the_file_is_owner_only_and_a_loose_one_is_tightened_on_load() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let path = users_path(dir.path());
        // A stale temporary file someone else could have opened is replaced, not reused.
        let stale = dir.path().join("users.json.tmp");
        std::fs::write(&stale, b"stale").unwrap();
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o666)).unwrap();
        let table = UserTable::fresh()
            .unwrap()
            .with_user("alice", vec![credential(Mechanism::ScramSha256, b"p")])
            .unwrap();
        write_blocking(dir.path(), &table).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(!stale.exists());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(UserTable::load(dir.path()).unwrap(), table);
        assert_eq!(mode(&path), 0o600, "load takes group and other access away");
    }

    #[test]
    fn an_unknown_user_gets_a_stable_made_up_credential() {
        let table = UserTable::fresh().unwrap();
        let (a, known) = table.credential_for("nobody", Mechanism::ScramSha256);
        assert!(!known);
        let (b, _) = table.credential_for("nobody", Mechanism::ScramSha256);
        assert_eq!(a, b, "the same name gets the same salt every time");
        let (c, _) = table.credential_for("somebody", Mechanism::ScramSha256);
        assert_ne!(a.salt, c.salt);
        assert!(a.check().is_ok());
        let other = UserTable::fresh().unwrap();
        assert_ne!(other.credential_for("nobody", Mechanism::ScramSha256).0, a);
    }

    #[test]
    fn an_unknown_user_looks_like_most_users() {
        let made = |iterations| {
            Credential::derive(
                Mechanism::ScramSha256,
                b"p",
                b"sixteen-byte-slt",
                iterations,
            )
        };
        let table = UserTable::fresh()
            .unwrap()
            .with_user("a", vec![made(8192)])
            .unwrap()
            .with_user("b", vec![made(8192)])
            .unwrap()
            .with_user("c", vec![made(4096)])
            .unwrap();
        let (known, _) = table.credential_for("a", Mechanism::ScramSha256);
        let (unknown, is_user) = table.credential_for("nobody", Mechanism::ScramSha256);
        assert!(!is_user);
        assert_eq!(unknown.iterations, 8192, "the count most users have");
        assert_eq!(unknown.salt.len(), known.salt.len());
        // No SHA-512 credential: the default count.
        let (sha512, _) = table.credential_for("nobody", Mechanism::ScramSha512);
        assert_eq!(sha512.iterations, DEFAULT_ITERATIONS);
        let short_salt =
            Credential::derive(Mechanism::ScramSha256, b"p", b"short", DEFAULT_ITERATIONS);
        assert!(table.with_user("d", vec![short_salt]).is_err());
    }
}
