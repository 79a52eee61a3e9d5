//! Key files and record files: `keygen`, loading keys (refusing a secret key others can read),
//! reading and appending JSON lines, and `verify_file` for the command line.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::{LedgerRecord, from_hex, to_hex};

/// File name of the secret key written by [`keygen`].
pub const SECRET_KEY_FILE: &str = "site.key";
/// File name of the public key written by [`keygen`].
pub const PUBLIC_KEY_FILE: &str = "site.pub";

/// A ledger file or key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file does not hold 64 hex digits, or not a valid key.
    #[error("{path}: {reason}")]
    KeyFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// [`keygen`] would overwrite an existing key.
    #[error("{0}: a key already exists there; move it away first")]
    KeyExists(PathBuf),
    /// The secret key file can be read by group or others.
    #[error("{path}: mode {mode:04o} lets others read the secret key; chmod 600 it")]
    KeyTooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The operating system could not provide random bytes.
    #[error("no randomness for key generation: {0}")]
    Random(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where [`keygen`] wrote the key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The secret key file (mode 0600).
    pub secret: PathBuf,
    /// The public key file, to hand to the regulator.
    pub public: PathBuf,
    /// The public key as hex, for printing.
    pub public_hex: String,
}

/// Generate the site's Ed25519 key pair into `dir` (created if missing): `site.key` (mode 0600)
/// and `site.pub`. Refuses to overwrite an existing `site.key`.
pub fn keygen(dir: &Path) -> Result<KeyPair, LedgerError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let secret = dir.join(SECRET_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    if secret.exists() {
        return Err(LedgerError::KeyExists(secret));
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| LedgerError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);

    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&secret).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => LedgerError::KeyExists(secret.clone()),
        _ => LedgerError::Io {
            path: secret.clone(),
            source: e,
        },
    })?;
    writeln!(file, "{}", to_hex(&key.to_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(io(&secret))?;
    let public_hex = to_hex(key.verifying_key().as_bytes());
    fs::write(&public, format!("{public_hex}\n")).map_err(io(&public))?;
    Ok(KeyPair {
        secret,
        public,
        public_hex,
    })
}

fn read_hex32(path: &Path) -> Result<[u8; 32], LedgerError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    from_hex::<32>(text.trim()).ok_or_else(|| LedgerError::KeyFormat {
        path: path.to_owned(),
        reason: "expected 64 hex digits".into(),
    })
}

/// Load the site's secret key; refuses a file that group or others may read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, LedgerError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(LedgerError::KeyTooOpen {
                path: path.to_owned(),
                mode,
            });
        }
    }
    Ok(SigningKey::from_bytes(&read_hex32(path)?))
}

/// Load a public key file.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, LedgerError> {
    VerifyingKey::from_bytes(&read_hex32(path)?).map_err(|e| LedgerError::KeyFormat {
        path: path.to_owned(),
        reason: format!("not an Ed25519 public key: {e}"),
    })
}

/// Parse JSON lines: the records, and the (1-based) line numbers that are not records, with why.
/// Blank lines are skipped.
pub fn read_jsonl(text: &str) -> (Vec<LedgerRecord>, Vec<(usize, String)>) {
    let mut records = Vec::new();
    let mut unreadable = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match LedgerRecord::from_json(line) {
            Ok(r) => records.push(r),
            Err(e) => unreadable.push((i + 1, e.to_string())),
        }
    }
    (records, unreadable)
}

/// Append records to a JSON-lines file (created if missing) and flush it to disk.
pub fn append_jsonl(path: &Path, records: &[LedgerRecord]) -> Result<(), LedgerError> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    let mut text = String::new();
    for r in records {
        text.push_str(&r.to_json());
        text.push('\n');
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(io(path))
}
