#![allow(dead_code, clippy::unwrap_used)]
//! A registry driven in process on a real filesystem store, shared by the
//! test files that need one.

use std::path::Path;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use sha2::{Digest as _, Sha256};
use tower::ServiceExt;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub struct Registry {
    pub app: Router,
    pub dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The OCI error code of an error reply.
    pub fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned()
    }
}

pub fn sha256(data: &[u8]) -> String {
    let h = Sha256::digest(data);
    format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

impl Registry {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Registry {
            app: berth_registry::router(berth_registry::filesystem_store(dir.path()).unwrap()),
            dir,
        }
    }

    /// A second server process on the same data (as after a restart).
    pub fn restarted(self) -> Self {
        Registry {
            app: berth_registry::router(berth_registry::filesystem_store(self.dir.path()).unwrap()),
            dir: self.dir,
        }
    }

    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(Body::from(body.into())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.send(Method::GET, uri, &[], Bytes::new()).await
    }

    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                &[],
                data.to_vec(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        digest
    }

    /// Pushes config + one layer and returns the manifest body.
    pub async fn image_manifest(&self, repo: &str, layer: &[u8], extra: &str) -> String {
        let config = self.push_blob(repo, b"{}").await;
        let layer_digest = self.push_blob(repo, layer).await;
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]{extra}}}"#,
            layer.len()
        )
    }

    pub async fn put_manifest(&self, repo: &str, reference: &str, body: &str) -> Reply {
        self.send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", OCI_MANIFEST)],
            body.to_owned(),
        )
        .await
    }

    pub async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        r.header("location").to_owned()
    }

    /// Every file under the data directory, for "nothing was touched" checks.
    pub fn files(&self) -> Vec<String> {
        pub fn walk(p: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.push(e.path().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(self.dir.path(), &mut out);
        out.sort();
        out
    }
}
