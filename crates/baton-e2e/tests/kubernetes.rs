//! `examples/kubernetes/`: the manifests, and what of a pod can be run
//! without Kubernetes.
//!
//! * The manifests validate against the Kubernetes schemas
//!   (`kubernetes-validate --strict`, from PyPI) and agree with each other
//!   and with baton (ports, probes, volumes, the config file, the grace
//!   periods).
//! * The pod, emulated: the container's command from `deployment.yaml`,
//!   run as PID 1 of a new pid namespace (`unshare`) in a network
//!   namespace of its own (so its port 8080 is its own), with the
//!   ConfigMap of `configmap.yaml` laid out as the kubelet does
//!   (`baton_e2e::configmap`) and the container's paths mapped into the
//!   test's directory (the mapping is checked to cover every path the
//!   manifests name). Signals come from outside the namespace, `kubectl
//!   exec` is `nsenter` into it, and the preStop hook runs as written.
//!
//!   The kubelet's probes ask baton's `--metrics` endpoint (`/ready`,
//!   `/live` on the pod's port 9100): checked through the reloads, and
//!   while the preStop drain runs. (That `/ready` moves exactly when the
//!   serving generation changes is tests/metrics.rs's
//!   `ready_follows_the_serving_generation_exactly`.)
//!
//! kubernetes-validate (and PyYAML, to read the manifests) come from the
//! venv `./test` prepares; util-linux's `unshare` and `nsenter` from
//! Debian; the pod tests need root. Without them the tests fail unless
//! skips are allowed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use baton_e2e::configmap::Volume;
use baton_e2e::procs::{self, Proc};
use baton_e2e::tools::{
    output_text, root_or_skip, run_bounded, run_ok, venv_bin_or_skip, which_or_skip,
};
use baton_e2e::{Baton, BatonCmd, NetNs, Signal, WAIT, bin, http};
use baton_load::{Config, Target};
use serde_json::Value;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kubernetes")
}

/// The manifest files, in a stable order.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples())
        .expect("examples/kubernetes exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "no manifests in examples/kubernetes: {files:?}"
    );
    files
}

/// Every object of every manifest, read with PyYAML from the venv.
struct Manifests {
    objects: Vec<Value>,
}

impl Manifests {
    fn load(python: &Path) -> Self {
        let mut objects = Vec::new();
        for file in manifest_files() {
            let json = run_ok(
                python,
                &[
                    "-c".as_ref(),
                    "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)"
                        .as_ref(),
                    file.as_os_str(),
                ],
            );
            let docs: Vec<Value> = serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("{}: not YAML as PyYAML reads it: {e}", file.display()));
            objects.extend(docs.into_iter().filter(|d| !d.is_null()));
        }
        Self { objects }
    }

    fn kind(&self, kind: &str) -> &Value {
        let found: Vec<&Value> = self.objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "expected one {kind}");
        found[0]
    }

    fn deployment(&self) -> &Value {
        self.kind("Deployment")
    }

    fn pod_spec(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        &self.pod_spec()["containers"][0]
    }

    fn command(&self) -> Vec<String> {
        strings(&self.container()["command"])
    }

    fn pre_stop(&self) -> Vec<String> {
        strings(&self.container()["lifecycle"]["preStop"]["exec"]["command"])
    }

    fn env(&self) -> BTreeMap<String, String> {
        self.container()["env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| (text(&e["name"]), text(&e["value"])))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The mount path of the volume that holds the ConfigMap, and the
    /// ConfigMap's data.
    fn config_volume(&self) -> (String, BTreeMap<String, String>) {
        let cm = self.kind("ConfigMap");
        let name = text(&cm["metadata"]["name"]);
        let volume = self.pod_spec()["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["configMap"]["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no volume of the pod holds the ConfigMap {name}"));
        let mount = self.container()["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap_or_else(|| panic!("the ConfigMap's volume is not mounted"));
        assert!(
            mount.get("subPath").is_none(),
            "a subPath mount of the ConfigMap is never updated by the kubelet"
        );
        let data = cm["data"]
            .as_object()
            .expect("ConfigMap data")
            .iter()
            .map(|(k, v)| (k.clone(), text(v)))
            .collect();
        (text(&mount["mountPath"]), data)
    }

    /// Mount paths of the container's emptyDir volumes.
    fn empty_dirs(&self) -> Vec<String> {
        let volumes = self.pod_spec()["volumes"].as_array().expect("volumes");
        self.container()["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .filter(|m| {
                volumes
                    .iter()
                    .any(|v| v["name"] == m["name"] && v.get("emptyDir").is_some())
            })
            .map(|m| text(&m["mountPath"]))
            .collect()
    }

    /// The container port named `name`.
    fn port(&self, name: &str) -> u64 {
        self.container()["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}"))
    }
}

fn text(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
        .to_owned()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list of strings, got {v}"))
        .iter()
        .map(text)
        .collect()
}

/// The value of `key = "..."` in TOML text (the simple form the example
/// uses: a string on one line).
fn toml_string(toml: &str, key: &str) -> Option<String> {
    toml.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
    })
}

fn python_or_skip(test: &str) -> Option<PathBuf> {
    venv_bin_or_skip(test, "python", "kubernetes-validate (brings PyYAML)")
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let test = "manifests_validate_against_the_kubernetes_schemas";
    let Some(validate) = venv_bin_or_skip(test, "kubernetes-validate", "kubernetes-validate")
    else {
        return;
    };
    let files = manifest_files();
    // The oldest Kubernetes still commonly run, and the newest this
    // kubernetes-validate knows.
    for version in ["1.30.0", "1.37.0"] {
        let mut cmd = Command::new(&validate);
        cmd.args(["--strict", "-k", version]).args(&files);
        let out = run_bounded(cmd, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "the manifests do not validate against Kubernetes {version}: {}",
            output_text(&out)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("passed for resource deployment/app"),
            "{text}"
        );
    }
    // The validator is not a no-op: a misspelt field fails it.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("deployment.yaml");
    let original =
        std::fs::read_to_string(examples().join("deployment.yaml")).expect("read deployment.yaml");
    assert!(original.contains("readinessProbe:"));
    std::fs::write(&bad, original.replace("readinessProbe:", "readinesProbe:")).expect("write");
    let mut cmd = Command::new(&validate);
    cmd.args(["--strict", "-k", "1.37.0"]).arg(&bad);
    let out = run_bounded(cmd, Duration::from_secs(120));
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("readinesProbe"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn manifests_agree_with_each_other_and_with_baton() {
    let Some(python) = python_or_skip("manifests_agree_with_each_other_and_with_baton") else {
        return;
    };
    let m = Manifests::load(&python);
    let deployment = m.deployment();
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Value, who: &str| {
        for (k, v) in selector.as_object().expect("a selector") {
            assert_eq!(
                &labels[k], v,
                "{who} selects {k}={v}, the pods do not have it"
            );
        }
    };
    selects(
        &deployment["spec"]["selector"]["matchLabels"],
        "the Deployment",
    );
    selects(&m.kind("Service")["spec"]["selector"], "the Service");
    selects(
        &m.kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "the PodDisruptionBudget",
    );
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );

    // baton is PID 1: the container's command is baton itself, no shell.
    let command = m.command();
    assert_eq!(command[..2], ["/usr/local/bin/baton", "run"], "{command:?}");
    let arg = |flag: &str| {
        command
            .iter()
            .position(|a| a == flag)
            .and_then(|i| command.get(i + 1))
            .unwrap_or_else(|| panic!("{flag} is not in the command {command:?}"))
            .clone()
    };
    let config_path = arg("--config");
    let metrics = arg("--metrics");

    // The probes ask baton's metrics endpoint.
    let metrics_port = m.port("metrics");
    assert!(
        metrics.ends_with(&format!(":{metrics_port}")),
        "{metrics} vs {metrics_port}"
    );
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/live")] {
        let get = &m.container()[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "metrics", "{probe}");
    }

    // The config file is a key of the ConfigMap, mounted whole.
    let (mount, data) = m.config_volume();
    let key = config_path
        .strip_prefix(&format!("{mount}/"))
        .unwrap_or_else(|| {
            panic!("--config {config_path} is not in the ConfigMap's mount {mount}")
        });
    let toml = data
        .get(key)
        .unwrap_or_else(|| panic!("the ConfigMap has no key {key}"));
    assert!(
        toml.contains(&format!("watch = [\"{config_path}\"]")),
        "the config file must watch itself, or a ConfigMap update never reloads:\n{toml}"
    );
    let http = m.port("http");
    assert!(
        toml.contains(&format!("address = \"tcp://0.0.0.0:{http}\"")),
        "baton must listen on the container port {http}:\n{toml}"
    );

    // The control socket's directory is writable (the root filesystem is
    // read-only): XDG_RUNTIME_DIR is an emptyDir.
    let env = m.env();
    let runtime = env.get("XDG_RUNTIME_DIR").expect("XDG_RUNTIME_DIR is set");
    assert!(
        m.empty_dirs().contains(runtime),
        "{runtime} is not an emptyDir"
    );

    // The time the kubelet allows covers the preStop wait and the drain.
    let pre_stop = m.pre_stop();
    let script = pre_stop.last().expect("a preStop command");
    let wait: u64 = script
        .split("sleep ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no `sleep N` in the preStop hook {script:?}"));
    // `--timeout` is an option of `baton ctl`, before the command
    // (`ctl stop --timeout` is a usage error, and the pod would be killed
    // undrained at the end of its grace period).
    assert!(
        script.contains("/usr/local/bin/baton ctl --timeout ")
            && script.trim_end().ends_with(" stop"),
        "{script}"
    );
    let grace = humantime::parse_duration(&toml_string(toml, "grace").expect("grace is set"))
        .expect("grace is a duration");
    let period = m.pod_spec()["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(period) >= Duration::from_secs(wait) + grace + Duration::from_secs(5),
        "terminationGracePeriodSeconds {period} must exceed the preStop wait {wait} s plus grace {grace:?}"
    );
    let ctl_timeout = humantime::parse_duration(
        script
            .split("--timeout ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("baton ctl --timeout DURATION stop"),
    )
    .expect("a duration");
    assert!(
        ctl_timeout > grace,
        "ctl stop --timeout {ctl_timeout:?} <= grace {grace:?}"
    );
}

/// The paths of the container, in the test's directory.
struct Paths {
    map: Vec<(String, PathBuf)>,
}

impl Paths {
    /// Rewrites every container path in `s` (at a path boundary).
    fn rewrite(&self, s: &str) -> String {
        let mut out = String::new();
        let mut i = 0;
        'scan: while i < s.len() {
            let boundary = i == 0 || !is_path_char(s.as_bytes()[i - 1]);
            if boundary {
                for (from, to) in &self.map {
                    if s[i..].starts_with(from.as_str()) {
                        let end = i + from.len();
                        if end == s.len()
                            || !is_path_char(s.as_bytes()[end])
                            || s.as_bytes()[end] == b'/'
                        {
                            out.push_str(&to.to_string_lossy());
                            i = end;
                            continue 'scan;
                        }
                    }
                }
            }
            let c = s[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
        out
    }

    /// Every absolute path in `s` is one the mapping covers (or /bin/sh).
    fn assert_covers(&self, s: &str) {
        for word in s.split(|c: char| c.is_whitespace() || c == '"' || c == '[' || c == ',') {
            if word.starts_with('/') && word != "/bin/sh" {
                assert!(
                    self.map
                        .iter()
                        .any(|(from, _)| word == from || word.starts_with(&format!("{from}/"))),
                    "the test does not know where {word:?} (in {s:?}) is in the container: add it to the mapping"
                );
            }
        }
    }
}

fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/')
}

/// A pod of `deployment.yaml`, emulated: see the module docs.
struct Pod {
    baton: Baton,
    paths: Paths,
    env: Vec<(String, String)>,
    config: Volume,
    config_key: String,
    toml: String,
    /// The test's directory (removed last).
    _dir: tempfile::TempDir,
}

/// The app in the image: `/app/releases/1/server`, the probe, which sends
/// READY=1 and reports its environment on `/env` (`APP_GREETING` as
/// `TEST_APP_GREETING`).
fn image(app: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let release = app.join("releases/1");
    std::fs::create_dir_all(&release).expect("mkdir");
    let server = release.join("server");
    std::fs::write(
        &server,
        // The probe's /env shows only TEST_* variables.
        format!(
            "#!/bin/sh\nexport TEST_APP_GREETING=\"$APP_GREETING\"\nexec {} --drain-ms 200\n",
            bin("baton-probe").display()
        ),
    )
    .expect("write the server");
    std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::symlink("releases/1", app.join("current")).expect("link current");
}

impl Pod {
    /// Starts the pod's container. The calling thread must be in the
    /// pod's network namespace ([`NetNs::enter`]).
    fn start(python: &Path) -> Self {
        let m = Manifests::load(python);
        let dir = tempfile::Builder::new()
            .prefix("baton-e2e-pod-")
            .tempdir()
            .expect("a temp dir");
        let (mount, data) = m.config_volume();
        let mut map = vec![
            ("/usr/local/bin/baton".to_owned(), bin("baton")),
            ("/app".to_owned(), dir.path().join("app")),
            (mount.clone(), dir.path().join("configmap")),
        ];
        for empty in m.empty_dirs() {
            let local = dir
                .path()
                .join(empty.trim_start_matches('/').replace('/', "-"));
            std::fs::create_dir_all(&local).expect("mkdir an emptyDir");
            map.push((empty, local));
        }
        // Longest first: /run/app before /app.
        map.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        let paths = Paths { map };
        image(&dir.path().join("app"));

        let command = m.command();
        let config_path = command
            .iter()
            .position(|a| a == "--config")
            .and_then(|i| command.get(i + 1))
            .expect("--config")
            .clone();
        let config_key = config_path
            .strip_prefix(&format!("{mount}/"))
            .expect("the config is in the ConfigMap")
            .to_owned();
        let toml = data.get(&config_key).expect("the config key").clone();
        for s in command
            .iter()
            .chain(m.pre_stop().iter())
            .chain(std::iter::once(&toml))
        {
            paths.assert_covers(s);
        }
        let rewritten: Vec<(String, String)> = data
            .iter()
            .map(|(k, v)| (k.clone(), paths.rewrite(v)))
            .collect();
        let borrowed: Vec<(&str, &str)> = rewritten
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let config = Volume::new(&dir.path().join("configmap"), &borrowed);
        let env: Vec<(String, String)> = m
            .env()
            .into_iter()
            .map(|(k, v)| (k, paths.rewrite(&v)))
            .collect();

        let argv: Vec<String> = command.iter().map(|a| paths.rewrite(a)).collect();
        assert_eq!(argv[0], bin("baton").to_string_lossy(), "{argv:?}");
        let mut cmd = BatonCmd::new().listeners_from_config().args(&argv[2..]);
        for (k, v) in &env {
            cmd = cmd.env(k, v);
        }
        let baton = cmd.spawn_in_pid_namespace();
        baton.wait_for("generation 1 ready", WAIT);
        Self {
            baton,
            paths,
            env,
            config,
            config_key,
            toml,
            _dir: dir,
        }
    }

    /// Runs `argv` (container paths) inside the pod's pid namespace, as
    /// `kubectl exec` and the kubelet's exec hooks do, with the
    /// container's environment.
    fn exec_command(&self, argv: &[String]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.baton.baton_pid().to_string())
            .args(["--pid", "--"])
            .args(argv.iter().map(|a| self.paths.rewrite(a)));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Updates the ConfigMap key holding baton's config to `toml`
    /// (container paths), as the kubelet does; returns the old version's
    /// directory, not yet removed.
    fn update_config(&mut self, toml: &str) -> Option<PathBuf> {
        let text = self.paths.rewrite(toml);
        self.config
            .update(&[(self.config_key.as_str(), text.as_str())])
    }
}

fn pod_tools_or_skip(test: &str) -> Option<PathBuf> {
    if which_or_skip(test, "unshare", "util-linux").is_none()
        || which_or_skip(test, "nsenter", "util-linux").is_none()
        || !root_or_skip(test, "a pid namespace and a network namespace of its own")
    {
        return None;
    }
    python_or_skip(test)
}

fn load(port: u16) -> baton_load::Running {
    let mut cfg = Config::new(Target::Tcp(([127, 0, 0, 1], port).into()));
    cfg.concurrency = 2;
    cfg.request_timeout = Duration::from_secs(20);
    let run = baton_load::start(cfg);
    assert!(
        run.wait_for_generation("1", WAIT).is_some(),
        "no response from the pod: {}",
        run.snapshot()
    );
    run
}

#[test]
fn the_pod_runs_baton_as_pid_1_and_reloads_in_place() {
    let test = "the_pod_runs_baton_as_pid_1_and_reloads_in_place";
    let Some(python) = pod_tools_or_skip(test) else {
        return;
    };
    let _ns = NetNs::enter();
    let mut pod = Pod::start(&python);
    let host = pod.baton.baton_pid();
    assert_eq!(procs::ns_pid(host), Some(1), "baton is PID 1 of the pod");
    let port = pod.baton.port_of("web");
    assert_eq!(port, 8080, "the pod's own port 8080");
    let env = http::get_ok(port, "/env");
    assert_eq!(env.var("TEST_APP_GREETING"), Some("hello"));
    // The kubelet's probes, on the port deployment.yaml gives them.
    let probes = 9100;
    let ready = |g: u32| {
        let r = http::get(probes, "/ready").expect("GET /ready");
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, format!("ready: generation {g} serves\n").as_str())
        );
    };
    ready(1);
    assert_eq!(http::get(probes, "/live").expect("GET /live").status, 200);
    let run = load(port);

    // SIGHUP from outside the pod (`docker kill -s HUP`, a node agent).
    pod.baton.reload(2, WAIT);
    // kubectl exec POD -- baton ctl reload: waits for the verdict.
    let out = run_bounded(
        pod.exec_command(&["/usr/local/bin/baton".into(), "ctl".into(), "reload".into()]),
        Duration::from_secs(90),
    );
    assert!(out.status.success(), "{}", output_text(&out));
    pod.baton.wait_for("generation 3 ready", WAIT);
    ready(3);

    // The ConfigMap is edited: the kubelet swaps `..data`. One reload, with
    // the new settings, and none when the old version is removed later.
    let mark = pod.baton.mark();
    let edited = pod
        .toml
        .replace("APP_GREETING = \"hello\"", "APP_GREETING = \"bonjour\"");
    assert_ne!(edited, pod.toml, "the example's config sets APP_GREETING");
    let old = pod.update_config(&edited).expect("an old version");
    pod.baton.wait_for_after(mark, "generation 4 ready", WAIT);
    pod.baton.wait_for_after(mark, "generation 3 exited", WAIT);
    assert!(
        run.wait_for_generation("4", WAIT).is_some(),
        "{}",
        run.snapshot()
    );
    let env = http::get_ok(port, "/env");
    assert_eq!(env.generation(), Some(4));
    ready(4);
    assert_eq!(env.var("TEST_APP_GREETING"), Some("bonjour"));
    pod.config.remove_old(&old);
    // Something the watcher sees but that changes no content, after the
    // removal: once it is handled, so is everything before it.
    let sentinel = pod.config.dir().join("sentinel");
    std::fs::write(&sentinel, "").expect("write the sentinel");
    pod.baton
        .wait_until_after(mark, "the sentinel handled", WAIT, |l| {
            l.contains("events without a content change") && l.contains("sentinel")
        });
    assert_eq!(
        pod.baton
            .lines()
            .iter()
            .skip(mark)
            .filter(|l| l.contains("watch: fingerprint"))
            .count(),
        1,
        "a ConfigMap update is one reload: {:#?}",
        &pod.baton.lines()[mark..]
    );
    assert!(!pod.baton.seen_after(mark, "generation 5 starting"));
    assert!(!pod.baton.seen_after(mark, "reload queued"));

    let report = run.stop();
    assert_eq!(report.failed, 0, "{report}");

    // SIGTERM from outside, as the kubelet sends it: drain, exit 0.
    let workers: Vec<Proc> = pod.baton.workers().iter().filter_map(|w| w.proc).collect();
    let status = pod.baton.stop(Signal::TERM, WAIT);
    assert_eq!(status.code(), Some(0), "{:?}", pod.baton.lines());
    for w in workers {
        assert!(!w.is_alive(), "worker {} outlived the pod's PID 1", w.pid);
    }
}

#[test]
fn the_prestop_hook_serves_then_drains_and_stops_cleanly() {
    let test = "the_prestop_hook_serves_then_drains_and_stops_cleanly";
    let Some(python) = pod_tools_or_skip(test) else {
        return;
    };
    let _ns = NetNs::enter();
    let mut pod = Pod::start(&python);
    let port = pod.baton.port_of("web");
    let run = load(port);
    let pre_stop = Manifests::load(&python).pre_stop();
    let period = Duration::from_secs(
        Manifests::load(&python).pod_spec()["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds"),
    );

    // The kubelet runs the hook in the container; its `sleep` is the wait
    // for the endpoints to forget the pod.
    let mut hook = pod.exec_command(&pre_stop);
    hook.stdin(std::process::Stdio::null());
    let started = Instant::now();
    let mut child = hook.spawn().expect("start the preStop hook");
    let hook_proc = Proc::find(child.id()).expect("the hook runs");
    let deadline = Instant::now() + WAIT;
    loop {
        let sleeping = procs::descendants(hook_proc.pid).into_iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        });
        if sleeping {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the preStop hook never got to its sleep"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Still serving during the wait.
    let before = run.snapshot().ok;
    let deadline = Instant::now() + WAIT;
    while run.snapshot().ok < before + 50 {
        assert!(
            Instant::now() < deadline,
            "no requests served during the preStop wait"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // A long request in flight when the drain begins.
    let slow = http::send(port, "/slow?ms=8000").expect("send a slow request");
    assert!(
        !pod.baton.seen_after(0, "stopping (graceful)"),
        "the machine is too slow for this test: the drain began before the slow request was sent"
    );
    // The endpoints have forgotten the pod: no new requests.
    let report = run.stop();
    assert_eq!(report.failed, 0, "{report}");

    pod.baton
        .wait_for("stopping (graceful)", Duration::from_secs(30));
    // While it drains (the slow request holds it), the readinessProbe
    // fails and the livenessProbe does not: the pod is leaving, not stuck.
    let r = http::get(9100, "/ready").expect("GET /ready while draining");
    assert_eq!(r.status, 503, "{r:?}");
    let r = http::get(9100, "/live").expect("GET /live while draining");
    assert_eq!(r.status, 200, "{r:?}");
    let reply = slow.finish().expect("the slow request is answered");
    assert_eq!(reply.status, 200, "{reply:?}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx
        .recv_timeout(period)
        .unwrap_or_else(|_| {
            hook_proc.signal(Signal::KILL);
            panic!("the preStop hook did not end within terminationGracePeriodSeconds {period:?}")
        })
        .expect("wait for the hook");
    assert_eq!(
        status.code(),
        Some(0),
        "baton ctl stop gives baton's exit code: 0 when every worker finished on its own"
    );
    assert!(started.elapsed() < period, "{:?}", started.elapsed());
    let workers: Vec<Proc> = pod.baton.workers().iter().filter_map(|w| w.proc).collect();
    let exit = pod.baton.wait_exit(WAIT);
    assert_eq!(exit.code(), Some(0), "{:?}", pod.baton.lines());
    for w in workers {
        assert!(!w.is_alive(), "worker {} outlived the pod", w.pid);
    }
}
