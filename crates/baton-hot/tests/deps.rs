//! Dependencies: a library's interface imported by other modules; a new
//! library version re-links every dependent as one set, or nothing changes.

#![expect(
    clippy::unwrap_used,
    reason = "in tests a failed unwrap is a failed test, with its location"
)]

mod common;

use baton_hot::{LoadError, Outcome, Stage};
use common::{Wat, handle, host, library, read_log, save};

fn user(marker: &str) -> String {
    let mut w = Wat::new(marker);
    w.uses_text = true;
    w.text()
}

#[test]
fn a_dependency_change_relinks_all_its_dependents_and_a_bad_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("text.wat");
    let (a, b) = (dir.path().join("a.wat"), dir.path().join("b.wat"));
    save(&lib, &library("hello"));
    save(&a, &user("a"));
    save(&b, &user("b"));
    let host = host(dir.path(), |_| {});
    let lib_m = host.load_library(&lib).unwrap();
    let am = host.load(&a).unwrap();
    let bm = host.load(&b).unwrap();
    assert_eq!(handle(&host, &am, "d").unwrap().value, "hello");
    assert_eq!(handle(&host, &bm, "d").unwrap().value, "hello");
    let s = host.module_status(&lib_m);
    assert!(s.library);
    assert_eq!(s.dependents.len(), 2);
    assert_eq!(
        host.module_status(&am).dependencies,
        [lib_m.path().to_owned()]
    );

    // A new library version: both dependents switch with it.
    save(&lib, &library("bonjour"));
    assert_eq!(host.reload(&lib_m).unwrap(), Outcome::Swapped(2));
    for m in [&am, &bm] {
        let answer = handle(&host, m, "d").unwrap();
        assert_eq!((answer.value.as_str(), answer.version), ("bonjour", 2));
    }
    let log = read_log(dir.path());
    assert!(log.contains("re-linked: dependency"), "{log}");

    // A library version that no longer exports the interface: the
    // dependents cannot link with it, so nothing switches.
    save(
        &lib,
        "(component (core module $m) (core instance (instantiate $m)))",
    );
    let LoadError::Rejected(r) = host.reload(&lib_m).unwrap_err() else {
        panic!("expected a rejection");
    };
    assert_eq!(r.stage, Stage::Dependent, "{r}");
    assert!(r.reason.contains("test:hot/text"), "{r}");
    // A library that does not compile: nothing switches either.
    save(&lib, "(component (garbage");
    let LoadError::Rejected(r) = host.reload(&lib_m).unwrap_err() else {
        panic!("expected a rejection");
    };
    assert_eq!(r.stage, Stage::Compile, "{r}");
    for m in [&am, &bm] {
        let answer = handle(&host, m, "d").unwrap();
        assert_eq!((answer.value.as_str(), answer.version), ("bonjour", 2));
    }
    assert_eq!(host.module_status(&lib_m).current.unwrap().version, 2);

    // A dependent's own new version links with the current library.
    save(&a, &user("a2"));
    assert_eq!(host.reload(&am).unwrap(), Outcome::Swapped(3));
    assert_eq!(handle(&host, &am, "").unwrap().value, "a2");
    assert_eq!(handle(&host, &am, "d").unwrap().value, "bonjour");
}

#[test]
fn a_library_cannot_be_called_and_entry_modules_provide_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("text.wat");
    save(&lib, &library("hi"));
    let host = host(dir.path(), |_| {});
    let lib_m = host.load_library(&lib).unwrap();
    assert!(matches!(
        handle(&host, &lib_m, ""),
        Err(baton_hot::CallError::Library { .. })
    ));
    assert!(matches!(host.load(&lib), Err(LoadError::Role { .. })));
}
