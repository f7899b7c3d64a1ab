//! Pod fixtures: a minimal pod, and a realistic one shaped like what a Deployment's pod looks
//! like on a real cluster (managed fields, spec, conditions, container statuses), for memory
//! figures that mean something.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

/// A uuid-shaped uid derived from `seed`.
pub fn uid(seed: &str) -> String {
    let a = hash(&(seed, 1));
    let b = hash(&(seed, 2));
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// A 64-hex container id derived from `seed`.
pub fn container_id(seed: &str) -> String {
    (0..4)
        .map(|i| format!("{:016x}", hash(&(seed, i + 10))))
        .collect()
}

fn hash(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// A bare pod on `node` with labels and one running container `main`
/// (id `containerd://<container_id(name)>`).
pub fn pod(namespace: &str, name: &str, node: &str, labels: &[(&str, &str)]) -> Pod {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid(&format!("{namespace}/{name}")),
                     "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox:1.36"}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "main", "image": "docker.io/library/busybox:1.36", "imageID": "sha256:0000",
            "containerID": format!("containerd://{}", container_id(name)),
            "ready": true, "restartCount": 0, "started": true,
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}
    }))
    .expect("fixture pod")
}

/// The `index`th pod of Deployment `deployment` on `node`: labels and annotations as common
/// charts set them (kubectl's `last-applied-configuration` copy of the pod among them, as on
/// pods whose tooling applies them or copies the annotation into the template), an owner
/// reference to the ReplicaSet, an init container and two containers (a sidecar) with
/// environment, resources, probes, volumes, conditions, container statuses, and the managed
/// fields the API server adds: about 11 KiB of JSON, as such pods are.
pub fn deployment_pod(
    namespace: &str,
    deployment: &str,
    hash: &str,
    index: usize,
    node: &str,
) -> Pod {
    let replicaset = format!("{deployment}-{hash}");
    let name = format!(
        "{replicaset}-{}",
        &uid(&format!("{deployment}{index}"))[..5]
    );
    let pod_uid = uid(&format!("{namespace}/{name}"));
    let time = "2026-01-01T00:00:00Z";
    let fields_v1 = json!({
        "f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app.kubernetes.io/name": {},
            "f:app.kubernetes.io/instance": {}, "f:app.kubernetes.io/version": {}, "f:pod-template-hash": {},
            "f:team": {}}, "f:ownerReferences": {".": {}, format!("k:{{\"uid\":\"{}\"}}", uid(&replicaset)): {}}},
        "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:imagePullPolicy": {},
            "f:name": {}, "f:ports": {".": {}, "k:{\"containerPort\":8080,\"protocol\":\"TCP\"}": {".": {},
            "f:containerPort": {}, "f:name": {}, "f:protocol": {}}}, "f:resources": {".": {}, "f:limits": {".": {},
            "f:memory": {}}, "f:requests": {".": {}, "f:cpu": {}, "f:memory": {}}}, "f:terminationMessagePath": {},
            "f:terminationMessagePolicy": {}, "f:volumeMounts": {".": {}, "k:{\"mountPath\":\"/etc/app\"}": {".": {},
            "f:mountPath": {}, "f:name": {}}}}, "k:{\"name\":\"proxy\"}": {".": {}, "f:image": {}, "f:name": {},
            "f:resources": {}}}, "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:initContainers": {},
            "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {}, "f:serviceAccount": {},
            "f:terminationGracePeriodSeconds": {}, "f:volumes": {".": {}, "k:{\"name\":\"config\"}": {".": {},
            "f:configMap": {".": {}, "f:defaultMode": {}, "f:name": {}}, "f:name": {}}}}
    });
    let status_fields = json!({
        "f:status": {"f:conditions": {"k:{\"type\":\"ContainersReady\"}": {".": {}, "f:lastProbeTime": {},
            "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}, "k:{\"type\":\"Initialized\"}": {".": {},
            "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}},
            "k:{\"type\":\"Ready\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {},
            "f:type": {}}}, "f:containerStatuses": {}, "f:hostIP": {}, "f:initContainerStatuses": {},
            "f:phase": {}, "f:podIP": {}, "f:podIPs": {".": {}, "k:{\"ip\":\"10.244.1.7\"}": {".": {}, "f:ip": {}}},
            "f:startTime": {}}
    });
    let container_status = |name: &str, image: &str, init: bool| {
        let state = if init {
            json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": time, "finishedAt": time,
                   "containerID": format!("containerd://{}", container_id(&format!("{pod_uid}/{name}")))}})
        } else {
            json!({"running": {"startedAt": time}})
        };
        json!({"name": name, "image": image, "imageID": format!("{image}@sha256:{}", container_id(image)),
               "containerID": format!("containerd://{}", container_id(&format!("{pod_uid}/{name}"))),
               "ready": !init, "restartCount": 0, "started": !init, "state": state, "lastState": {}})
    };
    let condition = |kind: &str| json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": time});
    let app_image = format!("registry.example.com/{namespace}/{deployment}:1.4.2");
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "generateName": format!("{replicaset}-"), "namespace": namespace, "uid": pod_uid,
            "creationTimestamp": time,
            "labels": {"app.kubernetes.io/name": deployment, "app.kubernetes.io/instance": format!("{deployment}-prod"),
                       "app.kubernetes.io/version": "1.4.2", "pod-template-hash": hash, "team": "payments"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": time, "prometheus.io/scrape": "true",
                            "prometheus.io/port": "8080"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replicaset,
                                 "uid": uid(&replicaset), "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": time,
                 "fieldsType": "FieldsV1", "fieldsV1": fields_v1},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": time,
                 "fieldsType": "FieldsV1", "fieldsV1": status_fields, "subresource": "status"}
            ]
        },
        "spec": {
            "nodeName": node, "serviceAccountName": deployment, "serviceAccount": deployment,
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
            "terminationGracePeriodSeconds": 30, "enableServiceLinks": true, "priority": 0,
            "preemptionPolicy": "PreemptLowerPriority", "securityContext": {},
            "initContainers": [{"name": "migrate", "image": app_image, "command": ["/app", "migrate"],
                "resources": {}, "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
            "containers": [
                {"name": "app", "image": app_image, "imagePullPolicy": "IfNotPresent",
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                 "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_NAME",
                          "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                 "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
                 "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
                                    "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1,
                                    "failureThreshold": 3},
                 "volumeMounts": [{"name": "config", "mountPath": "/etc/app"},
                                  {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                                   "readOnly": true}],
                 "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"},
                {"name": "proxy", "image": "docker.io/envoyproxy/envoy:v1.30.1", "resources": {},
                 "env": [{"name": "ENVOY_UID", "value": "0"}, {"name": "HOST_IP",
                          "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.hostIP"}}}],
                 "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                                   "readOnly": true}],
                 "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                 "imagePullPolicy": "IfNotPresent"}
            ],
            "volumes": [{"name": "config", "configMap": {"name": format!("{deployment}-config"), "defaultMode": 420}},
                        {"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                "fieldPath": "metadata.namespace"}}]}}]}}],
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ]
        },
        "status": {
            "phase": "Running", "qosClass": "Burstable", "hostIP": "192.0.2.10", "podIP": "10.244.1.7",
            "podIPs": [{"ip": "10.244.1.7"}], "startTime": time,
            "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"), condition("Ready"),
                           condition("ContainersReady"), condition("PodScheduled")],
            "initContainerStatuses": [container_status("migrate", &app_image, true)],
            "containerStatuses": [container_status("app", &app_image, false),
                                  container_status("proxy", "docker.io/envoyproxy/envoy:v1.30.1", false)]
        }
    });
    // kubectl's copy: the object as applied (metadata without what the server adds, the spec
    // without the scheduler's nodeName), compact JSON and a newline, as kubectl writes it.
    let mut spec = pod["spec"].clone();
    spec.as_object_mut().expect("spec").remove("nodeName");
    let applied = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"annotations": pod["metadata"]["annotations"].clone(),
                     "labels": pod["metadata"]["labels"].clone(),
                     "name": pod["metadata"]["name"].clone(), "namespace": namespace},
        "spec": spec,
    });
    pod["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
        json!(format!("{applied}\n"));
    serde_json::from_value(pod).expect("fixture deployment pod")
}
