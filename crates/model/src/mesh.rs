//! The `Mesh` of `trellis up` (`apiVersion: trellis.dev/v1alpha1`): which
//! services to run on one machine, with the command, port, protocol,
//! replicas, versions, labels and health probe of each. It is not a
//! resource the control plane stores: `trellis up` runs it, and applies
//! the Istio-style resources of the same file (plus a generated
//! ServiceEntry per service) to the control plane it starts.
//!
//! It lives here, beside the other kinds, because `trellis check` must
//! validate it offline with the same errors (file, resource, field path,
//! reason), and the generated ServiceEntries must pass the same
//! validation as a written one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ConfigError, ConfigErrors};
use crate::load::{Document, parse_resource, parse_yaml, typed};
use crate::resource::ResourceSet;
use crate::validate::valid_label;

/// The kind's name in YAML.
pub const KIND: &str = "Mesh";

/// Ports a sidecar binds on every workload address: an app may not use them.
pub const SIDECAR_PORTS: [u16; 4] = [15000, 15001, 15006, 15008];

/// Most workloads one mesh may run: each needs its own loopback address.
pub const MAX_WORKLOADS: u32 = 250;

/// What `trellis up` does when the file does not say.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

// ---- as written ------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeshMeta {
    name: String,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted as kubectl writes it; spec.namespace decides"
    )]
    namespace: Option<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "accepted, not used")]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code, reason = "accepted, not used")]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MeshSpecRaw {
    #[serde(default)]
    namespace: Option<String>,
    services: Vec<ServiceRaw>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceRaw {
    name: String,
    port: u16,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    health: Option<HealthRaw>,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    replicas: Option<u32>,
    #[serde(default)]
    versions: Option<Vec<VersionRaw>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HealthRaw {
    #[serde(default)]
    http_get: Option<String>,
    #[serde(default)]
    tcp: Option<bool>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    healthy_threshold: Option<u32>,
    #[serde(default)]
    unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VersionRaw {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    replicas: Option<u32>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

// ---- validated -------------------------------------------------------------

/// A validated Mesh: every default filled in, every deployment explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    pub name: String,
    /// The file it came from, for errors found later (a port in use).
    pub source: String,
    pub namespace: String,
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// Where its index in the file is, for errors: `spec.services[i]`.
    pub field: String,
    pub port: u16,
    pub protocol: AppProtocol,
    pub service_account: String,
    pub health: Health,
    /// One per version, or a single one without a version.
    pub deployments: Vec<Deployment>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl AppProtocol {
    fn parse(s: &str) -> Option<AppProtocol> {
        Some(match s {
            "http" => AppProtocol::Http,
            "http2" => AppProtocol::Http2,
            "grpc" => AppProtocol::Grpc,
            "tcp" => AppProtocol::Tcp,
            _ => return None,
        })
    }

    /// The name as written (and the ServiceEntry port's name).
    pub fn name(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::Http2 => "http2",
            AppProtocol::Grpc => "grpc",
            AppProtocol::Tcp => "tcp",
        }
    }

    /// The ServiceEntry port's `protocol`.
    pub fn istio(self) -> &'static str {
        match self {
            AppProtocol::Http => "HTTP",
            AppProtocol::Http2 => "HTTP2",
            AppProtocol::Grpc => "GRPC",
            AppProtocol::Tcp => "TCP",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `None`: a TCP connect to the app's port.
    pub http_get: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            http_get: None,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        }
    }
}

/// One command run `replicas` times, all with the same labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// The version's name; `None` for a service without versions.
    pub version: Option<String>,
    pub command: Vec<String>,
    pub replicas: u32,
    pub env: BTreeMap<String, String>,
    /// Every label of its workloads: `app`, the service's, the version's.
    pub labels: BTreeMap<String, String>,
}

impl Deployment {
    /// `<service>[-<version>]-<replica>`: the workload (and xDS node) name.
    pub fn workload_name(&self, service: &str, replica: u32) -> String {
        match &self.version {
            Some(v) => format!("{service}-{v}-{replica}"),
            None => format!("{service}-{replica}"),
        }
    }
}

impl Mesh {
    /// How many workloads (replicas of every deployment) it runs.
    pub fn workload_count(&self) -> u32 {
        self.services
            .iter()
            .flat_map(|s| &s.deployments)
            .map(|d| d.replicas)
            .sum()
    }

    /// `Mesh <name>`: how errors name it.
    pub fn display_name(&self) -> String {
        format!("{KIND} {}", self.name)
    }

    /// A ServiceEntry per service (`hosts: [<name>]`, MESH_INTERNAL,
    /// STATIC, one port named after its protocol, selecting `app: <name>`),
    /// except for services `set` already defines, as JSON documents ready
    /// to apply. `source` names them in errors.
    pub fn service_entries(&self, set: &ResourceSet) -> Vec<Value> {
        self.services
            .iter()
            .filter(|s| !defines_host(set, &s.name, &self.namespace))
            .map(|s| {
                json!({
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "ServiceEntry",
                    "metadata": {"name": s.name, "namespace": self.namespace},
                    "spec": {
                        "hosts": [s.name],
                        "location": "MESH_INTERNAL",
                        "resolution": "STATIC",
                        "ports": [{
                            "number": s.port,
                            "name": s.protocol.name(),
                            "protocol": s.protocol.istio(),
                        }],
                        "workloadSelector": {"labels": {"app": s.name}},
                    },
                })
            })
            .collect()
    }
}

/// Does a ServiceEntry of `set` define the service `name` of `namespace`
/// (short, namespaced or fully qualified)?
fn defines_host(set: &ResourceSet, name: &str, namespace: &str) -> bool {
    let forms = [
        name.to_string(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.cluster.local"),
    ];
    set.service_entries.iter().any(|se| {
        se.metadata.namespace == namespace && se.spec.hosts.iter().any(|h| forms.contains(h))
            || se
                .spec
                .hosts
                .iter()
                .any(|h| h == &forms[3] || h == &forms[2])
    })
}

// ---- loading ---------------------------------------------------------------

/// One file (or text) read as `trellis up` reads it: its Meshes and its
/// other resources.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub meshes: Vec<Mesh>,
    pub documents: Vec<Document>,
}

/// Parse every document of one YAML text; `kind: Mesh` documents become
/// [`Mesh`]es, the others resources as [`crate::parse_documents_raw`]
/// reads them. All problems are collected.
pub fn parse_documents(file: &str, text: &str) -> Result<Parsed, ConfigErrors> {
    let docs = parse_yaml(file, text)?;
    let mut errors = ConfigErrors::default();
    let mut out = Parsed::default();
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.get("kind").and_then(Value::as_str) == Some(KIND) {
            match parse_mesh(file, i + 1, &doc) {
                Ok(m) => out.meshes.push(m),
                Err(es) => errors.0.extend(es.0),
            }
            continue;
        }
        match parse_resource(file, i + 1, doc.clone()) {
            Ok(resource) => out.documents.push(Document { resource, raw: doc }),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Everything `trellis up` and `trellis check` need from a set of files:
/// exactly one Mesh (for `up`; `check` accepts none), the other resources,
/// and the set they form with the generated ServiceEntries, validated.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub mesh: Option<Mesh>,
    /// `(file, documents)` in file order: what to apply, as written.
    pub files: Vec<(String, Vec<Document>)>,
    /// The generated ServiceEntries (JSON documents).
    pub generated: Vec<Value>,
    /// The file resources and the generated ones.
    pub set: ResourceSet,
}

/// Where generated resources say they come from in errors.
pub const GENERATED_SOURCE: &str = "<generated by trellis up>";

/// Parse and validate `(name, text)` files together: Meshes, resources,
/// generated ServiceEntries, and the set's own validation.
pub fn load(files: &[(String, String)]) -> Result<Loaded, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let mut meshes = Vec::new();
    let mut out_files = Vec::new();
    let mut set = ResourceSet::default();
    for (name, text) in files {
        match parse_documents(name, text) {
            Ok(p) => {
                meshes.extend(p.meshes);
                for d in &p.documents {
                    set.push(d.resource.clone());
                }
                out_files.push((name.clone(), p.documents));
            }
            Err(es) => errors.0.extend(es.0),
        }
    }
    if meshes.len() > 1 {
        for m in &meshes[1..] {
            errors.push(ConfigError::new(
                &m.source,
                m.display_name(),
                "-",
                format!(
                    "a second Mesh (the first is {} in {}): `trellis up` runs exactly one",
                    meshes[0].display_name(),
                    meshes[0].source
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mesh = meshes.into_iter().next();
    let mut generated = Vec::new();
    if let Some(m) = &mesh {
        generated = m.service_entries(&set);
        for (i, doc) in generated.iter().enumerate() {
            match parse_resource(GENERATED_SOURCE, i + 1, doc.clone()) {
                Ok(r) => set.push(r),
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty()
        && let Err(es) = crate::validate::validate(&set)
    {
        errors = es;
    }
    if errors.is_empty() {
        Ok(Loaded {
            mesh,
            files: out_files,
            generated,
            set,
        })
    } else {
        Err(errors)
    }
}

/// Read one `kind: Mesh` document. Every problem is collected; each names
/// the service it is about.
pub fn parse_mesh(file: &str, index: usize, doc: &Value) -> Result<Mesh, ConfigErrors> {
    let name_hint = doc
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map_or_else(
            || format!("{KIND} (document {index})"),
            |n| format!("{KIND} {n}"),
        );
    let err = |field: &str, reason: String| ConfigError::new(file, &name_hint, field, reason);
    let one = |e: ConfigError| ConfigErrors(vec![e]);
    let Value::Object(map) = doc else {
        return Err(one(err("-", "expected a mapping".into())));
    };
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(crate::trellis::API_VERSION) => {}
        Some(v) => {
            return Err(one(err(
                "apiVersion",
                format!(
                    "{v:?} is not an API version of Mesh: use {}",
                    crate::trellis::API_VERSION
                ),
            )));
        }
        None => return Err(one(err("apiVersion", "missing or not a string".into()))),
    }
    if let Some(extra) = map
        .keys()
        .find(|k| !["apiVersion", "kind", "metadata", "spec"].contains(&k.as_str()))
    {
        return Err(one(err(extra, "unknown top-level field".into())));
    }
    let meta: MeshMeta = typed(
        map.get("metadata")
            .cloned()
            .ok_or_else(|| one(err("metadata", "missing".into())))?,
        "metadata",
    )
    .map_err(|(f, r)| one(err(&f, r)))?;
    if !valid_label(&meta.name) {
        return Err(one(err(
            "metadata.name",
            format!(
                "{:?} is not a valid mesh name (lowercase letters, digits and '-', at most 63 characters): it names the state directory",
                meta.name
            ),
        )));
    }
    let spec_value = map
        .get("spec")
        .cloned()
        .ok_or_else(|| one(err("spec", "missing".into())))?;
    let spec: MeshSpecRaw = typed(spec_value.clone(), "spec").map_err(|(f, r)| {
        // Name the service a field error is about: the operator looks for
        // it by name, not by index.
        let r = match service_of_path(&f, &spec_value) {
            Some(s) => format!("service {s:?}: {r}"),
            None => r,
        };
        one(err(&f, r))
    })?;
    let mut errors = ConfigErrors::default();
    let mesh = check_spec(file, &name_hint, meta.name, spec, &mut errors);
    if errors.is_empty() {
        Ok(mesh)
    } else {
        Err(errors)
    }
}

/// `spec.services[3].x` -> the name written at services[3], if any.
fn service_of_path(path: &str, spec: &Value) -> Option<String> {
    let rest = path.strip_prefix("spec.services[")?;
    let i: usize = rest.split(']').next()?.parse().ok()?;
    spec.get("services")?
        .get(i)?
        .get("name")?
        .as_str()
        .map(str::to_string)
}

/// Env keys `trellis up` sets itself; an app's `env` may not override them.
fn reserved_env(key: &str) -> bool {
    key.starts_with("TRELLIS_")
        || ["HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"].contains(&key)
}

fn valid_env_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn check_spec(
    file: &str,
    resource: &str,
    name: String,
    spec: MeshSpecRaw,
    errors: &mut ConfigErrors,
) -> Mesh {
    let mut push = |field: String, reason: String| {
        errors.push(ConfigError::new(file, resource, field, reason));
    };
    let namespace = spec.namespace.unwrap_or_else(|| "default".to_string());
    if !valid_label(&namespace) {
        push(
            "spec.namespace".into(),
            format!(
                "{namespace:?} is not a valid namespace name (lowercase letters, digits and '-', at most 63 characters)"
            ),
        );
    }
    if spec.services.is_empty() {
        push(
            "spec.services".into(),
            "a Mesh needs at least one service".into(),
        );
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut services = Vec::new();
    let mut total: u32 = 0;
    for (i, s) in spec.services.into_iter().enumerate() {
        let at = format!("spec.services[{i}]");
        let who = format!("service {:?}", s.name);
        if !valid_label(&s.name) {
            push(
                format!("{at}.name"),
                format!(
                    "{:?} is not a valid service name (lowercase letters, digits and '-', at most 63 characters): it becomes a host name",
                    s.name
                ),
            );
        } else if let Some(first) = seen.get(&s.name) {
            push(
                format!("{at}.name"),
                format!(
                    "{who} is defined twice (first at spec.services[{first}]); service names are unique in a Mesh"
                ),
            );
        } else {
            seen.insert(s.name.clone(), i);
        }
        if s.port == 0 {
            push(
                format!("{at}.port"),
                format!("{who}: port 0 is not a port (1-65535)"),
            );
        } else if SIDECAR_PORTS.contains(&s.port) {
            push(
                format!("{at}.port"),
                format!(
                    "{who}: port {} is taken by the sidecar on every workload address ({}); pick another",
                    s.port,
                    SIDECAR_PORTS.map(|p| p.to_string()).join(", ")
                ),
            );
        }
        let protocol = match s.protocol.as_deref() {
            None => AppProtocol::Http,
            Some(p) => AppProtocol::parse(p).unwrap_or_else(|| {
                push(
                    format!("{at}.protocol"),
                    format!("{who}: unknown protocol {p:?}: use http, http2, grpc or tcp"),
                );
                AppProtocol::Http
            }),
        };
        // Checked only when written: the default is the name, checked above.
        let service_account = s.service_account.clone().unwrap_or_else(|| s.name.clone());
        if s.service_account.is_some() && !valid_label(&service_account) {
            push(
                format!("{at}.serviceAccount"),
                format!(
                    "{who}: {service_account:?} is not a valid service account name (lowercase letters, digits and '-')"
                ),
            );
        }
        let mut labels = BTreeMap::from([("app".to_string(), s.name.clone())]);
        for (k, v) in &s.labels {
            if k == "app" && v != &s.name {
                push(
                    format!("{at}.labels.app"),
                    format!(
                        "{who}: trellis up sets app: {} itself (ServiceEntry selectors match on it); remove this label",
                        s.name
                    ),
                );
            }
            labels.insert(k.clone(), v.clone());
        }
        check_env(&s.env, &format!("{at}.env"), &who, &mut push);
        let health = check_health(s.health, &at, &who, &mut push);
        let base_replicas = s.replicas.unwrap_or(1);
        let check_replicas = |r: u32, field: String, push: &mut dyn FnMut(String, String)| {
            if r == 0 || r > MAX_WORKLOADS {
                push(
                    field,
                    format!("{who}: replicas {r} is out of range (1-{MAX_WORKLOADS})"),
                );
            }
        };
        let check_command = |c: &Option<Vec<String>>,
                             field: String,
                             push: &mut dyn FnMut(String, String)| {
            if let Some(c) = c
                && c.first().is_none_or(String::is_empty)
            {
                push(
                    field,
                    format!(
                        "{who}: the command is empty: give the program and its arguments, e.g. [\"trellis-echo\"]"
                    ),
                );
            }
        };
        check_replicas(base_replicas, format!("{at}.replicas"), &mut push);
        check_command(&s.command, format!("{at}.command"), &mut push);
        let mut deployments = Vec::new();
        match s.versions {
            None => {
                if s.command.is_none() {
                    push(
                        format!("{at}.command"),
                        format!(
                            "{who} has no command: say what runs it, e.g. command: [\"trellis-echo\"] (or give every version one)"
                        ),
                    );
                }
                deployments.push(Deployment {
                    version: None,
                    command: s.command.clone().unwrap_or_default(),
                    replicas: base_replicas,
                    env: s.env.clone(),
                    labels: labels.clone(),
                });
            }
            Some(versions) => {
                if versions.is_empty() {
                    push(
                        format!("{at}.versions"),
                        format!(
                            "{who}: versions is empty: list at least one, or remove it and give a command"
                        ),
                    );
                }
                let mut names = BTreeSet::new();
                for (j, v) in versions.into_iter().enumerate() {
                    let vat = format!("{at}.versions[{j}]");
                    let vname = match v.name {
                        Some(n) if valid_label(&n) => n,
                        Some(n) => {
                            push(
                                format!("{vat}.name"),
                                format!(
                                    "{who}: version name {n:?} is not valid (lowercase letters, digits and '-'): it becomes a label and a workload name"
                                ),
                            );
                            n
                        }
                        None => {
                            push(
                                format!("{vat}.name"),
                                format!(
                                    "{who}: version {j} has no name: every version needs one (it becomes the label version: <name>)"
                                ),
                            );
                            String::new()
                        }
                    };
                    if !vname.is_empty() && !names.insert(vname.clone()) {
                        push(
                            format!("{vat}.name"),
                            format!("{who}: version {vname:?} is listed twice"),
                        );
                    }
                    let command = v.command.clone().or_else(|| s.command.clone());
                    check_command(&v.command, format!("{vat}.command"), &mut push);
                    if command.is_none() {
                        push(
                            format!("{vat}.command"),
                            format!(
                                "{who}: version {vname:?} has no command, and the service gives none"
                            ),
                        );
                    }
                    let replicas = v.replicas.unwrap_or(base_replicas);
                    check_replicas(replicas, format!("{vat}.replicas"), &mut push);
                    check_env(&v.env, &format!("{vat}.env"), &who, &mut push);
                    let mut labels = labels.clone();
                    for (k, val) in &v.labels {
                        if k == "app" && val != &s.name {
                            push(
                                format!("{vat}.labels.app"),
                                format!(
                                    "{who}: trellis up sets app: {} itself; remove this label",
                                    s.name
                                ),
                            );
                        }
                        if k == "version" && val != &vname {
                            push(
                                format!("{vat}.labels.version"),
                                format!(
                                    "{who}: version {vname:?} gets the label version: {vname}; {val:?} would contradict it"
                                ),
                            );
                        }
                        labels.insert(k.clone(), val.clone());
                    }
                    labels.insert("version".into(), vname.clone());
                    let mut env = s.env.clone();
                    env.extend(v.env.clone());
                    deployments.push(Deployment {
                        version: Some(vname),
                        command: command.unwrap_or_default(),
                        replicas,
                        env,
                        labels,
                    });
                }
            }
        }
        total = total.saturating_add(deployments.iter().map(|d| d.replicas).sum());
        services.push(Service {
            name: s.name,
            field: at,
            port: s.port,
            protocol,
            service_account,
            health,
            deployments,
        });
    }
    if total > MAX_WORKLOADS {
        push(
            "spec.services".into(),
            format!(
                "{total} workloads in all; one mesh runs at most {MAX_WORKLOADS} (each takes a loopback address)"
            ),
        );
    }
    Mesh {
        name,
        source: file.to_string(),
        namespace,
        services,
    }
}

fn check_env(
    env: &BTreeMap<String, String>,
    at: &str,
    who: &str,
    push: &mut dyn FnMut(String, String),
) {
    for k in env.keys() {
        if !valid_env_key(k) {
            push(
                format!("{at}.{k}"),
                format!("{who}: {k:?} is not an environment variable name (letters, digits, '_')"),
            );
        } else if reserved_env(k) {
            push(
                format!("{at}.{k}"),
                format!(
                    "{who}: {k} is set by trellis up (the app's address and sidecar); it cannot be overridden"
                ),
            );
        }
    }
}

fn check_health(
    h: Option<HealthRaw>,
    at: &str,
    who: &str,
    push: &mut dyn FnMut(String, String),
) -> Health {
    let Some(h) = h else {
        return Health::default();
    };
    let at = format!("{at}.health");
    let mut out = Health::default();
    match (&h.http_get, h.tcp) {
        (Some(_), Some(true)) => push(
            at.clone(),
            format!("{who}: give httpGet or tcp: true, not both"),
        ),
        (None, Some(false)) => push(
            format!("{at}.tcp"),
            format!(
                "{who}: tcp: false asks for no probe; remove health to probe with a TCP connect, or give httpGet"
            ),
        ),
        (Some(p), _) if !p.starts_with('/') => push(
            format!("{at}.httpGet"),
            format!("{who}: {p:?} is not a path: it must start with '/'"),
        ),
        _ => {}
    }
    out.http_get = h.http_get;
    let mut duration = |v: Option<String>, field: &str, default: Duration| match v {
        None => default,
        Some(s) => match crate::duration::parse(&s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                push(
                    format!("{at}.{field}"),
                    format!("{who}: {field} must be more than 0"),
                );
                default
            }
            Err(e) => {
                push(format!("{at}.{field}"), format!("{who}: {e}"));
                default
            }
        },
    };
    out.interval = duration(h.interval, "interval", DEFAULT_INTERVAL);
    out.timeout = duration(h.timeout, "timeout", DEFAULT_TIMEOUT);
    for (v, field, slot) in [
        (
            h.healthy_threshold,
            "healthyThreshold",
            &mut out.healthy_threshold,
        ),
        (
            h.unhealthy_threshold,
            "unhealthyThreshold",
            &mut out.unhealthy_threshold,
        ),
    ] {
        match v {
            Some(0) => push(
                format!("{at}.{field}"),
                format!("{who}: {field} must be 1 or more"),
            ),
            Some(n) => *slot = n,
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
