//! Key files: creation with mode 0600, reloading, refusal of files others can read, bad contents.

use std::fs;

use unfed_identity::{IdentityError, NodeKey};

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[cfg(unix)]
fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn create_then_reload_gives_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/node.key");
    let created = NodeKey::load_or_create(&path).unwrap();
    #[cfg(unix)]
    assert_eq!(mode(&path), 0o600);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("0x") && text.ends_with('\n') && text.len() == 67);
    let reloaded = NodeKey::load_or_create(&path).unwrap();
    assert_eq!(reloaded.address(), created.address());
    assert_eq!(NodeKey::load(&path).unwrap().address(), created.address());
    assert_eq!(reloaded.sign(b"m"), created.sign(b"m"));
    // No temporary files are left behind.
    assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
}

#[test]
fn existing_key_written_by_hand_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    fs::write(
        &path,
        "  4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318\r\n",
    )
    .unwrap();
    #[cfg(unix)]
    set_mode(&path, 0o400);
    let key = NodeKey::load_or_create(&path).unwrap();
    assert_eq!(
        key.address().to_string(),
        "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23"
    );
}

#[cfg(unix)]
#[test]
fn key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    let address = NodeKey::load_or_create(&path).unwrap().address();
    for bad in [0o644, 0o640, 0o604, 0o660, 0o602] {
        set_mode(&path, bad);
        let err = NodeKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, IdentityError::KeyFilePermissions { mode, .. } if mode == bad),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("has mode {bad:04o}"))
                && message.contains("must not be accessible by group or others")
                && message.contains("chmod 600"),
            "{message}"
        );
        assert!(!message.contains(&fs::read_to_string(&path).unwrap()[2..10]));
    }
    // The refused file was not replaced.
    set_mode(&path, 0o600);
    assert_eq!(NodeKey::load_or_create(&path).unwrap().address(), address);
}

#[test]
fn bad_key_file_contents_are_refused_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    for (name, contents) in [
        ("empty", String::new()),
        ("short", "0xabcdef".to_string()),
        ("garbage", "not a key at all, really".to_string()),
        ("large", "a".repeat(5000)),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, &contents).unwrap();
        #[cfg(unix)]
        set_mode(&path, 0o600);
        let err = NodeKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, IdentityError::KeyFileFormat { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(name));
        if !contents.is_empty() {
            assert!(!err.to_string().contains(&contents), "{name}");
        }
        // Refused files are left as they were.
        assert_eq!(fs::read_to_string(&path).unwrap(), contents);
    }
}

#[test]
fn a_directory_is_not_a_key_file() {
    let dir = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    set_mode(dir.path(), 0o700);
    let err = NodeKey::load_or_create(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn missing_file_is_an_io_error_for_load() {
    let dir = tempfile::tempdir().unwrap();
    let err = NodeKey::load(&dir.path().join("absent")).unwrap_err();
    assert!(matches!(err, IdentityError::KeyFileIo { .. }), "{err}");
}

#[test]
fn concurrent_creators_agree_on_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    let addresses: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| NodeKey::load_or_create(&path).map(|k| k.address())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first = *addresses[0].as_ref().unwrap();
    for a in &addresses {
        assert_eq!(*a.as_ref().unwrap(), first);
    }
    assert_eq!(NodeKey::load(&path).unwrap().address(), first);
}
