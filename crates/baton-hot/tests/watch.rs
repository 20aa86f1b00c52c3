//! The watcher: a change in content swaps; a touch or an identical save
//! does nothing; a broken save keeps the old version serving.

#![expect(
    clippy::unwrap_used,
    reason = "in tests a failed unwrap is a failed test, with its location"
)]

mod common;

use common::{Wat, eventually, handle, host, read_log, save};

#[test]
fn the_watcher_swaps_on_new_content_and_ignores_touches_identical_and_broken_saves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.wat");
    save(&path, &Wat::new("v1").text());
    let host = host(dir.path(), |_| {});
    let m = host.load(&path).unwrap();
    let _watcher = host.watch(&[]).unwrap();
    let version = || host.module_status(&m).current.unwrap().version;

    save(&path, &Wat::new("v2").text());
    eventually("version 2", || version() == 2);
    assert_eq!(handle(&host, &m, "").unwrap().value, "v2");

    // A touch, then an identical save: each is looked at (the file is
    // fingerprinted again) and changes nothing.
    let checks = || host.module_status(&m).checks;
    let before = checks();
    let f = std::fs::File::options().append(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    drop(f);
    eventually("the touch to be looked at", || checks() > before);
    assert_eq!(version(), 2);
    let before = checks();
    save(&path, &Wat::new("v2").text());
    eventually("the identical save to be looked at", || checks() > before);
    assert_eq!(version(), 2);
    // A broken save is refused; the next good one makes version 3.
    save(&path, "(component (broken");
    eventually("the broken save to be rejected", || {
        host.module_status(&m).last_rejected.is_some()
    });
    assert_eq!(handle(&host, &m, "").unwrap().value, "v2");
    save(&path, &Wat::new("v3").text());
    eventually("version 3", || version() == 3);
    let answer = handle(&host, &m, "").unwrap();
    assert_eq!((answer.value.as_str(), answer.version), ("v3", 3));
    let log = read_log(dir.path());
    assert_eq!(log.matches(" current, fingerprint").count(), 3, "{log}");
    assert_eq!(log.matches("rejected at compile").count(), 1, "{log}");
}
