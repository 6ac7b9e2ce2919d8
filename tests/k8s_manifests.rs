//! deploy/k8s against the binary's own configuration parser. Every overlay is rendered with
//! `kubectl kustomize` (through `deploy/k8s/check.sh render`, which installs kubectl when it
//! is missing), and the environment each analytics-demo container would get in a pod is given
//! to `config::parse`: it must yield the workload, not an exit. Every variable the manifests
//! set must be one the binary reads, so a misspelt or retired name fails here instead of being
//! ignored in a cluster.
//!
//! What a pod gets is rebuilt from the rendered objects: `envFrom` / `configMapKeyRef` from the
//! rendered ConfigMaps, Secret values (the Secret is created by the user, never rendered)
//! replaced by stand-ins, `fieldRef`s by what Kubernetes would put there, password files by
//! temporary files (their paths must lie on the Secret volume), and the variables Kubernetes
//! adds itself (HOSTNAME; JOB_COMPLETION_INDEX in an Indexed Job).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::OnceLock;

use analytics_demo::config::{self, Command, Config, ParseOutcome};
use serde_json::{json, Value};

/// The container of the app in every workload (components/app/pod.yaml).
const APP_CONTAINER: &str = "analytics-demo";

/// Variables outside the option table that the binary reads for its instance index (issue 14:
/// INSTANCE_INDEX, else JOB_COMPLETION_INDEX, else POD_INDEX, else the host name's ordinal).
/// Kubernetes sets JOB_COMPLETION_INDEX and HOSTNAME; the StatefulSet sets POD_INDEX from the
/// pod-index label.
const INDEX_SOURCES: &[&str] = &["JOB_COMPLETION_INDEX", "POD_INDEX", "HOSTNAME"];

/// Options of the coordinated run (issue 14 part 1) that the manifests already use. PENDING
/// UNTIL THE LEAD'S MERGE: each is tolerated only while `config::ENV_VARS` lacks it, so the
/// check turns strict by itself once the binary reads them.
const PENDING_RUN_OPTIONS: &[&str] = &["RUN_NAME", "START_TIMEOUT"];

/// Whether the binary has the coordinated run (its RUN_NAME option): then the instance index
/// must come out of the Kubernetes variables too. Until then the index sources are not read
/// and every pod would be instance 0, which is part of what the lead is adding.
fn run_contract_merged() -> bool {
    config::ENV_VARS.contains(&"RUN_NAME")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The overlays, by directory name.
fn overlays() -> Vec<String> {
    let dir = root().join("deploy/k8s/overlays");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("kustomization.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every overlay rendered once (check.sh installs the tools on first use, so one at a time).
fn rendered() -> &'static BTreeMap<String, Vec<Value>> {
    static RENDERED: OnceLock<BTreeMap<String, Vec<Value>>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        overlays()
            .into_iter()
            .map(|overlay| {
                let out = Process::new("bash")
                    .arg(root().join("deploy/k8s/check.sh"))
                    .args(["render", &overlay])
                    .output()
                    .expect("run bash deploy/k8s/check.sh");
                assert!(
                    out.status.success(),
                    "check.sh render {overlay} failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let objects: Vec<Value> = serde_json::from_slice(&out.stdout)
                    .unwrap_or_else(|e| panic!("check.sh render {overlay}: not JSON: {e}"));
                (overlay, objects)
            })
            .collect()
    })
}

fn objects(overlay: &str) -> Vec<Value> {
    rendered()
        .get(overlay)
        .unwrap_or_else(|| panic!("no overlay {overlay}"))
        .clone()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// One workload running the app, and what the check found out about it.
#[derive(Debug)]
struct Checked {
    what: String,
    config: Config,
    /// The instance index the stand-ins gave the pod.
    index: u32,
    instances: u32,
    /// Variables tolerated because the binary does not read them yet (PENDING_RUN_OPTIONS).
    pending: BTreeSet<String>,
}

/// Checks every workload of `objects` that runs the app; at least one must.
fn check_overlay(objects: &[Value]) -> Result<Vec<Checked>, String> {
    let mut checked = Vec::new();
    for obj in objects {
        let template = &obj["spec"]["template"]["spec"];
        let Some(containers) = template["containers"].as_array() else {
            continue;
        };
        let Some(container) = containers.iter().find(|c| c["name"] == APP_CONTAINER) else {
            continue;
        };
        let what = format!("{} {}", s(&obj["kind"]), s(&obj["metadata"]["name"]));
        checked.push(check_workload(obj, container, objects).map_err(|e| format!("{what}: {e}"))?);
    }
    if checked.is_empty() {
        return Err(format!(
            "no workload runs a container named {APP_CONTAINER}"
        ));
    }
    Ok(checked)
}

/// The instance count a workload runs and the variables Kubernetes gives pod `index` of it.
fn instances_and_pod_env(obj: &Value, index: u32) -> Result<(u32, Vec<(String, String)>), String> {
    let name = s(&obj["metadata"]["name"]);
    let spec = &obj["spec"];
    let count = |field: &str| {
        spec[field]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("spec.{field} missing"))
    };
    match s(&obj["kind"]) {
        "Job" => {
            if spec["completionMode"] != "Indexed" {
                return Err("completionMode must be Indexed (the index is the instance)".into());
            }
            if spec["template"]["spec"]["restartPolicy"] != "Never" {
                return Err("restartPolicy must be Never".into());
            }
            let (completions, parallelism) = (count("completions")?, count("parallelism")?);
            if completions != parallelism {
                return Err(format!(
                    "completions ({completions}) and parallelism ({parallelism}) differ: \
                     every instance must run at once"
                ));
            }
            let env = vec![
                ("JOB_COMPLETION_INDEX".into(), index.to_string()),
                // An Indexed Job's pods are named and hosted <job>-<index>.
                ("HOSTNAME".into(), format!("{name}-{index}")),
            ];
            Ok((completions, env))
        }
        "StatefulSet" => {
            if spec["podManagementPolicy"] != "Parallel" {
                return Err("podManagementPolicy must be Parallel".into());
            }
            let env = vec![("HOSTNAME".into(), format!("{name}-{index}"))];
            Ok((count("replicas")?, env))
        }
        kind => Err(format!(
            "a {kind} gives its pods no instance index: use an Indexed Job or a StatefulSet"
        )),
    }
}

/// What Kubernetes puts in a `fieldRef` variable of pod `index` of `obj`.
fn field_ref(obj: &Value, path: &str, index: u32) -> Result<String, String> {
    match path {
        "metadata.labels['apps.kubernetes.io/pod-index']" if obj["kind"] == "StatefulSet" => {
            Ok(index.to_string())
        }
        "metadata.labels['batch.kubernetes.io/job-completion-index']"
        | "metadata.annotations['batch.kubernetes.io/job-completion-index']"
            if obj["kind"] == "Job" =>
        {
            Ok(index.to_string())
        }
        "metadata.name" => Ok(format!("{}-{index}", s(&obj["metadata"]["name"]))),
        "metadata.namespace" => Ok("default".into()),
        _ => Err(format!(
            "fieldRef {path}: no stand-in for it in {}",
            obj["kind"]
        )),
    }
}

fn config_map<'a>(objects: &'a [Value], name: &str) -> Result<&'a Value, String> {
    objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name)
        .map(|o| &o["data"])
        .ok_or_else(|| format!("refers to ConfigMap {name}, which the overlay does not render"))
}

/// The variables the manifests give the container, in order (later ones win, as in a pod),
/// with stand-ins for Secret values and `fieldRef`s.
fn manifest_env(
    obj: &Value,
    container: &Value,
    objects: &[Value],
    index: u32,
) -> Result<Vec<(String, String)>, String> {
    let mut env = Vec::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let Some(name) = from["configMapRef"]["name"].as_str() else {
            return Err(format!(
                "envFrom {from}: only configMapRef is understood here"
            ));
        };
        let data = config_map(objects, name)?;
        for (k, v) in data.as_object().into_iter().flatten() {
            env.push((k.clone(), s(v).to_string()));
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let name = s(&var["name"]).to_string();
        let from = &var["valueFrom"];
        let value = if let Some(v) = var["value"].as_str() {
            v.to_string()
        } else if from["secretKeyRef"].is_object() {
            // Printable ASCII, as a token must be.
            format!("stand-in-{}-0123456789", s(&from["secretKeyRef"]["key"]))
        } else if from["configMapKeyRef"].is_object() {
            let r = &from["configMapKeyRef"];
            let data = config_map(objects, s(&r["name"]))?;
            s(&data[s(&r["key"])]).to_string()
        } else if from["fieldRef"].is_object() {
            field_ref(obj, s(&from["fieldRef"]["fieldPath"]), index)?
        } else {
            return Err(format!("{name}: no value the check understands ({var})"));
        };
        env.push((name, value));
    }
    Ok(env)
}

/// The Secret volume directory a file path lies in, checked against the container's mounts.
fn check_secret_file(name: &str, path: &str, container: &Value, pod: &Value) -> Result<(), String> {
    let path = Path::new(path);
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| path.parent() == Some(Path::new(s(&m["mountPath"]))))
        .ok_or_else(|| format!("{name}={}: no volume is mounted there", path.display()))?;
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .ok_or_else(|| format!("volume {} is mounted but not defined", mount["name"]))?;
    let secret = &volume["secret"];
    if !secret.is_object() {
        return Err(format!(
            "{name}: the volume at {} is not a Secret",
            s(&mount["mountPath"])
        ));
    }
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
    if let Some(items) = secret["items"].as_array() {
        if !items.iter().any(|i| Some(s(&i["path"])) == file.as_deref()) {
            return Err(format!("{name}: the Secret volume has no item {file:?}"));
        }
    }
    Ok(())
}

/// CPUs of a quantity such as "2" or "500m", in millicores.
fn millicores(q: &str) -> Option<u64> {
    match q.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => q.parse::<u64>().ok().map(|c| c * 1000),
    }
}

fn check_workload(obj: &Value, container: &Value, objects: &[Value]) -> Result<Checked, String> {
    let (instances, _) = instances_and_pod_env(obj, 0)?;
    // Pod 1 (not 0, the default) when there are several, so a lost index shows.
    let index = 1.min(instances.saturating_sub(1));
    let (_, kubernetes_env) = instances_and_pod_env(obj, index)?;
    let pod = &obj["spec"]["template"]["spec"];
    let set_by_manifests = manifest_env(obj, container, objects, index)?;

    let mut pending = BTreeSet::new();
    for (name, _) in &set_by_manifests {
        if config::ENV_VARS.contains(&name.as_str()) || INDEX_SOURCES.contains(&name.as_str()) {
            continue;
        }
        if PENDING_RUN_OPTIONS.contains(&name.as_str()) {
            pending.insert(name.clone());
            continue;
        }
        return Err(format!(
            "sets {name}, which analytics-demo does not read (not in config::ENV_VARS)"
        ));
    }

    // Kubernetes' own variables first: the manifests' win, as in a pod.
    let mut env: BTreeMap<String, String> = kubernetes_env.into_iter().collect();
    env.extend(set_by_manifests);
    let files = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    for (name, value) in env.iter_mut() {
        if !name.ends_with("_FILE") {
            continue;
        }
        if !name.ends_with("_PASSWORD_FILE") && name != "ADMIN_TOKEN_FILE" {
            return Err(format!("{name}: no stand-in content for it here; add one"));
        }
        check_secret_file(name, value, container, pod)?;
        let stand_in = files.path().join(name.as_str());
        std::fs::write(&stand_in, "stand-in-password\n").map_err(|e| e.to_string())?;
        *value = stand_in.to_string_lossy().into_owned();
    }

    if !container["command"].is_null() {
        return Err("sets command: the image's entrypoint is the binary".into());
    }
    let mut args = vec![APP_CONTAINER.to_string()];
    for a in container["args"].as_array().into_iter().flatten() {
        args.push(s(a).to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let config = match config::parse(&args, &|key| env.get(key).cloned()) {
        ParseOutcome::Command(Command::Run(config)) => config,
        ParseOutcome::Command(other) => {
            return Err(format!("parses to {other:?}, not the workload"))
        }
        ParseOutcome::Exit { code, output } => {
            return Err(format!("the binary would exit {code}: {output}"))
        }
    };

    if config.instance_count != instances {
        return Err(format!(
            "INSTANCE_COUNT is {} but the workload runs {instances} instances",
            config.instance_count
        ));
    }
    // Shards are explicit (a pod's affinity mask is the node's), one CPU each plus the control
    // core, not pinned (other pods share those CPUs), and enough organizations to split.
    let shards = config.run.shards as u64;
    if shards == 0 {
        return Err("SHARDS must be set: the CPUs a pod sees are the node's".into());
    }
    if config.run.pin {
        return Err("NO_PIN must be set: the pod's CPUs are shared with other pods".into());
    }
    let cpu = s(&container["resources"]["limits"]["cpu"]);
    match millicores(cpu) {
        Some(m) if m >= (shards + 1) * 1000 => {}
        _ => {
            return Err(format!(
                "CPU limit {cpu:?} is below SHARDS + 1 ({}) CPUs",
                shards + 1
            ))
        }
    }
    if u64::from(config.organizations) < shards * u64::from(instances) {
        return Err(format!(
            "ORGANIZATIONS ({}) below shards x instances ({})",
            config.organizations,
            shards * u64::from(instances)
        ));
    }
    Ok(Checked {
        what: format!("{} {}", s(&obj["kind"]), s(&obj["metadata"]["name"])),
        config,
        index,
        instances,
        pending,
    })
}

/// The check's error for `overlay` once `change` has altered its first `kind` object.
fn error_after(overlay: &str, kind: &str, change: impl FnOnce(&mut Value)) -> String {
    let mut objects = objects(overlay);
    let obj = objects
        .iter_mut()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("{overlay}: no {kind}"));
    change(obj);
    match check_overlay(&objects) {
        Ok(_) => panic!("{overlay}: the change to its {kind} must fail the check"),
        Err(e) => e,
    }
}

#[test]
fn every_overlay_gives_the_app_an_environment_its_parser_accepts() {
    let names = overlays();
    for want in ["rehearsal", "demo"] {
        assert!(
            names.iter().any(|n| n == want),
            "overlay {want} missing: {names:?}"
        );
    }
    for overlay in &names {
        let checked = check_overlay(&objects(overlay)).unwrap_or_else(|e| panic!("{overlay}: {e}"));
        for c in checked {
            if !c.pending.is_empty() {
                println!(
                    "{overlay}: {}: {:?} pending until the lead's merge (not in config::ENV_VARS yet)",
                    c.what, c.pending
                );
            }
            if run_contract_merged() {
                assert_eq!(
                    c.config.instance_index, c.index,
                    "{overlay}: {}: the instance index must come from the pod's Kubernetes variables",
                    c.what
                );
            } else {
                println!(
                    "{overlay}: {}: instance index from JOB_COMPLETION_INDEX / POD_INDEX pending \
                     until the lead's merge",
                    c.what
                );
            }
            println!(
                "{overlay}: {}: accepted, {} instances, {} events/s and {} queries/s, {} shard(s)",
                c.what,
                c.instances,
                c.config.events_per_second,
                c.config.queries_per_second,
                c.config.run.shards
            );
        }
    }
}

#[test]
fn a_variable_the_binary_does_not_read_fails_the_check() {
    let err = error_after("demo", "StatefulSet", |sts| {
        let containers = &mut sts["spec"]["template"]["spec"]["containers"];
        let app = containers
            .as_array_mut()
            .and_then(|cs| cs.iter_mut().find(|c| c["name"] == APP_CONTAINER))
            .expect("app container");
        app["env"]
            .as_array_mut()
            .expect("env list")
            .push(json!({"name": "EVENTS_PER_SECONDS", "value": "100"}));
    });
    assert!(err.contains("sets EVENTS_PER_SECONDS"), "{err}");
}

#[test]
fn a_value_the_binary_rejects_fails_the_check() {
    let err = error_after("rehearsal", "ConfigMap", |cm| {
        cm["data"]["SHARDS"] = json!("two");
    });
    assert!(
        err.contains("would exit 2") && err.contains("SHARDS"),
        "{err}"
    );
}

#[test]
fn an_instance_count_that_disagrees_with_the_workload_fails_the_check() {
    let err = error_after("rehearsal", "Job", |job| {
        job["spec"]["completions"] = json!(4);
        job["spec"]["parallelism"] = json!(4);
    });
    assert!(err.contains("runs 4 instances"), "{err}");
}

#[test]
fn a_password_file_off_the_secret_volume_fails_the_check() {
    let err = error_after("demo", "ConfigMap", |cm| {
        cm["data"]["REDIS_PASSWORD_FILE"] = json!("/etc/analytics-demo/redis-password");
    });
    assert!(err.contains("no volume is mounted there"), "{err}");
}
