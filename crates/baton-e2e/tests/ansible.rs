//! The Ansible roll-out of `examples/ansible/` against three "hosts" on
//! this machine: one baton each (its own port, `--name`, release directory
//! and `current` symlink), reached over Ansible's local connection.
//!
//! Release 2 is good on host 1 and broken on host 2 (it needs a setting
//! host 2's `shared/settings.env` lacks). Under load on all three hosts,
//! the play must fail at host 2, leave host 2 serving release 1 (its
//! `current` pointing back at it), never touch host 3, and leave host 1
//! serving release 2; no request may fail anywhere.
//!
//! ansible-core comes from PyPI, in the venv `./test` prepares
//! (`BATON_E2E_VENV`); without it the test fails unless skips are allowed.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use baton_e2e::tools::{output_text, run_bounded, venv_bin_or_skip};
use baton_e2e::{Baton, BatonCmd, WAIT, bin, http};
use baton_load::{Config, Target};

const HOSTS: [&str; 3] = ["host1", "host2", "host3"];

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/ansible")
}

/// Release 1: the probe, draining keep-alive connections in band.
fn release_1(probe: &Path) -> String {
    format!(
        "#!/bin/sh\n# release 1\nexec {} --drain-ms 100\n",
        probe.display()
    )
}

/// Release 2: the same server, but it needs `NEW_SETTING` from the host's
/// `shared/settings.env` (its working directory is `releases/2`, which
/// baton resolves from `current` when the generation starts).
fn release_2(probe: &Path) -> String {
    format!(
        "#!/bin/sh\n# release 2: needs NEW_SETTING\n. ../../shared/settings.env\n\
         if [ -z \"${{NEW_SETTING:-}}\" ]; then\n\
         \techo \"release 2: NEW_SETTING is not set in shared/settings.env\" >&2\n\
         \texit 3\n\
         fi\n\
         exec {} --drain-ms 100\n",
        probe.display()
    )
}

fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, text).expect("write a release script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The release directory `current` leads to.
fn current(root: &Path) -> PathBuf {
    std::fs::read_link(root.join("current")).expect("current is a symlink")
}

/// Which release answers: the probe's working directory, `.../releases/N`.
fn serving(port: u16) -> String {
    let reply = http::get_ok(port, "/env");
    let cwd = reply.var("CWD").expect("the probe reports CWD").to_owned();
    Path::new(&cwd)
        .file_name()
        .expect("CWD names a release")
        .to_string_lossy()
        .into_owned()
}

/// `PLAY RECAP` line of `host`: `ok=4 changed=2 ... failed=0 ...`.
fn recap(out: &str, host: &str) -> Option<String> {
    let after = out.split("PLAY RECAP").nth(1)?;
    after
        .lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .map(str::to_owned)
}

#[test]
fn rollout_stops_at_the_first_host_that_rolled_back() {
    let test = "rollout_stops_at_the_first_host_that_rolled_back";
    let Some(playbook) = venv_bin_or_skip(test, "ansible-playbook", "ansible-core") else {
        return;
    };
    let python = playbook.with_file_name("python");
    let fleet = tempfile::Builder::new()
        .prefix("baton-e2e-fleet-")
        .tempdir()
        .expect("a temp dir");
    let fleet = fleet.path();
    // One runtime dir for the three batons, told apart by --name, as on a
    // host with several services; ansible's modules inherit it.
    let runtime = fleet.join("run");
    std::fs::create_dir(&runtime).expect("mkdir");
    let probe = bin("baton-probe");

    // The controller's copy of release 2.
    let build = fleet.join("build/releases/2");
    write_script(&build.join("server"), &release_2(&probe));

    let mut batons: Vec<Baton> = Vec::new();
    for (i, host) in HOSTS.iter().enumerate() {
        let root = fleet.join(host);
        write_script(&root.join("releases/1/server"), &release_1(&probe));
        std::os::unix::fs::symlink("releases/1", root.join("current")).expect("link current");
        let settings = if i == 1 {
            "# host 2 was never given the new setting\n"
        } else {
            "NEW_SETTING=on\n"
        };
        std::fs::create_dir_all(root.join("shared")).expect("mkdir");
        std::fs::write(root.join("shared/settings.env"), settings).expect("write settings");
        let baton = BatonCmd::new()
            .env("XDG_RUNTIME_DIR", &runtime)
            .args(["--name", host, "--workers", "2", "--grace", "10s"])
            .arg("--chdir")
            .arg(root.join("current"))
            .command(["./server"])
            .spawn();
        baton.wait_for("generation 1 ready", WAIT);
        batons.push(baton);
    }
    let ports: Vec<u16> = batons.iter().map(Baton::port).collect();
    for &port in &ports {
        assert_eq!(serving(port), "1");
    }
    let first_workers: Vec<u32> = batons[1].workers_of(1).iter().map(|w| w.pid).collect();

    // Keep-alive load on every host for the whole play, 200 requests a
    // second each.
    let loads: Vec<_> = ports
        .iter()
        .map(|&port| {
            let mut cfg = Config::new(Target::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
            cfg.concurrency = 2;
            cfg.request_timeout = Duration::from_secs(20);
            // Paced: three back-to-back loads fill both cores, and
            // ansible (a Python process per task) then takes minutes.
            cfg.rate = Some(200.0);
            baton_load::start(cfg)
        })
        .collect();
    for (load, host) in loads.iter().zip(HOSTS) {
        assert!(
            load.wait_for_generation("1", WAIT).is_some(),
            "no response from {host}: {}",
            load.snapshot()
        );
    }

    let inventory = fleet.join("inventory.ini");
    let mut inv = String::from("[web]\n");
    for host in HOSTS {
        writeln!(
            inv,
            "{host} ansible_connection=local baton_name={host} baton_app_root={}",
            fleet.join(host).display()
        )
        .expect("write to a String");
    }
    writeln!(
        inv,
        "\n[web:vars]\nansible_python_interpreter={}",
        python.display()
    )
    .expect("write to a String");
    std::fs::write(&inventory, inv).expect("write the inventory");

    let ansible_home = fleet.join("ansible");
    // An empty configuration: none of the person's own (ansible.cfg in the
    // working directory, ~/.ansible.cfg, /etc/ansible) is read.
    let config = fleet.join("ansible.cfg");
    std::fs::write(&config, "").expect("write ansible.cfg");
    let mut cmd = Command::new(&playbook);
    cmd.arg("-i")
        .arg(&inventory)
        .arg(examples().join("rollout.yml"))
        .args(["-e", "baton_release=2"])
        .arg("-e")
        .arg(format!("baton_release_src={}/", build.display()))
        .arg("-e")
        .arg(format!("baton_bin={}", bin("baton").display()))
        // Nothing of the person's own Ansible set-up, and nothing written
        // outside the test's directory.
        .current_dir(fleet)
        .env("ANSIBLE_CONFIG", &config)
        .env("ANSIBLE_HOME", &ansible_home)
        .env("ANSIBLE_LOCAL_TEMP", ansible_home.join("tmp"))
        .env("ANSIBLE_REMOTE_TEMP", ansible_home.join("remote-tmp"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOG_PATH", fleet.join("ansible.log"))
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .env("ANSIBLE_PIPELINING", "1")
        // ansible-core refuses to run without a UTF-8 locale.
        .env("LC_ALL", "C.UTF-8")
        .env("XDG_RUNTIME_DIR", &runtime);
    let started = Instant::now();
    let out = run_bounded(cmd, Duration::from_secs(240));
    let took = started.elapsed();
    let text = output_text(&out);
    eprintln!("ansible-playbook took {took:?}:\n{text}");

    let reports: Vec<_> = loads.into_iter().map(baton_load::Running::stop).collect();

    // The play failed, at host 2.
    assert_ne!(out.status.code(), Some(0), "the play must fail: {text}");
    let recap1 = recap(&text, "host1").unwrap_or_else(|| panic!("no recap for host1: {text}"));
    let recap2 = recap(&text, "host2").unwrap_or_else(|| panic!("no recap for host2: {text}"));
    assert!(recap1.contains("failed=0"), "{recap1}");
    assert!(recap2.contains("failed=1"), "{recap2}");
    assert!(
        recap(&text, "host3").is_none_or(|l| l.contains("ok=0") && l.contains("changed=0")),
        "host 3 must not have been touched: {text}"
    );
    assert!(
        text.contains("release 2 does not serve on host2"),
        "the failure names the host and the verdict: {text}"
    );
    assert!(
        text.contains("NEW_SETTING is not set"),
        "the failure shows the worker's last output: {text}"
    );

    // Host 1 serves release 2.
    assert_eq!(serving(ports[0]), "2");
    assert_eq!(current(&fleet.join("host1")), Path::new("releases/2"));
    // Host 2 still serves release 1, with the same workers, and current
    // points at it again.
    assert_eq!(serving(ports[1]), "1");
    assert_eq!(current(&fleet.join("host2")), Path::new("releases/1"));
    batons[1].wait_for("reload failed", WAIT);
    let still: Vec<u32> = batons[1].workers_of(1).iter().map(|w| w.pid).collect();
    assert_eq!(still, first_workers, "host 2's generation 1 was replaced");
    assert!(
        batons[1]
            .workers_of(1)
            .iter()
            .all(|w| w.proc.is_some_and(|p| p.is_alive())),
        "host 2's generation 1 must still run"
    );
    // Host 3: never touched.
    assert_eq!(serving(ports[2]), "1");
    assert_eq!(current(&fleet.join("host3")), Path::new("releases/1"));
    assert!(!fleet.join("host3/releases/2").exists());
    assert!(!batons[2].seen_after(0, "generation 2 starting"));

    for (report, host) in reports.iter().zip(HOSTS) {
        assert_eq!(report.failed, 0, "{host}: {report}");
        assert!(report.ok > 0, "{host}: {report}");
    }
}
