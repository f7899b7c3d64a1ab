//! A blocking CRI client (runtime.v1 over gRPC on containerd's unix socket), and the pod and
//! container configurations the suites send, shaped as kubelet shapes them: host network (no
//! CNI), no hostname (runc refuses one without a private UTS namespace), a pid namespace per
//! container, a cgroupfs-style cgroup parent of the form `.../pod<uid>`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Every call is bounded, so a wedged runtime fails a test instead of hanging it.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// What ContainerStatus says about a container.
#[derive(Debug, Clone)]
pub struct ContainerState {
    pub state: cri::ContainerState,
    pub exit_code: i32,
    /// The host pid of its PID 1 (from the verbose info), 0 when it is not running.
    pub pid: u32,
}

#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Cri {
    /// Connects to the CRI socket; the connection is made lazily, on the first call.
    pub fn connect(socket: &Path) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime for the CRI client")?;
        let path: PathBuf = socket.to_owned();
        // The channel spawns its worker task on the current runtime (driven by block_on).
        let _guard = rt.enter();
        // The URI is ignored: every connection goes to the unix socket.
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }));
        Ok(Cri {
            client: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            rt,
        })
    }

    fn call<T, F>(
        &self,
        what: &str,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let fut = f(self.client.clone());
        self.rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, fut).await })
            .map_err(|_| anyhow!("CRI {what}: no answer within {CALL_TIMEOUT:?}"))?
            .map(tonic::Response::into_inner)
            .map_err(|s| anyhow!("CRI {what}: {} ({:?})", s.message(), s.code()))
    }

    /// Whether CRI's image store has `image`.
    pub fn image_present(&self, image: &str) -> Result<bool> {
        let req = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        };
        let mut c = self.images.clone();
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, c.image_status(req)).await })
            .map_err(|_| anyhow!("CRI ImageStatus: no answer within {CALL_TIMEOUT:?}"))?
            .map_err(|s| anyhow!("CRI ImageStatus: {}", s.message()))?;
        Ok(r.into_inner().image.is_some())
    }

    pub fn version(&self) -> Result<cri::VersionResponse> {
        self.call("Version", |mut c| async move {
            c.version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
        })
    }

    pub fn run_pod_sandbox(&self, config: &cri::PodSandboxConfig) -> Result<String> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let r = self.call("RunPodSandbox", |mut c| async move {
            c.run_pod_sandbox(req).await
        })?;
        Ok(r.pod_sandbox_id)
    }

    pub fn create_container(
        &self,
        pod_id: &str,
        config: &cri::ContainerConfig,
        sandbox: &cri::PodSandboxConfig,
    ) -> Result<String> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox.clone()),
        };
        let r = self.call("CreateContainer", |mut c| async move {
            c.create_container(req).await
        })?;
        Ok(r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let req = cri::StartContainerRequest {
            container_id: id.to_string(),
        };
        self.call("StartContainer", |mut c| async move {
            c.start_container(req).await
        })
        .map(drop)
    }

    pub fn stop_container(&self, id: &str, timeout_s: i64) -> Result<()> {
        let req = cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout: timeout_s,
        };
        self.call("StopContainer", |mut c| async move {
            c.stop_container(req).await
        })
        .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let req = cri::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.call("RemoveContainer", |mut c| async move {
            c.remove_container(req).await
        })
        .map(drop)
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(req).await
        })
        .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(req).await
        })
        .map(drop)
    }

    pub fn list_pod_sandboxes(&self) -> Result<Vec<String>> {
        let r = self.call("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                .await
        })?;
        Ok(r.items.into_iter().map(|p| p.id).collect())
    }

    pub fn container_status(&self, id: &str) -> Result<ContainerState> {
        let req = cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        };
        let r = self.call("ContainerStatus", |mut c| async move {
            c.container_status(req).await
        })?;
        let status = r
            .status
            .ok_or_else(|| anyhow!("ContainerStatus of {id}: no status"))?;
        // containerd's verbose info is one JSON document under "info", with the host pid.
        let pid = r
            .info
            .get("info")
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| v["pid"].as_u64())
            .unwrap_or(0) as u32;
        Ok(ContainerState {
            state: cri::ContainerState::try_from(status.state)
                .unwrap_or(cri::ContainerState::ContainerUnknown),
            exit_code: status.exit_code,
            pid,
        })
    }

    /// Runs `cmd` in a running container (runc exec: the process joins its cgroups).
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout_s: i64) -> Result<ExecOutput> {
        let req = cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        };
        let r = self.call("ExecSync", |mut c| async move { c.exec_sync(req).await })?;
        Ok(ExecOutput {
            exit_code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        })
    }
}

/// A pod as a test describes it.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The pod's own labels (what events must carry).
    pub labels: BTreeMap<String, String>,
    /// A privileged sandbox: containerd refuses a privileged container in any other.
    pub privileged: bool,
}

impl PodSpec {
    /// A pod in namespace `podmap-test` with a fresh uid.
    pub fn new(name: &str) -> Self {
        PodSpec {
            name: name.to_string(),
            namespace: "podmap-test".to_string(),
            uid: new_uid(),
            labels: BTreeMap::new(),
            privileged: false,
        }
    }

    /// A pod that may hold privileged containers (its sandbox is privileged, as kubelet makes
    /// it for a pod with one).
    pub fn privileged(mut self) -> Self {
        self.privileged = true;
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.to_string(), v.to_string());
        self
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.to_string();
        self
    }

    /// The sandbox configuration kubelet would send for this pod under `cgroup_parent`.
    pub fn sandbox_config(&self, cgroup_parent: &str, log_dir: &Path) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            // No hostname: runc refuses one without a private UTS namespace (host network).
            hostname: String::new(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            labels: to_map(&self.labels),
            annotations: HashMap::from([(
                "kubernetes.io/config.source".to_string(),
                "podmap-conformance".to_string(),
            )]),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.to_string(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    privileged: self.privileged,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A container as a test describes it.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// The securityContext's `privileged`, capabilities `add` and `drop` (names without the
    /// CAP_ prefix, or ALL, as in a pod spec) and `runAsUser`.
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub run_as_user: Option<i64>,
}

impl ContainerSpec {
    /// A container of the test image running `command` (argv, absolute binary path).
    pub fn new(name: &str, command: &[&str]) -> Self {
        ContainerSpec {
            name: name.to_string(),
            image: super::images::TEST_IMAGE.to_string(),
            command: command.iter().map(|s| s.to_string()).collect(),
            labels: BTreeMap::new(),
            privileged: false,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            run_as_user: None,
        }
    }

    /// A container whose shell traps TERM first, runs `script`, then waits (so it stays up
    /// until stopped, and stops at once: once it runs `/bin/sleep`, its trap is set).
    pub fn shell_then_wait(name: &str, script: &str) -> Self {
        use super::images::{THEN_WAIT, TRAP_TERM};
        let s = format!("{TRAP_TERM}; {script}; {THEN_WAIT}");
        Self::new(name, &["/bin/sh", "-c", &s])
    }

    pub fn config(&self) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: self.name.clone(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: self.command.clone(),
            labels: to_map(&self.labels),
            log_path: format!("{}.log", self.name),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces()),
                    privileged: self.privileged,
                    capabilities: (!self.cap_add.is_empty() || !self.cap_drop.is_empty()).then(
                        || cri::Capability {
                            add_capabilities: self.cap_add.clone(),
                            drop_capabilities: self.cap_drop.clone(),
                            ..Default::default()
                        },
                    ),
                    run_as_user: self.run_as_user.map(|value| cri::Int64Value { value }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Host network and a pid namespace per container: what a hostNetwork pod without
/// shareProcessNamespace gets.
fn namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn to_map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A fresh pod uid in the usual 8-4-4-4-12 form.
pub fn new_uid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| {
            let n = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let h = format!("{n:032x}");
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        })
}
