//! `load_dir`: which files are read, in which order, and how their errors
//! are named.

use std::fs;
use std::path::Path;

use trellis_model::load::is_config_file;
use trellis_model::validate::validate;
use trellis_model::{ResourceSet, load_dir};

use crate::support::{Want, assert_errors, dr, se, vs, want};

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

const GARBAGE: &str = "this: is: not: yaml: [\n";

#[test]
fn reads_sorted_files_recursively_and_skips_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(
        d,
        "20-routing/b-vs.yml",
        &vs(
            "reviews",
            "{hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}}]}]}",
        ),
    );
    write(
        d,
        "20-routing/a-dr.yaml",
        &dr("reviews", "{host: reviews, subsets: [{name: v1}]}"),
    );
    write(
        d,
        "10-services.yaml",
        &se(
            "reviews",
            "{hosts: [reviews], resolution: DNS, ports: [{number: 80, name: http}]}",
        ),
    );
    write(d, "05-empty.yaml", "# nothing yet\n");
    write(
        d,
        "30-more/deeper/c.yaml",
        &se(
            "ratings",
            "{hosts: [ratings.example.com], resolution: DNS, ports: [{number: 80, name: http}]}",
        ),
    );
    // None of these is read: each would fail to parse.
    for skipped in [
        ".hidden.yaml",
        "10-services.yaml~",
        "10-services.swp",
        ".10-services.yaml.swp",
        ".git/config.yaml",
        "20-routing/.#b-vs.yml",
        "#autosave.yaml#",
        "README.md",
        "notes.txt",
        "upper.YAML",
    ] {
        write(d, skipped, GARBAGE);
    }

    let rs = load_dir(d).unwrap();
    let got: Vec<_> = rs
        .iter()
        .map(|r| {
            let rel = Path::new(r.source()).strip_prefix(d).unwrap();
            (rel.display().to_string(), r.display_name())
        })
        .collect();
    let want = [
        ("10-services.yaml", "ServiceEntry default/reviews"),
        ("20-routing/a-dr.yaml", "DestinationRule default/reviews"),
        ("20-routing/b-vs.yml", "VirtualService default/reviews"),
        ("30-more/deeper/c.yaml", "ServiceEntry default/ratings"),
    ];
    assert_eq!(got, want.map(|(f, r)| (f.to_string(), r.to_string())),);
    validate(&rs.into_iter().collect::<ResourceSet>()).unwrap();
}

#[test]
fn errors_name_each_file_by_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(
        d,
        "a.yaml",
        &vs(
            "vs",
            "{hosts: [reviews], http: [{fault: {delay: {exponentialDelay: 1s}}}]}",
        ),
    );
    write(d, "b/broken.yaml", "kind: [\n");
    write(
        d,
        "c.yaml",
        &se(
            "good",
            "{hosts: [good.example.com], resolution: DNS, ports: [{number: 80, name: http}]}",
        ),
    );
    fs::write(d.join("d.yaml"), b"kind: \xff\xfe\n").unwrap();

    let errs = load_dir(d).unwrap_err();
    let path = |rel: &str| d.join(rel).display().to_string();
    let (a, b, dd) = (path("a.yaml"), path("b/broken.yaml"), path("d.yaml"));
    let want: [Want<'_>; 3] = [
        want(
            &a,
            "VirtualService default/vs",
            "spec.http[0].fault.delay.exponentialDelay",
            "not supported by Trellis yet",
        ),
        want(&b, "-", "-", "not valid YAML: "),
        want(&dd, "-", "-", "file is not UTF-8"),
    ];
    assert_errors("load_dir errors", &errs, &want);
    assert!(
        errs.0[1].reason.contains("at line 1, column 7"),
        "{}",
        errs.0[1].reason
    );
}

#[test]
fn a_missing_directory_is_one_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let errs = load_dir(&missing).unwrap_err();
    let m = missing.display().to_string();
    assert_errors(
        "missing dir",
        &errs,
        &[want(&m, "-", "-", "cannot read config directory: ")],
    );
}

#[test]
fn an_empty_directory_is_an_empty_config() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(load_dir(tmp.path()).unwrap(), []);
}

#[test]
fn watchers_and_the_loader_agree_on_config_files() {
    let cases = [
        ("a.yaml", true),
        ("dir/a.yml", true),
        (".a.yaml", false),
        ("a.yaml~", false),
        ("a.swp", false),
        (".a.yaml.swp", false),
        ("a.json", false),
        ("a.yaml.bak", false),
        ("yaml", false),
    ];
    for (p, want) in cases {
        assert_eq!(is_config_file(Path::new(p)), want, "{p}");
    }
}
