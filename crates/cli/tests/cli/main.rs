//! `trellis control` and the CLI verbs through the real binary, on loopback
//! with port 0, each test in its own temp dirs.

mod authz;
mod ca_proxy;
mod envoy;
mod identity;
mod mtls;
mod outage;
mod proxyless;
mod support;
mod up;
mod verbs;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::{Control, SE, eventually, trellis, vs, write};

#[test]
fn apply_get_and_restart_keep_resources() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    write(files.path(), "10-se.yaml", SE);
    write(files.path(), "20-vs.yaml", &vs("reviews", 80));
    let dir = files.path().to_str().unwrap();

    let control = Control::start(data.path(), &[]);
    assert!(
        control.started_in < Duration::from_secs(3),
        "started in {:?}",
        control.started_in
    );
    let logs = control.logs();
    assert!(logs.contains("listening") && logs.contains("api"), "{logs}");

    // Two generations of the VirtualService (what `apply` prints for each
    // step is verbs.rs's test).
    control.cli(&["apply", "-f", dir]).ok();
    write(files.path(), "20-vs.yaml", &vs("reviews", 50));
    control.cli(&["apply", "-f", dir]).ok();

    let v = control
        .cli(&["get", "vs", "reviews", "-o", "json"])
        .ok()
        .json();
    assert_eq!(v["kind"], "VirtualService");
    assert_eq!(v["metadata"]["generation"], 2);
    assert_eq!(v["spec"]["http"][0]["route"][0]["weight"], 50);
    assert_eq!(v["status"]["accepted"], true);
    assert_eq!(v["status"]["source"], "api");
    assert_eq!(v["status"]["proxies"], serde_json::json!([]));
    let list = control
        .cli(&["get", "serviceentries", "-o", "json"])
        .ok()
        .json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let table = control.cli(&["get", "all"]).ok().stdout;
    assert!(
        table.contains("VirtualService") && table.contains("Accepted"),
        "{table}"
    );

    // SIGTERM: a clean exit; the data survives a restart.
    let status = control.stop("TERM");
    assert!(status.success(), "exit status {status}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(data.path()), 0o700);
    assert_eq!(mode(&data.path().join("store.redb")), 0o600);

    let control = Control::start(data.path(), &[]);
    let v = control
        .cli(&["get", "vs", "reviews", "-o", "json"])
        .ok()
        .json();
    assert_eq!(v["metadata"]["generation"], 2);
    let yaml = control.cli(&["get", "all", "-o", "yaml"]).ok().stdout;
    assert!(
        yaml.contains("kind: ServiceEntry") && yaml.contains("10.0.0.2"),
        "{yaml}"
    );
    // What `get -o yaml` prints applies again, unchanged.
    let again = write(files.path(), "again.yaml", &yaml);
    let out = control.cli(&["apply", "-f", again.to_str().unwrap()]).ok();
    assert_eq!(
        out.stdout,
        "ServiceEntry default/reviews unchanged\nVirtualService default/reviews unchanged\n"
    );
    assert!(control.stop("INT").success());
}

#[test]
fn an_invalid_apply_names_the_problem_and_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    let se = write(files.path(), "se.yaml", SE);
    control.cli(&["apply", "-f", se.to_str().unwrap()]).ok();

    let bad = write(
        files.path(),
        "bad.yaml",
        &format!(
            "{}---\n{}",
            vs("good", 100),
            vs("bad", 90).replace("weight: 10", "weight: 20")
        ),
    );
    let bad = bad.to_str().unwrap();
    let out = control.cli(&["apply", "-f", bad]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        out.stderr
            .starts_with("error: the change was rejected (1 error); nothing was applied\n"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(&format!(
            "{bad}: VirtualService default/bad: spec.http[0].route: "
        )),
        "{out:?}"
    );
    // Nothing changed: not even the valid resource of the same apply.
    let out = control.cli(&["get", "vs", "good"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("VirtualService default/good not found"),
        "{out:?}"
    );
    let list = control.cli(&["get", "all", "-o", "json"]).ok().json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // A YAML error names the file too.
    let broken = write(files.path(), "broken.yaml", "kind: [oops");
    let out = control.cli(&["apply", "-f", broken.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("broken.yaml: -: -: not valid YAML"),
        "{out:?}"
    );

    // --dry-run validates and reports, and changes nothing.
    let good = write(files.path(), "good.yaml", &vs("good", 100));
    let out = control
        .cli(&["apply", "--dry-run", "-f", good.to_str().unwrap()])
        .ok();
    assert_eq!(
        out.stdout,
        "VirtualService default/good created (dry run)\n"
    );
    assert_eq!(control.cli(&["get", "vs", "good"]).code, 1);
}

#[test]
fn a_second_virtual_service_for_a_host_is_accepted_but_not_in_effect() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    let first = write(
        files.path(),
        "first.yaml",
        &format!("{SE}---\n{}", vs("reviews", 100)),
    );
    control.cli(&["apply", "-f", first.to_str().unwrap()]).ok();
    let second = write(files.path(), "second.yaml", &vs("reviews-canary", 0));
    let out = control.cli(&["apply", "-f", second.to_str().unwrap()]).ok();
    assert_eq!(
        out.stdout,
        "VirtualService default/reviews-canary created, but not in effect: host reviews.default.svc.cluster.local \
         is already routed by VirtualService default/reviews, which is older; one VirtualService per host\n"
    );

    let loser = control
        .cli(&["get", "vs", "reviews-canary", "-o", "json"])
        .ok()
        .json();
    assert_eq!(loser["status"]["accepted"], false);
    assert_eq!(loser["status"]["conflicts"][0]["winner"]["name"], "reviews");
    assert_eq!(
        loser["status"]["conflicts"][0]["loser"]["name"],
        "reviews-canary"
    );
    let winner = control
        .cli(&["get", "vs", "reviews", "-o", "json"])
        .ok()
        .json();
    assert_eq!(winner["status"]["accepted"], true);
    let all = control.cli(&["get", "all", "-o", "json"]).ok().json();
    assert_eq!(all["conflicts"].as_array().unwrap().len(), 1);
    let table = control.cli(&["get", "vs"]).ok().stdout;
    assert!(
        table.contains("Conflict (loses to VirtualService default/reviews)"),
        "{table}"
    );

    // Deleting the winner puts the other in effect.
    let out = control.cli(&["delete", "vs", "reviews"]).ok();
    assert_eq!(out.stdout, "VirtualService default/reviews deleted\n");
    let v = control
        .cli(&["get", "vs", "reviews-canary", "-o", "json"])
        .ok()
        .json();
    assert_eq!(v["status"]["accepted"], true);
}

#[test]
fn delete_refuses_to_break_what_depends_on_a_resource() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    let f = write(
        files.path(),
        "all.yaml",
        &format!("{SE}---\n{}", vs("reviews", 100)),
    );
    control.cli(&["apply", "-f", f.to_str().unwrap()]).ok();

    let out = control.cli(&["delete", "serviceentry", "reviews"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("deleting ServiceEntry default/reviews was rejected: the rest of the config depends on it"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(
            "api: VirtualService default/reviews: spec.http[0].route[0].destination.host:"
        ),
        "{out:?}"
    );
    control.cli(&["get", "se", "reviews"]).ok();

    control.cli(&["delete", "vs", "reviews"]).ok();
    control
        .cli(&["delete", "se", "reviews", "-n", "default"])
        .ok();
    let out = control.cli(&["get", "se"]).ok();
    assert!(
        out.stderr
            .contains("No resources found in default namespace."),
        "{out:?}"
    );
    let out = control.cli(&["delete", "se", "reviews"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("ServiceEntry default/reviews not found"),
        "{out:?}"
    );
}

#[test]
fn config_directory_resources_appear_and_follow_edits() {
    let data = tempfile::tempdir().unwrap();
    let cfg = tempfile::tempdir().unwrap();
    let se_path = write(cfg.path(), "se.yaml", SE);
    let control = Control::start(data.path(), &["--config-dir", cfg.path().to_str().unwrap()]);
    let v = control
        .cli(&["get", "se", "reviews", "-o", "json"])
        .ok()
        .json();
    assert_eq!(v["status"]["source"], se_path.to_str().unwrap());
    assert_eq!(v["metadata"]["generation"], 1);

    // An API resource may route to a file's service.
    let files = tempfile::tempdir().unwrap();
    let f = write(files.path(), "vs.yaml", &vs("reviews", 100));
    control.cli(&["apply", "-f", f.to_str().unwrap()]).ok();

    // An edit is picked up.
    write(cfg.path(), "se.yaml", &SE.replace("10.0.0.2", "10.0.0.3"));
    let v = eventually("the edited ServiceEntry", || {
        let v = control
            .cli(&["get", "se", "reviews", "-o", "json"])
            .ok()
            .json();
        (v["metadata"]["generation"] == 2).then_some(v)
    });
    assert_eq!(v["spec"]["endpoints"][1]["address"], "10.0.0.3");

    // A new file adds resources.
    write(
        cfg.path(),
        "dr.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec: {host: reviews}\n",
    );
    eventually("the new DestinationRule", || {
        (control.cli(&["get", "dr", "reviews"]).code == 0).then_some(())
    });

    // Removing the ServiceEntry would break the API's VirtualService: the
    // change is rejected and the previous files stay in effect.
    std::fs::remove_file(&se_path).unwrap();
    let out = eventually("the rejected change to be reported", || {
        let out = control.cli(&["get", "all"]).ok();
        out.stderr
            .contains("config directory change was rejected")
            .then_some(out)
    });
    assert!(
        out.stderr.contains("VirtualService default/reviews"),
        "{out:?}"
    );
    control.cli(&["get", "se", "reviews"]).ok();

    // The API cannot change a file's resource.
    let f = write(files.path(), "se.yaml", SE);
    let out = control.cli(&["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("is defined in the config directory"),
        "{out:?}"
    );
}

#[test]
fn check_validates_offline() {
    let files = tempfile::tempdir().unwrap();
    write(files.path(), "se.yaml", SE);
    write(files.path(), "vs.yaml", &vs("reviews", 100));
    let dir = files.path().to_str().unwrap();
    // No control plane anywhere: the server flag is not even accepted.
    let out = trellis(&["check", "-f", dir]).ok();
    assert_eq!(out.stdout, "2 resources in 2 files are valid\n");

    let bad = write(files.path(), "zz-bad.yaml", &vs("other", 70));
    let out = trellis(&["check", "-f", dir]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: "), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "{}: VirtualService default/other: spec.hosts[0]: ",
            bad.display()
        )),
        "{out:?}"
    );
    let out = trellis(&["check", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("spec.http[0].route"), "{out:?}");
}

#[test]
fn an_unreachable_control_plane_is_one_clear_sentence() {
    // Bind and drop a port so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let out = trellis(&["get", "vs", "--server", &server]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        format!(
            "error: cannot reach the control plane at {server}: connection refused; is `trellis control` running?\n"
        )
    );
    let out = trellis(&["get", "nonsense", "--server", &server]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("unknown kind \"nonsense\""), "{out:?}");
}

#[test]
fn a_second_control_plane_on_one_data_dir_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let _first = Control::start(data.path(), &[]);
    let err = Control::try_start(data.path(), &[])
        .err()
        .expect("the second must not start");
    assert!(err.contains("in use by another `trellis control`"), "{err}");
}

#[test]
fn the_http_api_speaks_json_with_detailed_errors() {
    let data = tempfile::tempdir().unwrap();
    let control = Control::start(data.path(), &[]);
    let api = &control.api;
    let json = |s: &str| -> serde_json::Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
    };

    let (status, ct, body) = support::http(api, "GET", "/healthz", "text/plain", "");
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    assert_eq!(json(&body)["status"], "ok");

    // A raw YAML body, named by ?file= in errors.
    let text = format!("{SE}---\n{}", vs("reviews", 100));
    let (status, _, body) = support::http(
        api,
        "POST",
        "/api/v1/apply?file=mesh.yaml",
        "application/yaml",
        &text,
    );
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["dryRun"], false);
    assert_eq!(v["results"][1]["action"], "created");
    assert_eq!(v["results"][1]["kind"], "VirtualService");

    let bad = vs("reviews", 100).replace("weight: 0", "weight: 5");
    let (status, ct, body) = support::http(
        api,
        "POST",
        "/api/v1/apply?file=bad.yaml",
        "application/yaml",
        &bad,
    );
    assert_eq!((status, ct.as_str()), (422, "application/json"));
    let v = json(&body);
    assert_eq!(
        v["error"],
        "the change was rejected (1 error); nothing was applied"
    );
    assert_eq!(
        v["details"][0],
        serde_json::json!({
            "file": "bad.yaml",
            "resource": "VirtualService default/reviews",
            "field": "spec.http[0].route",
            "reason": v["details"][0]["reason"],
        })
    );
    assert!(
        v["details"][0]["reason"].as_str().unwrap().contains("105"),
        "{v}"
    );

    let (status, _, body) = support::http(
        api,
        "GET",
        "/api/v1/resources/virtualservices/default/reviews",
        "",
        "",
    );
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(v["status"]["generation"], 1);
    assert_eq!(v["spec"]["http"][0]["route"][0]["weight"], 100);

    let (status, _, body) = support::http(api, "GET", "/api/v1/resources/Gateway", "", "");
    assert_eq!(status, 404);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .starts_with("unknown kind \"Gateway\""),
        "{body}"
    );
    let (status, _, body) = support::http(
        api,
        "DELETE",
        "/api/v1/resources/se/default/reviews",
        "",
        "",
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        json(&body)["details"][0]["resource"],
        "VirtualService default/reviews"
    );
    let (status, _, body) = support::http(api, "GET", "/nowhere", "", "");
    assert_eq!(status, 404);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("docs/api.md")
    );

    let (status, _, body) = support::http(api, "GET", "/metrics", "", "");
    assert_eq!(status, 200);
    for line in [
        "trellis_control_resources{kind=\"VirtualService\",accepted=\"true\"} 1",
        "trellis_control_applies_total{result=\"accepted\"} 1",
        "trellis_control_applies_total{result=\"rejected\"} 1",
        "trellis_control_deletes_total{result=\"rejected\"} 1",
    ] {
        assert!(body.contains(line), "{line} in\n{body}");
    }
}
