//! The command line: `--validate` lists every error with its YAML path and exits non-zero;
//! every config shipped in the repository validates; `--help` and `--version` work.

use std::path::Path;
use std::process::Command;

fn switchyard(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_lists_every_error_with_its_yaml_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "server:\n  listen:\n    - addr: \"127.0.0.1:8080\"\nroutes:\n  - name: clock\n    path: /clock\n    backend: { builtin: clock }\n    colour: blue\n  - name: clock2\n    path: /clock\n    backend: { builtin: clock }\n  - name: slow\n    path: /slow\n    backend: { builtin: clock }\n    keepalive: { sse_heartbeat: 15 seconds }\n",
    )
    .unwrap();
    let (code, _, err) = switchyard(&["--config", path.to_str().unwrap(), "--validate"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("3 errors"), "{err}");
    assert!(
        err.contains(":8: routes[0].colour: unknown field `colour`"),
        "{err}"
    );
    assert!(
        err.contains(":10: routes[1].path: duplicate route"),
        "{err}"
    );
    assert!(
        err.contains(":15: routes[2].keepalive.sse_heartbeat: invalid duration"),
        "{err}"
    );
}

#[test]
fn validate_refuses_structural_mistakes_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("routes:\n  - { name: a, path: /a, backend: { builtin: clock } }\n", "missing `server:` section"),
        ("server: { listen: [ { addr: nope } ] }\n", "server.listen[0].addr: invalid listen address"),
        ("server: { listen: [ { addr: \"127.0.0.1:1\" } ] }\nroutes:\n  - { name: a, path: /a }\n", "needs exactly one of `proxy:`"),
        ("server: { listen: [ { addr: \"127.0.0.1:1\" } ] }\nroutes:\n  - { name: a, path: /a, proxy: { upstreams: [\"127.0.0.1:2\"], balance: random } }\n", "routes[0].proxy.balance: unknown balance"),
        ("server: { listen: [ { addr: \"127.0.0.1:1\", tls: { cert: no.crt, key: no.key } } ] }\n", "server.listen[0].tls.cert: file \"no.crt\" not found"),
        ("server: { listen: [ { addr: \"127.0.0.1:1\" } ] }\nroutes: [ { name: a, path: /a, backend: { builtin: clock } } ]\nextra: 1\n", "unknown key `extra`"),
        ("server: [\n", "not valid YAML"),
    ];
    for (yaml, expected) in cases {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        let (code, _, err) = switchyard(&["--config", path.to_str().unwrap(), "--validate"]);
        assert_ne!(code, 0, "{yaml}");
        assert!(
            err.contains(expected),
            "expected {expected:?} for:\n{yaml}\ngot:\n{err}"
        );
    }
}

#[test]
fn every_config_in_the_repository_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut configs = vec![root.join("gateway.yaml")];
    for dir in ["deploy", "deploy/compose", "examples"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            for e in entries.flatten() {
                let p = e.path();
                let is_gateway_config = p.extension().is_some_and(|x| x == "yaml")
                    && std::fs::read_to_string(&p).is_ok_and(|t| t.starts_with("# switchyard"));
                if is_gateway_config {
                    configs.push(p);
                }
            }
        }
    }
    for c in &configs {
        let (code, out, err) = switchyard(&["--config", c.to_str().unwrap(), "--validate"]);
        assert_eq!(code, 0, "{}: {out}{err}", c.display());
        assert!(out.contains(": ok ("), "{out}");
    }
}

#[test]
fn help_and_version() {
    let (code, out, _) = switchyard(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--config") && out.contains("--validate") && out.contains("--log-level"));
    let (code, out, _) = switchyard(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with(&format!("switchyard {}", env!("CARGO_PKG_VERSION"))));
}

/// `rust-version` in Cargo.toml is at least what every locked dependency declares, so a
/// toolchain it admits can build the lock (it said 1.85 while pingora's parking_lot needs 1.95).
#[test]
fn rust_version_covers_the_locked_dependencies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let version = |text: &str| -> Option<(u32, u32)> {
        let line = text
            .lines()
            .take_while(|l| !l.starts_with('[') || l.starts_with("[package]"))
            .find(|l| l.starts_with("rust-version"))?;
        let v = line.split('"').nth(1)?;
        let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
        Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
    };
    let ours = version(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap())
        .expect("Cargo.toml has a rust-version");
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap()).join(".cargo"));
    let registries: Vec<_> = std::fs::read_dir(home.join("registry/src"))
        .expect("the registry's sources (the build fetched them)")
        .flatten()
        .map(|e| e.path())
        .collect();
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
    let (mut checked, mut needs) = (0, Vec::new());
    for block in lock.split("[[package]]").skip(1) {
        let field = |k: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k} = \"")))
                .map(|v| v.trim_end_matches('"').to_owned())
        };
        let (Some(name), Some(ver)) = (field("name"), field("version")) else {
            continue;
        };
        if field("source").is_none() {
            continue;
        }
        let manifest = registries
            .iter()
            .map(|r| r.join(format!("{name}-{ver}/Cargo.toml")))
            .find(|p| p.exists());
        let Some(manifest) = manifest else { continue };
        checked += 1;
        if let Some(v) = version(&std::fs::read_to_string(manifest).unwrap()) {
            if v > ours {
                needs.push(format!("{name} {ver} needs {}.{}", v.0, v.1));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} locked crates were found to check"
    );
    assert!(
        needs.is_empty(),
        "rust-version {}.{} is below: {needs:?}",
        ours.0,
        ours.1
    );
}
