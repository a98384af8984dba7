//! The `Registry` custom resource (`registries.berth.dev/v1alpha1`).
//!
//! Only types live here. Every field has a default, so `spec: {}` is a
//! complete, working registry; the defaults are written into the schema too,
//! so the apiserver stores them and `kubectl get -o yaml` shows what the
//! operator will do. Cross-field rules are CEL (`x-kubernetes-validations`)
//! so that a bad `Registry` is refused at `kubectl apply` with a sentence,
//! instead of surfacing later as a failed reconcile.

// Each `printcolumn(...)` repeats `type_ = ...`; clippy takes that for a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A DNS-1123 subdomain: what Kubernetes accepts as a Secret or class name,
/// and the shape of a host name clients can put in an image reference.
const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A Go `time.ParseDuration` string, as `metav1.Duration` and cert-manager use
/// (`2160h`, `90m`, `1h30m`).
const GO_DURATION: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A Kubernetes resource quantity with an optional binary or decimal suffix.
const QUANTITY: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";

/// A private OCI registry that berth deploys, serves over TLS and makes every
/// node trust.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Registry",
    plural = "registries",
    shortname = "reg",
    category = "berth",
    namespaced,
    status = "RegistryStatus",
    derive = "PartialEq",
    doc = "A private OCI container registry deployed by berth: TLS with a CA that every node trusts, storage, a Service and optionally an Ingress.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        description = "The host name to use in image references",
        json_path = ".status.endpoints.node"
    ),
    printcolumn(
        name = "Cert expiry",
        type_ = "string",
        description = "notAfter of the serving certificate",
        json_path = ".status.certificate.notAfter"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Auth",
        type_ = "string",
        priority = 1,
        description = "Who may push and pull: Kubernetes, Htpasswd or None",
        json_path = ".spec.auth.mode"
    ),
    printcolumn(
        name = "UI",
        type_ = "string",
        priority = 1,
        description = "The web UI's URL (spec.ui.enabled)",
        json_path = ".status.endpoints.ui"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].message"
    )
)]
#[x_kube(validation = Rule::new("!has(self.mirrors) || !self.mirrors.exists(m, has(m.maxAge) || has(m.maxSize)) || (has(self.gc) && has(self.gc.interval))").message("mirrors[].maxAge and maxSize are applied by garbage collection: set gc.interval too (e.g. 6h)"))]
#[x_kube(validation = Rule::new("!has(self.quotas) || (has(self.gc) && has(self.gc.interval))").message("quotas count what storage holds, and deleting images frees it only when garbage collection runs: set gc.interval too (e.g. 6h)"))]
#[x_kube(validation = Rule::new("!has(self.storage.filesystem) || self.replicas <= 1 || (has(self.storage.filesystem.accessMode) && self.storage.filesystem.accessMode == 'ReadWriteMany')").message("filesystem storage is one ReadWriteOnce volume that a single replica can use: set replicas to 0 or 1, set storage.filesystem.accessMode to ReadWriteMany if the storage class offers it, or use s3 storage to run more"))]
#[serde(rename_all = "camelCase")]
pub struct RegistrySpec {
    /// How many registry pods to run. 0 stops the registry and keeps its data.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 16))]
    pub replicas: i32,

    /// The registry image. Unset means the berth-registry image built with this
    /// operator, which is the one it is tested with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// When the kubelet pulls the registry image.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,

    /// Where image data is kept. Exactly one backend.
    #[serde(default)]
    pub storage: Storage,

    /// How the serving certificate is obtained and renewed.
    #[serde(default)]
    pub tls: Tls,

    /// The Service in front of the registry pods.
    #[serde(default)]
    pub service: ServiceSpec,

    /// Expose the registry outside the cluster through an Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,

    /// Make every (selected) node's container runtime trust this registry's
    /// CA and reach it by `status.endpoints.node`.
    #[serde(default)]
    pub node_trust: NodeTrust,

    /// Who may push and pull.
    #[serde(default)]
    pub auth: Auth,

    /// Online garbage collection: off unless `gc.interval` is set.
    #[serde(default, skip_serializing_if = "GarbageCollection::is_off")]
    pub gc: GarbageCollection,

    /// Webhooks told of manifest pushes, pulls and deletes, in
    /// Distribution's notification envelope format, with retries and a
    /// bounded queue per endpoint (a slow endpoint never slows a push).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Notifications>,

    /// Pull-through cache: upstream registries (`docker.io`, `ghcr.io`,
    /// ...) served under their host name as the first part of the
    /// repository name (`docker.io/library/nginx`), fetched on a miss and
    /// served from storage after, also when the upstream fails. With
    /// nodeTrust, every selected node's containerd pulls those upstreams
    /// through this registry (and falls back to them when it is down).
    /// Mirrored repositories are pullable without logging in (nodes send
    /// no credentials to a mirror); limit them with `repositories`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["prefix".into()]))]
    pub mirrors: Vec<Mirror>,

    /// CPU and memory for the registry container. Unset: requests of
    /// 50m CPU and 64Mi memory, a 512Mi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,

    /// The web UI the registry serves at `/ui/` (same TLS and logins).
    #[serde(default)]
    pub ui: UiSpec,

    /// Storage quotas per namespace (the first part of a repository's
    /// name): a push that would take a namespace past its limit is refused
    /// with `DENIED` and a message naming the quota. Usage per namespace
    /// shows in `status.usage` and the registry's metrics. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<Quotas>,
}

/// Byte limits per namespace, as Kubernetes quantities (`10Gi`, `500Mi`).
/// A namespace's usage is the distinct blobs and manifests its
/// repositories hold, each counted once (a layer shared by two of its
/// images counts once); deleted images count until garbage collection
/// reclaims them. Each registry replica checks against its own count,
/// which sees the other replicas' pushes within a minute: with several
/// replicas a burst of pushes may overshoot a little.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Quotas {
    /// The limit of every namespace not listed in `namespaces` (e.g.
    /// `10Gi`). Unset: only the listed namespaces are limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY), length(max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).compareTo(quantity('0')) >= 0").message("quotas.default is a byte quantity such as 10Gi or 500Mi"))]
    pub default: Option<String>,

    /// Limits of single namespaces, overriding `default`: `{team-a: 50Gi}`.
    /// `0` lets nothing new be pushed to the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "namespace_quotas_schema")]
    pub namespaces: BTreeMap<String, String>,
}

/// A map of namespace name to quantity, with its keys and values checked.
fn namespace_quotas_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Limits of single namespaces, overriding `default`: `{team-a: 50Gi}`. `0` lets nothing new be pushed to the namespace.",
        "type": "object",
        "maxProperties": 256,
        "additionalProperties": {"type": "string", "maxLength": 32, "pattern": QUANTITY},
        "x-kubernetes-validations": [
            {
                "rule": "self.all(ns, size(ns) <= 63 && ns.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))",
                "message": "quotas.namespaces is keyed by Kubernetes namespace names (lower-case letters, digits and '-', at most 63 characters), e.g. team-a: 50Gi"
            },
            {
                "rule": "self.all(ns, isQuantity(self[ns]) && quantity(self[ns]).compareTo(quantity('0')) >= 0)",
                "message": "each quotas.namespaces value is a byte quantity such as 50Gi or 500Mi"
            }
        ]
    })
}

/// The registry's web UI: repositories, images, signatures, deletion and
/// the audit trail, at `https://<endpoint>/ui/` (`status.endpoints.ui`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UiSpec {
    /// Serve the web UI. false: `/ui/` answers 404.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for UiSpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Whole units only (`90m`, `1h30m`, `500ms`): the registry reads these.
const WHOLE_DURATION: &str = r"^([0-9]+(ms|s|m|h))+$";

/// Online garbage collection, while the registry serves: manifests no tag,
/// index or live subject reaches, and blobs no kept manifest references,
/// are reclaimed once older than `grace`. What GC takes is held in
/// quarantine first, so a push that raced it gets it back; it never needs
/// read-only mode, and several replicas may run it at once.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.retention) || has(self.interval)").message("gc.retention is applied by GC runs: set gc.interval too"))]
#[serde(rename_all = "camelCase")]
pub struct GarbageCollection {
    /// How often to collect (e.g. `6h`). Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = WHOLE_DURATION), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')").message("gc.interval must be at least 1m"))]
    pub interval: Option<String>,

    /// Unreferenced content younger than this is kept (e.g. an image
    /// pushed by digest that a tag will point at in a moment). Unset: 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = WHOLE_DURATION), length(max = 32))]
    pub grace: Option<String>,

    /// Tags removed before each GC run, by repository glob: for each
    /// repository the first rule whose glob matches applies; a repository
    /// no rule matches keeps every tag. Never removed: a tag a running pod
    /// uses (by name or digest), and every image pods run from this
    /// registry stays, tagged or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub retention: Vec<RetentionRule>,
}

/// One retention rule. A tag stays if `protect` matches it, if it is among
/// the newest `keepLast` of the tags `protect` does not match, if it was
/// pushed within `keepWithin`, if it was pulled within `keepPulledWithin`,
/// or if a running pod uses it; the others are removed, and the images
/// only they reached are reclaimed by GC.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("has(self.keepLast) || has(self.keepWithin) || has(self.keepPulledWithin) || has(self.untaggedAfter)").message("a gc.retention rule needs keepLast, keepWithin, keepPulledWithin or untaggedAfter; without them it does nothing"))]
#[serde(rename_all = "camelCase")]
pub struct RetentionRule {
    /// A repository glob: `*` matches any run of characters (also `/`),
    /// `?` one character (`team/*`, `*`).
    #[schemars(length(min = 1, max = 255))]
    pub repositories: String,

    /// Keep the newest N tags (by when each was last pushed) that
    /// `protect` does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub keep_last: Option<u32>,

    /// Keep tags pushed within this long (e.g. `720h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = WHOLE_DURATION), length(max = 32))]
    pub keep_within: Option<String>,

    /// Keep tags whose image was pulled (by this tag, another tag or its
    /// digest) within this long (e.g. `720h`), however old. Pulls count
    /// from when the registry began recording them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = WHOLE_DURATION), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')").message("gc.retention[].keepPulledWithin must be at least 1m (pulls are recorded every 30s)"))]
    pub keep_pulled_within: Option<String>,

    /// Tag globs never removed (`latest`, `v*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 128)))]
    pub protect: Vec<String>,

    /// Manifests no tag, index or subject reaches are removed once this
    /// old (e.g. `24h`), instead of after `gc.grace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = WHOLE_DURATION), length(max = 32))]
    pub untagged_after: Option<String>,
}

impl GarbageCollection {
    pub fn is_off(&self) -> bool {
        self.interval.is_none()
    }
}

fn default_replicas() -> i32 {
    1
}

/// `requests` and `limits` only: the full `ResourceRequirements` schema
/// repeats the Quantity essay for every map and adds `claims`, which a
/// registry has no use for.
fn resources_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let quantities = serde_json::json!({
        "type": "object",
        "additionalProperties": {"x-kubernetes-int-or-string": true},
    });
    schemars::json_schema!({
        "description": "CPU and memory for the registry container. Unset: requests of 50m CPU and 64Mi memory, a 512Mi memory limit.",
        "type": "object",
        "properties": {"requests": quantities, "limits": quantities},
    })
}

impl Default for RegistrySpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            image: None,
            image_pull_policy: PullPolicy::default(),
            storage: Storage::default(),
            tls: Tls::default(),
            service: ServiceSpec::default(),
            ingress: None,
            node_trust: NodeTrust::default(),
            auth: Auth::default(),
            gc: GarbageCollection::default(),
            notifications: None,
            mirrors: Vec::new(),
            resources: None,
            ui: UiSpec::default(),
            quotas: None,
        }
    }
}

/// When the kubelet pulls the registry image.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Where image data is kept: set exactly one of `filesystem` or `s3`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.filesystem) ? 1 : 0) + (has(self.s3) ? 1 : 0) == 1").message("storage needs exactly one backend: set either storage.filesystem or storage.s3"))]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// A PersistentVolumeClaim mounted into the registry pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemStorage>,

    /// An S3-compatible bucket: any number of replicas share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            filesystem: Some(FilesystemStorage::default()),
            s3: None,
        }
    }
}

/// A PersistentVolumeClaim (`<name>-data`) for image data.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemStorage {
    /// Requested volume size. It can grow (if the storage class allows
    /// expansion) but not shrink.
    #[serde(default = "default_size")]
    #[schemars(regex(pattern = QUANTITY), length(max = 32))]
    #[x_kube(validation = Rule::new("quantity(self).compareTo(quantity('64Mi')) >= 0").message("storage.filesystem.size must be at least 64Mi"))]
    #[x_kube(validation = Rule::new("quantity(self).compareTo(quantity(oldSelf)) >= 0").message("storage.filesystem.size cannot shrink: a PersistentVolumeClaim can only grow"))]
    pub size: String,

    /// The StorageClass of the claim. Unset: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN), length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage.filesystem.storageClassName cannot change once the volume exists"))]
    pub storage_class_name: Option<String>,

    /// How the volume may be mounted. `ReadWriteOnce` (the default): one
    /// replica. `ReadWriteMany` (the storage class must offer it, e.g. NFS
    /// or CephFS): several replicas share the volume, as they share a
    /// bucket; the registry needs no lock between them.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage.filesystem.accessMode cannot change once the volume exists"))]
    pub access_mode: VolumeAccessMode,

    /// What happens to the volume when the Registry is deleted. `Retain`
    /// (the default) keeps the claim and its images; `Delete` removes them.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
}

fn default_size() -> String {
    "20Gi".to_owned()
}

impl Default for FilesystemStorage {
    fn default() -> Self {
        Self {
            size: default_size(),
            storage_class_name: None,
            access_mode: VolumeAccessMode::default(),
            reclaim_policy: ReclaimPolicy::default(),
        }
    }
}

/// The data volume's access mode (a PersistentVolumeClaim's `accessModes`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VolumeAccessMode {
    #[default]
    ReadWriteOnce,
    ReadWriteMany,
}

impl VolumeAccessMode {
    /// Whether several pods, on any nodes, may mount the volume at once.
    pub fn shared(self) -> bool {
        self == VolumeAccessMode::ReadWriteMany
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VolumeAccessMode::ReadWriteOnce => "ReadWriteOnce",
            VolumeAccessMode::ReadWriteMany => "ReadWriteMany",
        }
    }
}

/// What happens to stored images when the Registry is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReclaimPolicy {
    #[default]
    Retain,
    Delete,
}

/// An S3-compatible bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Bucket name.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"))]
    pub bucket: String,

    /// Region, e.g. `us-east-1`.
    #[schemars(length(min = 1, max = 64))]
    pub region: String,

    /// Endpoint URL of an S3-compatible server. Unset: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/.*)?$"), length(max = 512))]
    pub endpoint: Option<String>,

    /// A key prefix inside the bucket, so several registries can share one
    /// bucket. Unset: the bucket's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"), length(max = 256))]
    pub prefix: Option<String>,

    /// A Secret in the Registry's namespace with keys `accessKeyId` and
    /// `secretAccessKey`.
    pub credentials_secret: SecretName,

    /// Answer blob pulls with a redirect to a URL of the object signed for
    /// this long (e.g. `20m`), so layers flow from the bucket and not
    /// through the registry's pods. Only when every client (every node)
    /// can reach the endpoint. Unset: the registry streams blobs itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = WHOLE_DURATION), length(max = 32))]
    pub redirect: Option<String>,
}

/// A reference to a Secret in the Registry's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretName {
    #[schemars(regex(pattern = DNS_SUBDOMAIN), length(min = 1, max = 253))]
    pub name: String,
}

/// How the serving certificate is obtained and renewed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.mode != 'Secret' || has(self.secretName)").message("tls.mode Secret needs tls.secretName: the name of a kubernetes.io/tls Secret in the Registry's namespace"))]
#[x_kube(validation = Rule::new("self.mode == 'Secret' || !has(self.secretName)").message("tls.secretName is only used when tls.mode is Secret"))]
#[x_kube(validation = Rule::new("self.mode != 'CertManager' || has(self.issuerRef)").message("tls.mode CertManager needs tls.issuerRef naming a cert-manager Issuer or ClusterIssuer"))]
#[x_kube(validation = Rule::new("self.mode == 'CertManager' || !has(self.issuerRef)").message("tls.issuerRef is only used when tls.mode is CertManager"))]
#[x_kube(validation = Rule::new("duration(self.renewBefore) < duration(self.duration)").message("tls.renewBefore must be shorter than tls.duration, or the certificate would be renewed as soon as it is issued"))]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    /// `SelfSigned`: berth keeps a CA per Registry and issues the serving
    /// certificate from it. `Secret`: you provide a kubernetes.io/tls Secret.
    /// `CertManager`: a cert-manager Certificate from `issuerRef`.
    #[serde(default)]
    pub mode: TlsMode,

    /// Lifetime of the serving certificate (Go duration, e.g. `2160h`).
    #[serde(default = "default_duration")]
    #[schemars(regex(pattern = GO_DURATION), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('2m')").message("tls.duration must be at least 2m (short lifetimes are for testing rotation; production certificates usually last weeks)"))]
    pub duration: String,

    /// How long before `notAfter` the certificate is renewed (Go duration).
    #[serde(default = "default_renew_before")]
    #[schemars(regex(pattern = GO_DURATION), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('30s')").message("tls.renewBefore must be at least 30s, so the new certificate reaches the registry before the old one expires"))]
    pub renew_before: String,

    /// For mode `Secret`: a kubernetes.io/tls Secret in the Registry's
    /// namespace. Its `ca.crt`, if present, is what nodes are told to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN), length(min = 1, max = 253))]
    pub secret_name: Option<String>,

    /// For mode `CertManager`: the issuer of the Certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,

    /// More DNS names or IP addresses to put in the certificate, beside the
    /// Service names, the ClusterIP, the ingress host and the node host name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new("self.all(n, isIP(n) || n.matches('^(\\\\*\\\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'))").message("tls.extraNames holds lower-case DNS names (optionally starting with *.) or IP addresses"))]
    pub extra_names: Vec<String>,
}

fn default_duration() -> String {
    "2160h".to_owned()
}

fn default_renew_before() -> String {
    "720h".to_owned()
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            mode: TlsMode::default(),
            duration: default_duration(),
            renew_before: default_renew_before(),
            secret_name: None,
            issuer_ref: None,
            extra_names: Vec::new(),
        }
    }
}

/// Where the serving certificate comes from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TlsMode {
    #[default]
    SelfSigned,
    Secret,
    CertManager,
}

/// A cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct IssuerRef {
    #[schemars(regex(pattern = DNS_SUBDOMAIN), length(min = 1, max = 253))]
    pub name: String,

    #[serde(default)]
    pub kind: IssuerKind,

    /// API group of the issuer.
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1, max = 253))]
    pub group: String,
}

fn default_issuer_group() -> String {
    "cert-manager.io".to_owned()
}

/// The kind of a cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum IssuerKind {
    #[default]
    Issuer,
    ClusterIssuer,
}

/// The Service in front of the registry pods (named like the Registry).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type != 'ClusterIP' || !has(self.nodePort)").message("service.nodePort needs service.type NodePort or LoadBalancer"))]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// The port clients connect to.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// A fixed node port, for type NodePort or LoadBalancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub node_port: Option<i32>,

    /// Annotations for the Service (e.g. for a load balancer controller).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_port() -> i32 {
    443
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_port(),
            node_port: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// The type of the registry's Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// An Ingress for the registry. The registry itself speaks HTTPS, so the
/// ingress controller must proxy to an HTTPS backend and allow large bodies
/// for layer uploads: berth annotates the Ingress for ingress-nginx and
/// Traefik (see the operator's README for what Traefik needs besides).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// The external host name; it is added to the certificate.
    #[schemars(regex(pattern = DNS_SUBDOMAIN), length(min = 1, max = 253))]
    pub host: String,

    /// The IngressClass. Unset: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN), length(min = 1, max = 253))]
    pub class_name: Option<String>,

    /// Annotations for the Ingress (controller-specific settings), added to
    /// the ones berth sets for ingress-nginx and Traefik; a key set here
    /// overrides berth's value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Node trust: the node agent writes this registry's CA and host mapping
/// into each selected node's container runtime configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeTrust {
    /// Off: nodes are not configured, and pulls by the kubelet need the CA
    /// installed some other way.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Only nodes with these labels. Empty: every node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// The host name pods use in image references (`status.endpoints.node`).
    /// It need not resolve on the node: the node's runtime is told to reach
    /// it at the Service's ClusterIP. Unset: the Service's cluster DNS name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN), length(min = 1, max = 253))]
    pub host_name: Option<String>,
}

fn default_true() -> bool {
    true
}

impl Default for NodeTrust {
    fn default() -> Self {
        Self {
            enabled: true,
            node_selector: BTreeMap::new(),
            host_name: None,
        }
    }
}

/// Who may push and pull.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("self.mode != 'Htpasswd' || has(self.htpasswd)").message("auth.mode Htpasswd needs auth.htpasswd.secretName: a Secret with an `htpasswd` key holding bcrypt entries (htpasswd -B)"))]
#[x_kube(validation = Rule::new("self.mode == 'Htpasswd' || !has(self.htpasswd)").message("auth.htpasswd is only used when auth.mode is Htpasswd"))]
#[x_kube(validation = Rule::new("self.mode == 'Htpasswd' || !has(self.policy)").message("auth.policy is only used when auth.mode is Htpasswd; in Kubernetes mode RBAC on repositories.berth.dev decides who may do what"))]
#[x_kube(validation = Rule::new("self.mode == 'Kubernetes' || !has(self.kubernetes)").message("auth.kubernetes is only used when auth.mode is Kubernetes"))]
#[x_kube(validation = Rule::new("self.mode != 'None' || !has(self.pullSecrets)").message("auth.pullSecrets needs auth.mode Kubernetes or Htpasswd: with mode None nobody needs credentials to pull"))]
#[x_kube(validation = Rule::new("self.mode != 'None' || !has(self.anonymousPull)").message("auth.anonymousPull needs auth.mode Kubernetes or Htpasswd: with mode None everything can be pulled (and pushed) anonymously already"))]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    /// `Kubernetes` (the default): the password is a Kubernetes token
    /// (`kubectl create token`, an OIDC token, a pod's service-account
    /// token); RBAC on `repositories.berth.dev` in the repository's
    /// namespace decides. `Htpasswd`: users from a Secret, rights from
    /// `policy`. `None`: anyone who reaches the Service may push, overwrite
    /// and delete every image.
    #[serde(default)]
    pub mode: AuthMode,

    /// For mode `Kubernetes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesAuth>,

    /// For mode `Htpasswd`: where the users are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<HtpasswdAuth>,

    /// For mode `Htpasswd`: who may do what, by repository pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<AccessPolicy>,

    /// Repository globs anyone may pull without logging in (`public/*`);
    /// `*` matches across `/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 255)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub anonymous_pull: Vec<String>,

    /// Lifetime of the access tokens the registry issues (Go duration).
    /// Unset: 5m.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "tokenTTL")]
    #[schemars(regex(pattern = GO_DURATION), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('24h')").message("auth.tokenTTL must be between 1m and 24h"))]
    pub token_ttl: Option<String>,

    /// Provision a pull secret (a pull-only robot token for the namespace's
    /// own repositories) in the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secrets: Option<PullSecrets>,
}

/// How clients authenticate.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AuthMode {
    /// Kubernetes tokens (TokenReview) and RBAC (SubjectAccessReview).
    #[default]
    Kubernetes,
    /// Users from an htpasswd Secret, rights from `auth.policy`.
    Htpasswd,
    /// No authentication at all: anyone may push.
    None,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kubernetes => "Kubernetes",
            Self::Htpasswd => "Htpasswd",
            Self::None => "None",
        }
    }
}

/// Kubernetes mode's settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesAuth {
    /// A namespace's own service accounts may pull its repositories with
    /// no RoleBinding.
    #[serde(default = "default_true")]
    pub same_namespace_pull: bool,
}

impl Default for KubernetesAuth {
    fn default() -> Self {
        Self {
            same_namespace_pull: true,
        }
    }
}

/// Htpasswd mode's user file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HtpasswdAuth {
    /// A Secret in the Registry's namespace with key `htpasswd` (bcrypt
    /// entries, as `htpasswd -nbB user password` writes). Edits are picked
    /// up without a restart.
    #[schemars(regex(pattern = DNS_SUBDOMAIN), length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Htpasswd mode's rights. For a repository, the rules with the longest
/// matching pattern decide; a user none of them names gets
/// `authenticated`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicy {
    /// Named groups of users.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, Vec<String>>,

    /// Rules by repository pattern.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub rules: Vec<AccessRule>,

    /// What any logged-in user may do where no rule names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authenticated: Vec<RepositoryAction>,
}

/// One rule: who may do what on the repositories a glob matches.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("size(self.users) + size(self.groups) > 0").message("an auth.policy rule names at least one user or group (use auth.policy.authenticated for everyone)"))]
#[serde(rename_all = "camelCase")]
pub struct AccessRule {
    /// A repository glob: `*` matches any run of characters (also `/`),
    /// `?` one character.
    #[schemars(length(min = 1, max = 255))]
    pub repositories: String,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[schemars(length(min = 1))]
    pub actions: Vec<RepositoryAction>,
}

/// What may be done to a repository.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RepositoryAction {
    Pull,
    Push,
    Delete,
}

/// Pull secrets the operator keeps in selected namespaces.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PullSecrets {
    /// The namespaces that get one. An empty selector (`{}`) selects every
    /// namespace.
    pub namespace_selector: LabelSelector,

    /// The name of the `kubernetes.io/dockerconfigjson` Secret.
    #[serde(default = "default_pull_secret_name")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN), length(min = 1, max = 253))]
    pub secret_name: String,

    /// Also list the Secret in `imagePullSecrets` of each selected
    /// namespace's `default` ServiceAccount, so pods need no change.
    #[serde(default)]
    pub add_to_default_service_account: bool,
}

fn default_pull_secret_name() -> String {
    "berth-pull".to_owned()
}

/// A DNS-1123 label: what a notification endpoint's name must be (it names
/// volumes and metric labels).
const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Where the registry sends events.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Notifications {
    /// Each endpoint gets the events it asks for, on its own queue.
    #[serde(default)]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub endpoints: Vec<NotificationEndpoint>,
}

/// One webhook receiver.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationEndpoint {
    /// Names the endpoint in the registry's logs and metrics (a DNS label;
    /// the URL is never logged).
    #[schemars(regex(pattern = DNS_LABEL), length(min = 1, max = 40))]
    pub name: String,

    /// Where events are POSTed: `http://` or `https://`.
    #[schemars(regex(pattern = r"^https?://\S+$"), length(min = 8, max = 2048))]
    pub url: String,

    /// A header sent with every delivery (e.g. `Authorization`), its value
    /// read from a Secret in the Registry's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NotificationHeader>,

    /// Which events: `push`, `pull`, `delete`. Empty: all three.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub events: Vec<RepositoryAction>,

    /// Repository globs (`team/*`; `*` matches across `/`). Empty: every
    /// repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 255)))]
    pub repositories: Vec<String>,

    /// Seconds one delivery attempt may take. Unset: 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: Option<u32>,

    /// PEM CA certificates to trust (alone) for an `https://` URL, from a
    /// Secret key (cert-manager's `ca.crt`). Unset: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretKeyRef>,
}

/// A header whose value comes from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationHeader {
    /// The header's name, e.g. `Authorization`.
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"),
        length(min = 1, max = 128)
    )]
    pub name: String,
    /// The Secret key holding its value (e.g. `Bearer <token>`).
    pub secret_key_ref: SecretKeyRef,
}

/// One upstream registry the pull-through cache serves.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    /// The upstream's host name as image references spell it, and the
    /// first part of the cached repositories' names: `docker.io`,
    /// `ghcr.io`, `registry.k8s.io`. No port, no path.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == 'localhost' || self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$')").message("mirrors[].prefix is a registry host name as image references spell it: lower-case DNS labels joined by dots, no port or path (docker.io, ghcr.io, registry.k8s.io)"))]
    pub prefix: String,

    /// The upstream's base URL: `https://registry-1.docker.io` for
    /// `docker.io`, `https://ghcr.io`, ...
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/\\\\s\"]+(/\\\\S*)?$')").message("mirrors[].url is the upstream's base URL starting with https:// (or http://), e.g. https://registry-1.docker.io"))]
    pub url: String,

    /// A Secret in the Registry's namespace with keys `username` and
    /// `password` (or a token) for the upstream. Unset: anonymous (Docker
    /// Hub's anonymous tokens are fetched as clients do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN), length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,

    /// Upstream repository globs that may be fetched, as the upstream
    /// names them (`library/*`, `bitnami/redis`; `*` matches across `/`).
    /// Empty: every repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 255)))]
    pub repositories: Vec<String>,

    /// How long a tag fetched from the upstream is served before it is
    /// checked again (a HEAD request, which spares rate limits), e.g.
    /// `5m`, `1h`. Unset: 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = WHOLE_DURATION), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('720h')").message("mirrors[].tagFreshness must be at most 720h (a tag moved upstream is seen only after it)"))]
    pub tag_freshness: Option<String>,

    /// PEM CA certificates the upstream's certificate chains to, for a
    /// private upstream (added to the system's roots), from a Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,

    /// The cache's age cap: a cached tag neither fetched nor pulled (by
    /// tag or digest) in this long (e.g. `168h`) is removed at the next GC
    /// run (needs `gc.interval`); its layers go as GC removes any
    /// unreferenced content. Never removed: what a running pod uses.
    /// Unset: cached images stay until retention or a delete removes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = WHOLE_DURATION), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')").message("mirrors[].maxAge must be at least 1m (shorter would drop images between a pull and the pod's start)"))]
    pub max_age: Option<String>,

    /// The cache's size cap, a quantity (e.g. `20Gi`): when a GC run
    /// (needs `gc.interval`) finds this upstream's cached images larger
    /// (each layer counted once), it removes cached tags least recently
    /// pulled first until they fit. Never removed: what a running pod
    /// uses. Unset: no size cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY), length(max = 32))]
    #[x_kube(validation = Rule::new("quantity(self).compareTo(quantity('64Mi')) >= 0").message("mirrors[].maxSize must be at least 64Mi (smaller would drop images between a pull and the pod's start)"))]
    pub max_size: Option<String>,
}

/// A key of a Secret in the Registry's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    #[schemars(regex(pattern = DNS_SUBDOMAIN), length(min = 1, max = 253))]
    pub name: String,
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub key: String,
}

/// What the operator last observed and did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegistryStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `CertificateReady`, `StorageReady`, `NodeTrustReady`,
    /// `AuthReady` (False with reason `AuthDisabled` for mode None).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeCounts>,

    /// What the node agent writes on every selected node. Published here so
    /// the agent needs read access to Registries only (no Secrets,
    /// ConfigMaps or Services); CA certificates are public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_trust: Option<NodeTrustStatus>,

    /// Garbage collection: what the newest run did, and how many images
    /// the cluster's pods run from this registry (GC keeps them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcStatus>,

    /// Storage per namespace and its quota (with `spec.quotas`), as the
    /// registry last counted it; refreshed every few minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageStatus>,
}

/// Storage by namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageStatus {
    /// When the registry last walked its storage (pushes since are
    /// counted in as they happen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// By name; at most 100, the fullest (against their quota) kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceUsageStatus>,
    /// Namespaces left out of `namespaces`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// One namespace's storage.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceUsageStatus {
    pub namespace: String,
    pub repositories: i64,
    /// Distinct blobs and manifests its repositories hold.
    pub used_bytes: i64,
    /// Its quota (`spec.quotas`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<i64>,
}

/// The newest GC run any replica recorded, and what pods use.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcStatus {
    /// Images (repository and digest or tag) the cluster's pods run from
    /// this registry: GC keeps them and retention never removes their tags.
    pub images_in_use: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<GcRunStatus>,
}

/// One GC run's results.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcRunStatus {
    /// When it finished.
    pub time: Time,
    pub duration_seconds: f64,
    /// Why it stopped part way (the next run finishes what it left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Tags removed by `gc.retention`.
    pub tags_removed: i64,
    /// Tags retention would have removed, kept because a pod runs them.
    pub tags_kept_in_use: i64,
    /// Manifests and blobs moved to the quarantine (deleted by a later run
    /// unless something needs them again), and the blobs' bytes.
    pub manifests_quarantined: i64,
    pub blobs_quarantined: i64,
    pub bytes_quarantined: i64,
    /// Deleted for good, and the bytes freed.
    pub manifests_deleted: i64,
    pub blobs_deleted: i64,
    pub bytes_reclaimed: i64,
}

/// Where clients reach the registry (host or host:port, no scheme).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Endpoints {
    /// The Service's cluster DNS name, for pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<String>,
    /// The ingress host, for clients outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<String>,
    /// The name to use in a pod's `image:`; every trusting node resolves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The web UI's URL (on the ingress host if any, else the node
    /// endpoint); unset when `spec.ui.enabled` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui: Option<String>,
}

/// Facts about the serving certificate in use.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// When the serving certificate expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When the operator will renew it (notAfter − renewBefore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// `sha256:<hex>` of the DER of the CA certificate nodes trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
}

/// How many selected nodes trust the current CA.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct NodeCounts {
    pub trusted: i32,
    pub total: i32,
}

/// The node agent's instructions for this Registry: trust `caBundle` for
/// each of `hosts`, and reach them at `upstream`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeTrustStatus {
    /// Every `host` or `host:port` a pod may put before the repository in
    /// `image:` (the first is `status.endpoints.node`). Each becomes a
    /// directory under the runtimes' `certs.d`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Where the node's runtime connects instead of resolving the host
    /// name: `https://<ClusterIP>:<port>`. The serving certificate names
    /// the ClusterIP.
    pub upstream: String,
    /// The PEM CA certificates to trust: the current CA first, then, during
    /// a rotation, the previous one.
    pub ca_bundle: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_spec_deserializes_to_a_working_registry() {
        let spec: RegistrySpec = serde_json::from_str("{}").expect("empty spec");
        assert_eq!(spec, RegistrySpec::default());
        assert_eq!(spec.replicas, 1);
        assert_eq!(
            spec.storage.filesystem.as_ref().map(|f| f.size.as_str()),
            Some("20Gi")
        );
        assert_eq!(spec.tls.mode, TlsMode::SelfSigned);
        assert_eq!(
            (spec.tls.duration.as_str(), spec.tls.renew_before.as_str()),
            ("2160h", "720h")
        );
        assert_eq!(
            (spec.service.type_, spec.service.port),
            (ServiceType::ClusterIP, 443)
        );
        assert!(spec.node_trust.enabled);
        assert_eq!(spec.auth.mode, AuthMode::Kubernetes);
    }

    #[test]
    fn a_spec_serializes_without_nulls() {
        let text = serde_json::to_string(&RegistrySpec::default()).expect("json");
        assert!(!text.contains("null"), "{text}");
    }
}
