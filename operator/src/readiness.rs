//! Whether the registry answers through its Service, which is what Ready
//! promises: a push right after `kubectl wait --for=condition=Ready` must
//! not meet "connection refused" while the Service has no ready endpoint
//! yet.
//!
//! Two observations, one pure decision ([`serving`]): the Service's
//! EndpointSlices must list a ready endpoint, and, where the operator can
//! reach the Service's ClusterIP (it runs in the cluster), `GET /v2/`
//! through that address must answer 200 or 401. An operator run outside
//! the cluster (tests, a laptop) usually cannot route to a ClusterIP: then
//! the probe is skipped with the reason in the condition message, so Ready
//! is not held back forever by something the registry cannot fix.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ListParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::status::ServingState;
use crate::{Error, kube_err};

/// The label the EndpointSlice controller puts on each slice of a Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How long a probe may take, connect to status line.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// After a probe failed in the cluster, look again this soon: the usual
/// cause is kube-proxy not having programmed the new endpoint yet.
pub(crate) const RETRY: Duration = Duration::from_secs(2);

/// The ready endpoints the Service routes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Endpoints {
    /// This many ready endpoint addresses.
    Ready(usize),
    /// Slices exist (or not) but none lists a ready endpoint.
    NoneReady,
}

/// What `GET /v2/` through the Service's ClusterIP said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Not tried (no ClusterIP yet, or the endpoints already say no).
    NotTried,
    /// An HTTP status came back.
    Answered(u16),
    /// No answer. `in_cluster`: the operator runs in the cluster, so the
    /// address should be reachable and the failure is the registry's.
    NoAnswer { detail: String, in_cluster: bool },
}

/// Decide from the endpoints and the probe. Only `/v2/`'s own answers
/// count: 200 (auth off) or 401 (a login is asked for) are a registry; any
/// other status is something else answering, or a registry in trouble.
pub(crate) fn serving(endpoints: &Endpoints, probe: &Probe, address: &str) -> ServingState {
    let count = match endpoints {
        Endpoints::NoneReady => {
            return ServingState::NotServing {
                reason: "NoReadyEndpoints",
                message: "the Service has no ready endpoint yet".into(),
            };
        }
        Endpoints::Ready(n) => *n,
    };
    match probe {
        Probe::Answered(200 | 401) => ServingState::Serving {
            endpoints: count,
            note: format!("/v2/ answers through the Service at {address}"),
        },
        Probe::Answered(code) => ServingState::NotServing {
            reason: "ProbeFailed",
            message: format!(
                "GET /v2/ through the Service at {address} answered {code}, not 200 or 401: check the registry pods' logs"
            ),
        },
        Probe::NoAnswer {
            detail,
            in_cluster: true,
        } => ServingState::NotServing {
            reason: "ProbeFailed",
            message: format!("GET /v2/ through the Service at {address} failed: {detail}"),
        },
        Probe::NoAnswer {
            in_cluster: false, ..
        } => ServingState::Serving {
            endpoints: count,
            note: format!(
                "/v2/ not probed: the operator runs outside the cluster and cannot reach {address}"
            ),
        },
        Probe::NotTried => ServingState::Serving {
            endpoints: count,
            note: "/v2/ not probed: the Service has no ClusterIP".into(),
        },
    }
}

/// Count the ready endpoints in the slices of one Service.
pub(crate) fn ready_endpoints(slices: &[EndpointSlice]) -> Endpoints {
    let ready: usize = slices
        .iter()
        .flat_map(|s| &s.endpoints)
        // `ready` unset means ready, per the EndpointSlice API.
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .map(|e| e.addresses.len())
        .sum();
    if ready == 0 {
        Endpoints::NoneReady
    } else {
        Endpoints::Ready(ready)
    }
}

/// Read the Service's EndpointSlices.
pub(crate) async fn observe_endpoints(
    client: &Client,
    namespace: &str,
    service: &str,
) -> Result<Endpoints, Error> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let listed = api
        .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={service}")))
        .await
        .map_err(kube_err("listing the Service's EndpointSlices"))?;
    Ok(ready_endpoints(&listed.items))
}

/// `GET /v2/` over TLS at `ip:port`; the status code, or why there is none.
///
/// The certificate is not checked: the probe sends no credential and asks
/// only whether a registry answers at the Service; whether the certificate
/// is right is CertificateReady's business.
pub(crate) async fn probe(ip: IpAddr, port: u16, in_cluster: bool) -> Probe {
    match tokio::time::timeout(PROBE_TIMEOUT, get_v2(SocketAddr::new(ip, port))).await {
        Ok(Ok(code)) => Probe::Answered(code),
        Ok(Err(e)) => Probe::NoAnswer {
            detail: e.to_string(),
            in_cluster,
        },
        Err(_) => Probe::NoAnswer {
            detail: format!("no answer within {PROBE_TIMEOUT:?}"),
            in_cluster,
        },
    }
}

async fn get_v2(addr: SocketAddr) -> Result<u16, ProbeError> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(ProbeError::Tls)?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCertificate))
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let request = format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = tls.read(&mut head[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    status_code(&head[..len]).ok_or(ProbeError::NotHttp)
}

/// The code of an HTTP/1.x status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head.get(..12)?).ok()?;
    let code = text.strip_prefix("HTTP/1.")?.get(2..5)?;
    code.parse().ok()
}

/// Why a probe got no status; only ever shown as text.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    #[error("the answer is not HTTP")]
    NotHttp,
}

#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

    use super::*;

    const AT: &str = "10.43.0.10:443";

    fn slice(ready: &[Option<bool>]) -> EndpointSlice {
        EndpointSlice {
            endpoints: ready
                .iter()
                .map(|r| Endpoint {
                    addresses: vec!["10.42.0.7".into()],
                    conditions: Some(EndpointConditions {
                        ready: *r,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_ready_endpoints_count_and_unset_means_ready() {
        assert_eq!(ready_endpoints(&[]), Endpoints::NoneReady);
        assert_eq!(
            ready_endpoints(&[slice(&[Some(false)])]),
            Endpoints::NoneReady
        );
        assert_eq!(
            ready_endpoints(&[slice(&[Some(true), Some(false)]), slice(&[None])]),
            Endpoints::Ready(2)
        );
    }

    #[test]
    fn no_ready_endpoint_is_not_serving_whatever_the_probe_says() {
        let state = serving(&Endpoints::NoneReady, &Probe::Answered(401), AT);
        assert!(matches!(
            state,
            ServingState::NotServing {
                reason: "NoReadyEndpoints",
                ..
            }
        ));
    }

    #[test]
    fn a_registry_answer_through_the_service_is_serving() {
        for code in [200, 401] {
            let state = serving(&Endpoints::Ready(1), &Probe::Answered(code), AT);
            assert!(state.is_serving(), "{code}: {state:?}");
        }
    }

    #[test]
    fn another_status_through_the_service_is_not_serving() {
        let state = serving(&Endpoints::Ready(1), &Probe::Answered(503), AT);
        assert_eq!(
            state,
            ServingState::NotServing {
                reason: "ProbeFailed",
                message: "GET /v2/ through the Service at 10.43.0.10:443 answered 503, not 200 or 401: check the registry pods' logs".into(),
            }
        );
    }

    #[test]
    fn no_answer_in_the_cluster_holds_ready_back() {
        let probe = Probe::NoAnswer {
            detail: "Connection refused".into(),
            in_cluster: true,
        };
        assert!(!serving(&Endpoints::Ready(1), &probe, AT).is_serving());
    }

    #[test]
    fn no_answer_outside_the_cluster_skips_the_probe_and_says_why() {
        let probe = Probe::NoAnswer {
            detail: "No route to host".into(),
            in_cluster: false,
        };
        assert_eq!(
            serving(&Endpoints::Ready(1), &probe, AT),
            ServingState::Serving {
                endpoints: 1,
                note: "/v2/ not probed: the operator runs outside the cluster and cannot reach 10.43.0.10:443".into(),
            }
        );
    }

    #[test]
    fn status_lines_are_read_and_anything_else_is_not_http() {
        assert_eq!(status_code(b"HTTP/1.1 401 Unauthorized\r\n"), Some(401));
        assert_eq!(status_code(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(status_code(b"HTTP/1.1"), None);
    }
}
