//! The server's key file (IP encryption and audit hashes): created once even when instances
//! start at once, refused when others may read it, and never committed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use trailmark_examples::{load_or_create_key_file, load_or_create_keys, rotate_id_key};

#[test]
fn instances_starting_at_once_get_the_same_keys() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("shared-{round}.keys"));
        let barrier = std::sync::Barrier::new(8);
        let keys: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        load_or_create_keys(&path, None)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap().expect("keys")).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]), "round {round}: instances got different keys");
        assert_ne!(keys[0].0, keys[0].1, "two independent keys");
        // Read back on a later start, unchanged; no temporary file left behind.
        assert_eq!(load_or_create_keys(&path, None).unwrap(), keys[0]);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn a_key_file_others_may_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.keys");
    let keys = load_or_create_keys(&path, None).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = load_or_create_keys(&path, None).expect_err("refused");
        assert!(err.contains("chmod 600") && err.contains(&format!("{mode:o}")), "{mode:o}: {err}");
        // Refused, not replaced: the keys are still the same once the mode is fixed.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_or_create_keys(&path, None).unwrap(), keys);
    }
    std::fs::write(dir.path().join("bad.keys"), "not hex").unwrap();
    std::fs::set_permissions(dir.path().join("bad.keys"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = load_or_create_keys(&dir.path().join("bad.keys"), None).expect_err("refused");
    assert!(err.contains("not 64 hex-encoded bytes"), "{err}");
}

/// A rotation adds an identifier key (the next version) and keeps the others and the IP and
/// audit keys; the file stays private; malformed key lines are refused.
#[test]
fn rotating_adds_an_identifier_key_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.keys");
    assert!(rotate_id_key(&path).unwrap_err().contains("no key file"));
    let before = load_or_create_key_file(&path, None).unwrap();
    assert!(before.id.is_empty(), "version 1 is derived, not listed");
    assert_eq!(rotate_id_key(&path).unwrap(), 2);
    assert_eq!(rotate_id_key(&path).unwrap(), 3);
    let after = load_or_create_key_file(&path, None).unwrap();
    assert_eq!((after.ip, after.audit), (before.ip, before.audit));
    assert_eq!(after.id.iter().map(|k| k.version).collect::<Vec<_>>(), vec![2, 3]);
    assert_ne!(after.id[0].key, after.id[1].key);
    assert_eq!(load_or_create_keys(&path, None).unwrap(), (before.ip, before.audit), "old readers still work");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");

    let text = std::fs::read_to_string(&path).unwrap();
    let first = text.lines().next().unwrap().to_owned();
    for (bad, why) in [
        (format!("{first}\nid 0 {}\n", "a".repeat(64)), "not `id"),
        (format!("{first}\nid 2 abc\n"), "not `id"),
        (format!("{first}\nkey 2 {}\n", "a".repeat(64)), "not `id"),
        (format!("{first}\nid 2 {k}\nid 2 {k}\n", k = "a".repeat(64)), "listed twice"),
    ] {
        std::fs::write(&path, &bad).unwrap();
        let err = load_or_create_key_file(&path, None).expect_err("refused");
        assert!(err.contains(why), "{bad:?}: {err}");
    }
}

#[test]
fn no_key_file_is_committed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let Ok(out) = std::process::Command::new("git").arg("-C").arg(root).args(["ls-files", "-z"]).output() else {
        eprintln!("git is not available; skipped");
        return;
    };
    if !out.status.success() {
        eprintln!("not a git checkout; skipped");
        return;
    }
    let committed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .filter(|f| f.ends_with(".keys") || f.contains(".keys."))
        .map(str::to_owned)
        .collect();
    assert!(committed.is_empty(), "key files in git: {committed:?}");
    let ignored = std::fs::read_to_string(root.join(".gitignore")).unwrap();
    assert!(ignored.lines().any(|l| l.trim() == "*.keys"), ".gitignore must ignore *.keys");
}
