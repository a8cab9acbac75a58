//! The Mesh as written -> validated, and every way it can be wrong.

use super::*;

const GOOD: &str = "apiVersion: trellis.dev/v1alpha1
kind: Mesh
metadata: {name: shop}
spec:
  services:
  - name: front
    port: 8080
    command: [trellis-echo]
    labels: {tier: web}
  - name: reviews
    port: 9080
    protocol: grpc
    serviceAccount: rev
    health: {httpGet: /healthz, interval: 500ms}
    command: [trellis-echo, x]
    replicas: 2
    versions:
    - name: v1
    - name: v2
      command: [other]
      replicas: 1
      env: {MODEL: fast}
      labels: {track: canary}
";

fn mesh(text: &str) -> Result<Mesh, Vec<String>> {
    let p = parse_documents("m.yaml", text)
        .map_err(|es| es.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    assert_eq!(p.meshes.len(), 1, "{p:?}");
    Ok(p.meshes.into_iter().next().unwrap())
}

#[test]
fn a_good_mesh_gets_every_default() {
    let m = mesh(GOOD).unwrap();
    assert_eq!(m.name, "shop");
    assert_eq!(m.namespace, "default");
    assert_eq!(m.workload_count(), 4);
    let front = &m.services[0];
    assert_eq!(front.protocol, AppProtocol::Http);
    assert_eq!(front.service_account, "front");
    assert_eq!(front.health, Health::default());
    assert_eq!(front.deployments.len(), 1);
    let d = &front.deployments[0];
    assert_eq!(d.version, None);
    assert_eq!(d.replicas, 1);
    assert_eq!(d.workload_name("front", 0), "front-0");
    assert_eq!(
        d.labels,
        BTreeMap::from([
            ("app".into(), "front".into()),
            ("tier".into(), "web".into())
        ])
    );
    let r = &m.services[1];
    assert_eq!(r.protocol, AppProtocol::Grpc);
    assert_eq!(r.service_account, "rev");
    assert_eq!(r.health.http_get.as_deref(), Some("/healthz"));
    assert_eq!(r.health.interval, Duration::from_millis(500));
    assert_eq!(r.health.timeout, DEFAULT_TIMEOUT);
    let (v1, v2) = (&r.deployments[0], &r.deployments[1]);
    assert_eq!(v1.command, ["trellis-echo", "x"], "inherited");
    assert_eq!(v1.replicas, 2, "inherited");
    assert_eq!(v1.labels["version"], "v1");
    assert_eq!(v2.command, ["other"]);
    assert_eq!(v2.replicas, 1);
    assert_eq!(v2.env["MODEL"], "fast");
    assert_eq!(v2.labels["track"], "canary");
    assert_eq!(v2.workload_name("reviews", 0), "reviews-v2-0");
}

/// Each case: a change to one service, and what the single error must say.
#[test]
fn bad_meshes_name_file_service_field_and_reason() {
    let head = "apiVersion: trellis.dev/v1alpha1\nkind: Mesh\nmetadata: {name: shop}\nspec:\n  services:\n";
    let ok = "  - {name: front, port: 8080, command: [a]}\n";
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "missing command",
            "  - {name: b, port: 1}\n",
            &["spec.services[1].command", "service \"b\" has no command"],
        ),
        (
            "duplicate",
            "  - {name: front, port: 81, command: [a]}\n",
            &["spec.services[1].name", "\"front\" is defined twice"],
        ),
        (
            "unknown field",
            "  - {name: b, port: 1, comand: [a]}\n",
            &["spec.services[1].comand", "service \"b\"", "unknown field"],
        ),
        (
            "port out of range",
            "  - {name: b, port: 70000, command: [a]}\n",
            &["spec.services[1].port", "service \"b\""],
        ),
        (
            "port 0",
            "  - {name: b, port: 0, command: [a]}\n",
            &["spec.services[1].port", "port 0"],
        ),
        (
            "sidecar port",
            "  - {name: b, port: 15001, command: [a]}\n",
            &["spec.services[1].port", "taken by the sidecar"],
        ),
        (
            "protocol",
            "  - {name: b, port: 1, protocol: udp, command: [a]}\n",
            &["spec.services[1].protocol", "unknown protocol \"udp\""],
        ),
        (
            "replicas 0",
            "  - {name: b, port: 1, replicas: 0, command: [a]}\n",
            &["spec.services[1].replicas", "out of range"],
        ),
        (
            "empty command",
            "  - {name: b, port: 1, command: []}\n",
            &["spec.services[1].command", "the command is empty"],
        ),
        (
            "bad name",
            "  - {name: B_x, port: 1, command: [a]}\n",
            &["spec.services[1].name", "not a valid service name"],
        ),
        (
            "version without name",
            "  - {name: b, port: 1, command: [a], versions: [{replicas: 1}]}\n",
            &["spec.services[1].versions[0].name", "has no name"],
        ),
        (
            "version without command",
            "  - {name: b, port: 1, versions: [{name: v1}]}\n",
            &["spec.services[1].versions[0].command", "has no command"],
        ),
        (
            "duplicate version",
            "  - {name: b, port: 1, command: [a], versions: [{name: v1}, {name: v1}]}\n",
            &["spec.services[1].versions[1].name", "listed twice"],
        ),
        (
            "contradicting version label",
            "  - {name: b, port: 1, command: [a], versions: [{name: v1, labels: {version: v2}}]}\n",
            &["versions[0].labels.version", "contradict"],
        ),
        (
            "app label",
            "  - {name: b, port: 1, command: [a], labels: {app: c}}\n",
            &["spec.services[1].labels.app", "sets app: b"],
        ),
        (
            "reserved env",
            "  - {name: b, port: 1, command: [a], env: {HTTP_PROXY: x}}\n",
            &["spec.services[1].env.HTTP_PROXY", "set by trellis up"],
        ),
        (
            "health both",
            "  - {name: b, port: 1, command: [a], health: {httpGet: /h, tcp: true}}\n",
            &["spec.services[1].health", "not both"],
        ),
        (
            "health path",
            "  - {name: b, port: 1, command: [a], health: {httpGet: h}}\n",
            &["spec.services[1].health.httpGet", "must start with '/'"],
        ),
        (
            "health interval",
            "  - {name: b, port: 1, command: [a], health: {interval: soon}}\n",
            &["spec.services[1].health.interval", "invalid duration"],
        ),
        (
            "threshold",
            "  - {name: b, port: 1, command: [a], health: {unhealthyThreshold: 0}}\n",
            &["unhealthyThreshold", "1 or more"],
        ),
    ];
    for (what, svc, needles) in cases {
        let errs = mesh(&format!("{head}{ok}{svc}")).expect_err(what);
        assert_eq!(errs.len(), 1, "{what}: {errs:#?}");
        let e = &errs[0];
        assert!(e.starts_with("m.yaml: Mesh shop: "), "{what}: {e}");
        for n in *needles {
            assert!(e.contains(n), "{what}: {e:?} lacks {n:?}");
        }
    }
}

#[test]
fn mesh_level_errors() {
    let errs = mesh("apiVersion: trellis.dev/v1alpha1\nkind: Mesh\nmetadata: {name: shop}\nspec: {services: []}\n").unwrap_err();
    assert!(
        errs[0].contains("spec.services: a Mesh needs at least one service"),
        "{errs:?}"
    );
    let errs = mesh(
        "apiVersion: trellis.dev/v1\nkind: Mesh\nmetadata: {name: shop}\nspec: {services: []}\n",
    )
    .unwrap_err();
    assert!(errs[0].contains("apiVersion"), "{errs:?}");
    let errs = mesh("apiVersion: trellis.dev/v1alpha1\nkind: Mesh\nmetadata: {name: Shop}\nspec: {services: []}\n").unwrap_err();
    assert!(errs[0].contains("metadata.name"), "{errs:?}");
    let errs = mesh("apiVersion: trellis.dev/v1alpha1\nkind: Mesh\nmetadata: {name: s}\nspec: {services: [], extra: 1}\n").unwrap_err();
    assert!(errs[0].contains("spec.extra: unknown field"), "{errs:?}");
}

#[test]
fn a_control_plane_refuses_a_mesh() {
    let errs = crate::parse_documents("m.yaml", GOOD).unwrap_err();
    assert_eq!(errs.0.len(), 1);
    let e = errs.0[0].to_string();
    assert!(
        e.starts_with(
            "m.yaml: Mesh default/shop: kind: a Mesh is run by `trellis up`, not applied"
        ),
        "{e}"
    );
}

#[test]
fn load_generates_service_entries_unless_the_file_has_one() {
    let se = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: own}
spec:
  hosts: [reviews.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: grpc, protocol: GRPC}]
  workloadSelector: {labels: {app: reviews}}
";
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front}
spec:
  hosts: [front]
  http: [{route: [{destination: {host: front}}]}]
";
    let files = vec![
        ("m.yaml".to_string(), format!("{GOOD}---\n{vs}")),
        ("se.yaml".to_string(), se.to_string()),
    ];
    let l = load(&files).unwrap();
    assert_eq!(l.mesh.as_ref().unwrap().name, "shop");
    assert_eq!(l.generated.len(), 1, "{:?}", l.generated);
    let g = &l.generated[0];
    assert_eq!(g["metadata"]["name"], "front");
    assert_eq!(g["spec"]["hosts"], json!(["front"]));
    assert_eq!(g["spec"]["location"], "MESH_INTERNAL");
    assert_eq!(
        g["spec"]["ports"],
        json!([{"number": 8080, "name": "http", "protocol": "HTTP"}])
    );
    assert_eq!(
        g["spec"]["workloadSelector"]["labels"],
        json!({"app": "front"})
    );
    assert_eq!(l.set.service_entries.len(), 2);
    assert_eq!(l.set.virtual_services.len(), 1);
    assert_eq!(l.files[0].1.len(), 1, "the Mesh is not a document to apply");

    // Without the Mesh the VirtualService routes to nothing: the generated
    // ServiceEntry is what makes the file valid.
    let errs = load(&[("vs.yaml".to_string(), vs.to_string())]).unwrap_err();
    assert!(
        errs.0[0].to_string().contains("matches no ServiceEntry"),
        "{errs:?}"
    );

    let two = load(&[
        ("a.yaml".to_string(), GOOD.to_string()),
        ("b.yaml".to_string(), GOOD.to_string()),
    ])
    .unwrap_err();
    assert!(
        two.0[0]
            .to_string()
            .contains("b.yaml: Mesh shop: -: a second Mesh"),
        "{two:?}"
    );
}
