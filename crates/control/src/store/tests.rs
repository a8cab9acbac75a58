//! The store against a real redb file in a temp dir.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use trellis_model::resource::Kind;

use super::*;

const SE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec: {hosts: [reviews], resolution: STATIC, ports: [{number: 9080, name: http}],
       endpoints: [{address: 10.0.0.1, labels: {version: v1}}, {address: 10.0.0.2, labels: {version: v2}}]}
";

fn vs(name: &str, weight_v1: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews}}, weight: {weight_v1}}}
    - {{destination: {{host: reviews}}, weight: {}}}
",
        100 - weight_v1
    )
}

fn incoming(file: &str, text: &str) -> Vec<Incoming> {
    trellis_model::parse_documents_raw(file, text)
        .unwrap_or_else(|e| panic!("{file} should parse: {e}"))
        .into_iter()
        .map(|doc| Incoming {
            file: file.to_string(),
            doc,
        })
        .collect()
}

fn open(dir: &Path) -> Store {
    open_with(dir, None)
}

fn open_with(dir: &Path, files: Option<Vec<Document>>) -> Store {
    Store::open(&dir.join("store.redb"), files, Arc::new(Metrics::new()))
        .unwrap_or_else(|e| panic!("store should open: {e}"))
}

fn key(kind: Kind, name: &str) -> Key {
    Key::new(kind, "default", name)
}

fn actions(r: &[Applied]) -> Vec<(String, Action)> {
    r.iter().map(|a| (a.key.to_string(), a.action)).collect()
}

#[test]
fn applied_resources_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path());
        let text = format!("{SE}---\n{}", vs("reviews", 80));
        let r = s.apply(incoming("r.yaml", &text), false).unwrap();
        assert_eq!(
            actions(&r),
            [
                ("ServiceEntry default/reviews".into(), Action::Created),
                ("VirtualService default/reviews".into(), Action::Created)
            ]
        );
        assert!(
            r.iter()
                .all(|a| a.status.accepted && a.status.source == "api")
        );
    }
    let mode = std::fs::metadata(dir.path().join("store.redb"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the database file is private");

    let mut s = open(dir.path());
    let (e, st) = s.get(&key(Kind::VirtualService, "reviews")).unwrap();
    assert_eq!((e.generation, st.accepted), (1, true));
    assert_eq!(s.snapshot().resources.virtual_services.len(), 1);

    let r = s
        .apply(incoming("r.yaml", &vs("reviews", 80)), false)
        .unwrap();
    assert_eq!(r[0].action, Action::Unchanged);
    let r = s
        .apply(incoming("r.yaml", &vs("reviews", 50)), false)
        .unwrap();
    assert_eq!(r[0].action, Action::Configured);
    assert_eq!(r[0].status.generation, 2);
    drop(s);
    let s = open(dir.path());
    let (e, _) = s.get(&key(Kind::VirtualService, "reviews")).unwrap();
    assert_eq!(e.generation, 2);
    assert_eq!(e.document["spec"]["http"][0]["route"][0]["weight"], 50);
}

#[test]
fn an_invalid_apply_changes_nothing_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.apply(incoming("se.yaml", SE), false).unwrap();
    let generation = s.snapshot().generation;
    let bad = format!(
        "{}---\n{}",
        vs("ok", 100),
        vs("bad", 100).replace("weight: 0", "weight: 7")
    );
    let err = s.apply(incoming("bad.yaml", &bad), false).unwrap_err();
    let details = err.details();
    assert!(
        details.iter().any(|e| e.file == "bad.yaml"
            && e.resource == "VirtualService default/bad"
            && e.field == "spec.http[0].route"),
        "{details:?}"
    );
    assert!(err.to_string().contains("nothing was applied"), "{err}");
    assert_eq!(s.snapshot().generation, generation);
    assert!(s.get(&key(Kind::VirtualService, "ok")).is_none());
    drop(s);
    assert!(
        open(dir.path())
            .get(&key(Kind::VirtualService, "ok"))
            .is_none()
    );
}

#[test]
fn the_oldest_of_two_virtual_services_wins_until_it_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let mut rx = s.subscribe();
    s.apply(
        incoming("a.yaml", &format!("{SE}---\n{}", vs("first", 100))),
        false,
    )
    .unwrap();
    let r = s
        .apply(incoming("b.yaml", &vs("second", 0)), false)
        .unwrap();
    assert_eq!(r[0].action, Action::Created);
    assert!(!r[0].status.accepted);
    let c = &r[0].status.conflicts[0];
    assert_eq!(c.winner.name, "first");
    assert!(
        c.reason
            .contains("already routed by VirtualService default/first"),
        "{}",
        c.reason
    );
    let snap = rx.borrow_and_update().clone();
    assert_eq!(snap.resources.virtual_services[0].metadata.name, "first");
    assert_eq!(snap.resources.virtual_services.len(), 1);
    let (_, first) = s.get(&key(Kind::VirtualService, "first")).unwrap();
    assert!(first.accepted && first.conflicts.len() == 1);

    // Order survives a restart: "first" still wins.
    drop(s);
    let mut s = open(dir.path());
    assert!(
        !s.get(&key(Kind::VirtualService, "second"))
            .unwrap()
            .1
            .accepted
    );

    s.delete(&key(Kind::VirtualService, "first"), false)
        .unwrap();
    let (_, second) = s.get(&key(Kind::VirtualService, "second")).unwrap();
    assert!(second.accepted && second.conflicts.is_empty());
    assert_eq!(
        s.snapshot().resources.virtual_services[0].metadata.name,
        "second"
    );
}

#[test]
fn a_losing_resource_is_still_validated() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.apply(
        incoming("a.yaml", &format!("{SE}---\n{}", vs("first", 100))),
        false,
    )
    .unwrap();
    let broken =
        vs("second", 100).replace("host: reviews}, weight: 0", "host: nowhere}, weight: 0");
    let err = s.apply(incoming("b.yaml", &broken), false).unwrap_err();
    assert!(
        err.details()
            .iter()
            .any(|e| e.resource == "VirtualService default/second" && e.file == "b.yaml"),
        "{:?}",
        err.details()
    );
}

#[test]
fn deleting_what_others_depend_on_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.apply(
        incoming("a.yaml", &format!("{SE}---\n{}", vs("reviews", 100))),
        false,
    )
    .unwrap();
    let err = s
        .delete(&key(Kind::ServiceEntry, "reviews"), false)
        .unwrap_err();
    assert!(err.to_string().contains("depends on it"), "{err}");
    assert!(
        err.details()
            .iter()
            .any(|e| e.resource == "VirtualService default/reviews"),
        "{:?}",
        err.details()
    );
    assert!(s.get(&key(Kind::ServiceEntry, "reviews")).is_some());
    assert!(matches!(
        s.delete(&key(Kind::ServiceEntry, "nope"), false),
        Err(StoreError::NotFound { .. })
    ));
    // Dry runs change nothing.
    s.delete(&key(Kind::VirtualService, "reviews"), true)
        .unwrap();
    assert!(s.get(&key(Kind::VirtualService, "reviews")).is_some());
    s.delete(&key(Kind::VirtualService, "reviews"), false)
        .unwrap();
    s.delete(&key(Kind::ServiceEntry, "reviews"), false)
        .unwrap();
    assert_eq!(s.list(None, None).len(), 0);
}

#[test]
fn config_directory_resources_join_the_api_ones() {
    let dir = tempfile::tempdir().unwrap();
    let files = trellis_model::parse_documents_raw("/cfg/se.yaml", SE).unwrap();
    let mut s = open_with(dir.path(), Some(files.clone()));
    s.apply(incoming("vs.yaml", &vs("reviews", 100)), false)
        .unwrap();
    let (e, st) = s.get(&key(Kind::ServiceEntry, "reviews")).unwrap();
    assert_eq!((st.source.as_str(), e.generation), ("/cfg/se.yaml", 1));

    // The API cannot change a file's resource.
    let err = s.apply(incoming("se.yaml", SE), false).unwrap_err();
    assert!(
        err.details()[0]
            .reason
            .contains("defined in the config directory"),
        "{err}"
    );
    assert!(matches!(
        s.delete(&key(Kind::ServiceEntry, "reviews"), false),
        Err(StoreError::ManagedByFile { .. })
    ));

    // Removing the file's ServiceEntry would break the API's VirtualService.
    let err = s.set_files(Vec::new()).unwrap_err();
    assert!(
        err.to_string().contains("previous files stay in effect"),
        "{err}"
    );
    assert!(s.file_errors().is_some());
    assert!(s.get(&key(Kind::ServiceEntry, "reviews")).is_some());

    // An edit bumps the generation; the creation order stays.
    let edited = SE.replace("10.0.0.2", "10.0.0.3");
    let docs = trellis_model::parse_documents_raw("/cfg/se.yaml", &edited).unwrap();
    let change = s.set_files(docs.clone()).unwrap();
    assert_eq!(change.configured, [key(Kind::ServiceEntry, "reviews")]);
    assert!(s.file_errors().is_none());
    let (e, _) = s.get(&key(Kind::ServiceEntry, "reviews")).unwrap();
    let (order, created) = (e.order, e.created_ms);
    assert_eq!(e.generation, 2);
    // Files are not written to the database: without them the API's
    // VirtualService has no service, and the store refuses to start.
    drop(s);
    let err = Store::open(
        &dir.path().join("store.redb"),
        Some(Vec::new()),
        Arc::new(Metrics::new()),
    )
    .unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    let s = open_with(dir.path(), Some(docs));
    let (e, _) = s.get(&key(Kind::ServiceEntry, "reviews")).unwrap();
    assert_eq!((e.order, e.created_ms, e.generation), (order, created, 2));
}

#[test]
fn a_file_shadows_an_api_resource_of_the_same_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_with(dir.path(), Some(Vec::new()));
    s.apply(incoming("se.yaml", SE), false).unwrap();
    let files = trellis_model::parse_documents_raw("/cfg/se.yaml", SE).unwrap();
    s.set_files(files).unwrap();
    let list = s.list(Some(Kind::ServiceEntry), None);
    assert_eq!(list.len(), 2);
    let (api, st) = &list[0];
    assert_eq!(api.source(), "api");
    assert!(!st.accepted);
    assert!(
        st.conflicts[0].reason.contains("takes precedence"),
        "{:?}",
        st.conflicts
    );
    assert!(list[1].1.accepted);
    assert_eq!(s.snapshot().resources.service_entries.len(), 1);
}

#[test]
fn duplicates_within_one_apply_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let err = s
        .apply(incoming("d.yaml", &format!("{SE}---\n{SE}")), false)
        .unwrap_err();
    assert!(err.details()[0].reason.contains("appears twice"), "{err:?}");
}

#[test]
fn dry_runs_report_without_changing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let r = s.apply(incoming("se.yaml", SE), true).unwrap();
    assert_eq!(r[0].action, Action::Created);
    assert!(s.list(None, None).is_empty());
    assert_eq!(s.snapshot().generation, 1);
}

#[test]
fn a_second_store_on_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _s = open(dir.path());
    let err = Store::open(
        &dir.path().join("store.redb"),
        None,
        Arc::new(Metrics::new()),
    )
    .unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("another `trellis control`"));
}

#[test]
fn registrations_survive_a_reopen_and_are_not_config() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(store.registrations().unwrap().is_empty());
    let generation = store.snapshot().generation;
    store
        .save_registrations(&[
            ("a.default".into(), Some(b"one".to_vec())),
            ("b.default".into(), Some(b"two".to_vec())),
        ])
        .unwrap();
    // A later batch updates one and deletes the other; deleting what is
    // not there is fine.
    store
        .save_registrations(&[
            ("a.default".into(), Some(b"one again".to_vec())),
            ("b.default".into(), None),
            ("nobody".into(), None),
        ])
        .unwrap();
    store.save_registrations(&[]).unwrap();
    assert_eq!(
        store.snapshot().generation,
        generation,
        "not a config change"
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.registrations().unwrap(),
        vec![("a.default".to_string(), b"one again".to_vec())]
    );
}
