//! Checks that need the machine, made before anything starts: every
//! program can be found, and every address the mesh would bind is free.
//! Errors are config errors: they name the file, the Mesh, the service's
//! field and the problem, like any other mistake in the file.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use trellis_model::mesh::Mesh;
use trellis_model::{ConfigError, ConfigErrors};

use super::plan::Workload;

/// Where to look for a program named without a `/`: the directory of the
/// running `trellis` (so `target/release/trellis up` finds the
/// `trellis-proxy` and `trellis-demo` built beside it), then `PATH`.
pub fn search_path(exe_dir: Option<&Path>, path_var: Option<&str>) -> Vec<PathBuf> {
    exe_dir
        .map(Path::to_path_buf)
        .into_iter()
        .chain(
            path_var
                .unwrap_or_default()
                .split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
        )
        .collect()
}

/// Resolve a program: a name with a `/` is taken as a path (relative to
/// `cwd`), a bare name is searched for in `dirs`. `is_program` says whether
/// a path is an executable file (a parameter, so the rule is testable).
pub fn resolve(
    program: &str,
    dirs: &[PathBuf],
    cwd: &Path,
    is_program: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if program.contains('/') {
        let p = cwd.join(program);
        return is_program(&p).then_some(p);
    }
    dirs.iter().map(|d| d.join(program)).find(|p| is_program(p))
}

/// An executable regular file.
pub fn is_program(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Resolve every workload's argv[0]; one error per service field that
/// names a program not found.
pub fn resolve_commands(
    mesh: &Mesh,
    workloads: &mut [Workload],
    dirs: &[PathBuf],
    cwd: &Path,
) -> Result<(), ConfigErrors> {
    let mut errors = ConfigErrors::default();
    for w in workloads.iter_mut() {
        let program = w.command[0].clone();
        match resolve(&program, dirs, cwd, is_program) {
            Some(p) => w.command[0] = p.display().to_string(),
            None => {
                let field = format!("{}.command", w.service_field);
                if errors.iter().any(|e| e.field == field) {
                    continue;
                }
                errors.push(ConfigError::new(
                    &mesh.source,
                    mesh.display_name(),
                    field,
                    format!(
                        "service {:?}: program {program:?} not found{}",
                        w.service,
                        if program.contains('/') {
                            " (or not executable)".to_string()
                        } else {
                            format!(
                                " in {}",
                                dirs.iter()
                                    .map(|d| d.display().to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                    ),
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Bind (and release at once) every address the mesh will listen on, so
/// a port in use is reported now, naming its service, rather than as a
/// crash loop later. `control` are the control plane's own addresses.
pub fn check_ports(
    mesh: &Mesh,
    workloads: &[Workload],
    control: &[(&str, SocketAddr)],
) -> Result<(), ConfigErrors> {
    let mut errors = ConfigErrors::default();
    for (what, addr) in control {
        if let Err(e) = TcpListener::bind(addr) {
            errors.push(ConfigError::new(
                &mesh.source,
                mesh.display_name(),
                "-",
                format!("the control plane's {what} address {addr} cannot be bound ({e}): is another `trellis up` or `trellis control` running? (--{what} ADDR picks another)"),
            ));
        }
    }
    for w in workloads {
        let wanted = [
            ("port", w.app(), "the app"),
            ("-", w.outbound(), "its sidecar's outbound listener"),
            ("-", w.inbound(), "its sidecar's inbound listener"),
            ("-", w.admin(), "its sidecar's admin listener"),
        ];
        for (field, addr, who) in wanted {
            if let Err(e) = TcpListener::bind(addr) {
                let field = if field == "port" {
                    format!(
                        "{}.port",
                        w.service_field
                            .split(".versions")
                            .next()
                            .unwrap_or_default()
                    )
                } else {
                    "-".to_string()
                };
                errors.push(ConfigError::new(
                    &mesh.source,
                    mesh.display_name(),
                    field,
                    format!(
                        "service {:?}: {addr} ({who} of workload {}) {}: stop what holds it, or pick another --subnet",
                        w.service,
                        w.name,
                        if e.kind() == std::io::ErrorKind::AddrInUse {
                            "is in use".to_string()
                        } else {
                            format!("cannot be bound ({e})")
                        }
                    ),
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_beside_trellis_first_then_on_path() {
        let dirs = search_path(Some(Path::new("/opt/t")), Some("/usr/bin::/bin"));
        assert_eq!(
            dirs,
            [
                PathBuf::from("/opt/t"),
                PathBuf::from("/usr/bin"),
                PathBuf::from("/bin")
            ]
        );
        let exists =
            |set: &'static [&'static str]| move |p: &Path| set.iter().any(|s| Path::new(s) == p);
        let cwd = Path::new("/work");
        assert_eq!(
            resolve(
                "trellis-proxy",
                &dirs,
                cwd,
                exists(&["/opt/t/trellis-proxy", "/usr/bin/trellis-proxy"])
            ),
            Some(PathBuf::from("/opt/t/trellis-proxy"))
        );
        assert_eq!(
            resolve("sh", &dirs, cwd, exists(&["/bin/sh"])),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(resolve("nope", &dirs, cwd, exists(&["/bin/sh"])), None);
        assert_eq!(
            resolve("./app", &dirs, cwd, exists(&["/work/./app"])),
            Some(PathBuf::from("/work/./app"))
        );
        assert_eq!(
            resolve("/abs/app", &dirs, cwd, exists(&["/abs/app"])),
            Some(PathBuf::from("/abs/app"))
        );
        assert_eq!(search_path(None, None), Vec::<PathBuf>::new());
    }
}
