//! [`NodeKey`] (a node's secp256k1 secret key and its key file), EIP-191 signing, and
//! [`recover`].

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::{Address, IdentityError, eip191_hash};

/// Length of a signature: `r` (32 bytes) || `s` (32 bytes) || `v` (1 byte).
pub const SIGNATURE_LEN: usize = 65;

/// Key files are a few dozen bytes; anything much larger is not a key file.
const MAX_KEY_FILE_LEN: u64 = 1024;

/// A node's secp256k1 identity key. Zeroized on drop (the inner `k256` signing key wipes its
/// scalar); `Debug` and `Display` print only the address.
pub struct NodeKey {
    signing: SigningKey,
    address: Address,
}

impl NodeKey {
    /// A fresh key from the operating system's entropy (via `rand`'s thread-local CSPRNG).
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        loop {
            let mut bytes = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(bytes.as_mut());
            // Fails only for zero or values >= the curve order (probability ~2^-128).
            if let Ok(signing) = SigningKey::from_slice(bytes.as_ref()) {
                return Self::from_signing(signing);
            }
        }
    }

    /// A key from 64 hex digits, with or without a `0x` prefix. The error never repeats the input.
    pub fn from_hex(hex: &str) -> Result<Self, IdentityError> {
        let digits = hex
            .strip_prefix("0x")
            .or_else(|| hex.strip_prefix("0X"))
            .unwrap_or(hex);
        if digits.len() != 64 {
            return Err(IdentityError::InvalidKey(
                "expected 64 hex digits (32 bytes)",
            ));
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(digits, bytes.as_mut())
            .map_err(|_| IdentityError::InvalidKey("expected 64 hex digits (32 bytes)"))?;
        let signing = SigningKey::from_slice(bytes.as_ref()).map_err(|_| {
            IdentityError::InvalidKey("the key is zero or not below the secp256k1 group order")
        })?;
        Ok(Self::from_signing(signing))
    }

    /// Loads the key at `path`, or creates a new one there if no file exists.
    ///
    /// The file holds `0x` + 64 lowercase hex digits and a newline. A new file is created with
    /// mode 0600 (on Unix) and appears atomically (written to a temporary name, synced, then
    /// linked into place; if another process created the key first, that key is loaded).
    /// An existing file that group or others may access (any of the mode bits 0077) is refused.
    /// Missing parent directories are created (mode 0700 on Unix).
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        match Self::load(path) {
            Err(IdentityError::KeyFileIo { source, .. })
                if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let key = Self::generate();
        let mut text = Zeroizing::new(String::with_capacity(67));
        text.push_str("0x");
        text.push_str(&Zeroizing::new(hex::encode(key.signing.to_bytes())));
        text.push('\n');
        if create_exclusive(path, text.as_bytes())? {
            Ok(key)
        } else {
            // Another process created the file between our load and our create: use theirs.
            Self::load(path)
        }
    }

    /// Loads an existing key file (see [`NodeKey::load_or_create`] for the format and checks).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let io_err = |source| IdentityError::KeyFileIo {
            path: path.to_path_buf(),
            source,
        };
        let format_err = |reason: &str| IdentityError::KeyFileFormat {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let file = File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() {
            return Err(format_err("not a regular file"));
        }
        check_private(path, &meta)?;
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(format_err("too large to be a key file"));
        }
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_KEY_FILE_LEN)
            .read_to_string(&mut text)
            .map_err(io_err)?;
        Self::from_hex(text.trim()).map_err(|e| format_err(&e.to_string()))
    }

    /// This key's Ethereum address: the last 20 bytes of `keccak256` of the uncompressed
    /// public key without its `0x04` prefix.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Signs `payload` as an EIP-191 personal message (what `personal_sign` /
    /// `eth_account.sign_message(encode_defunct(payload))` produce): `r || s || v`, `v` in
    /// {27, 28}, `s` low, nonce per RFC 6979 (the same key and payload always give the same
    /// signature).
    pub fn sign(&self, payload: &[u8]) -> [u8; SIGNATURE_LEN] {
        let hash = eip191_hash(payload);
        // Errors only if r or s comes out zero, probability ~2^-256 per signature.
        let (signature, recovery) = self
            .signing
            .sign_prehash_recoverable(&hash)
            .expect("ECDSA signing of a 32-byte hash cannot fail in practice");
        let mut out = [0u8; SIGNATURE_LEN];
        out[..64].copy_from_slice(&signature.to_bytes());
        out[64] = 27 + u8::from(recovery.is_y_odd());
        out
    }

    fn from_signing(signing: SigningKey) -> Self {
        let address = address_of(signing.verifying_key());
        Self { signing, address }
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("address", &format_args!("{}", self.address))
            .finish_non_exhaustive()
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.address, f)
    }
}

/// Recovers the signer of an EIP-191 personal-message signature (`r || s || v`).
///
/// Rejects a length other than 65, `v` other than 27/28 (or 0/1), `r` or `s` zero or not
/// below the group order, high `s` (the malleable twin of a valid signature), and `r` that is
/// not the x coordinate of a curve point. Never panics.
pub fn recover(payload: &[u8], signature: &[u8]) -> Result<Address, IdentityError> {
    let signature: &[u8; SIGNATURE_LEN] = signature
        .try_into()
        .map_err(|_| IdentityError::SignatureLength(signature.len()))?;
    let y_odd = match signature[64] {
        27 | 0 => false,
        28 | 1 => true,
        other => return Err(IdentityError::SignatureRecoveryByte(other)),
    };
    let rs = Signature::from_slice(&signature[..64]).map_err(|_| {
        IdentityError::SignatureInvalid("r or s is zero or not below the secp256k1 group order")
    })?;
    if rs.normalize_s().is_some() {
        return Err(IdentityError::SignatureHighS);
    }
    let key = VerifyingKey::recover_from_prehash(
        &eip191_hash(payload),
        &rs,
        RecoveryId::new(y_odd, false),
    )
    .map_err(|_| IdentityError::SignatureInvalid("no public key can be recovered from it"))?;
    Ok(address_of(&key))
}

fn address_of(key: &VerifyingKey) -> Address {
    let point = key.to_encoded_point(false);
    // An uncompressed SEC1 encoding is always 65 bytes starting with 0x04.
    Address::from_uncompressed_public_key(point.as_bytes()).unwrap_or(Address::ZERO)
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::KeyFilePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &fs::Metadata) -> Result<(), IdentityError> {
    Ok(())
}

/// Writes `contents` to a new file at `path`, atomically and without replacing anything.
/// `Ok(false)` if `path` already exists.
fn create_exclusive(path: &Path, contents: &[u8]) -> Result<bool, IdentityError> {
    let io_err = |p: &Path, source| IdentityError::KeyFileIo {
        path: p.to_path_buf(),
        source,
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut dirs = fs::DirBuilder::new();
    dirs.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut dirs, 0o700);
    dirs.create(parent).map_err(|e| io_err(parent, e))?;

    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{:016x}", rand::rng().next_u64()));
    let tmp = parent.join(tmp_name);
    write_new(&tmp, contents).map_err(|e| io_err(&tmp, e))?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        // File systems without hard links: create the final name directly (still exclusive).
        Err(_) => match write_new(path, contents) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err(path, e)),
        },
    }
    // Make the new directory entry durable; not every platform can sync a directory.
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
    Ok(true)
}

fn write_new(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
