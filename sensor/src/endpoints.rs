//! Credential endpoints on the wire: cloud instance-metadata and container-credential addresses
//! (IPv4 and IPv6 forms), the Kubernetes API server and Vault. A connect to one of them is how a
//! workload turns its identity into credentials, so network events say so.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context as _, bail};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialEndpoint {
    /// `cloud_metadata`, `container_credentials`, `kubernetes_api`, `vault`.
    pub kind: &'static str,
    /// Which service answers there.
    pub service: &'static str,
}

#[derive(Debug, Clone)]
struct Rule {
    ip: IpAddr,
    port: Option<u16>,
    endpoint: CredentialEndpoint,
}

#[derive(Debug, Clone)]
pub struct Endpoints {
    rules: Vec<Rule>,
}

/// Well-known link-local credential services (NHI-REFERENCE.md, "Cloud").
fn builtin() -> Vec<Rule> {
    let e = |kind, service| CredentialEndpoint { kind, service };
    let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().expect("literal"));
    vec![
        // AWS IMDS, GCP metadata.google.internal and Azure IMDS all answer on this address.
        Rule {
            ip: IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
            port: None,
            endpoint: e("cloud_metadata", "instance_metadata"),
        },
        Rule {
            ip: v6("fd00:ec2::254"),
            port: None,
            endpoint: e("cloud_metadata", "aws_imds"),
        },
        Rule {
            ip: IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
            port: None,
            endpoint: e("container_credentials", "aws_ecs_task"),
        },
        Rule {
            ip: IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
            port: None,
            endpoint: e("container_credentials", "aws_eks_pod_identity"),
        },
        Rule {
            ip: v6("fd00:ec2::23"),
            port: None,
            endpoint: e("container_credentials", "aws_eks_pod_identity"),
        },
    ]
}

/// `IP`, `IP:PORT` or `[IPv6]:PORT`.
fn parse_addr(s: &str) -> anyhow::Result<(IpAddr, Option<u16>)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok((ip, None));
    }
    bail!("{s:?} is not IP, IP:PORT or [IPv6]:PORT (host names are not resolved)")
}

/// The API server of the node's kubelet kubeconfig, when it is an IP address.
pub fn kube_apiserver_from_node() -> Option<String> {
    for f in [
        "/etc/kubernetes/kubelet.conf",
        "/var/lib/kubelet/kubeconfig",
    ] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines() {
            if let Some(url) = line.trim().strip_prefix("server:") {
                let hostport = url
                    .trim()
                    .trim_start_matches("https://")
                    .trim_end_matches('/');
                let with_port = if hostport.contains("]:") || hostport.matches(':').count() == 1 {
                    hostport.to_string()
                } else {
                    format!("{hostport}:443")
                };
                if parse_addr(&with_port).is_ok() {
                    return Some(with_port);
                }
            }
        }
    }
    None
}

impl Endpoints {
    pub fn new(kube_apiserver: &[String], vault: &[String]) -> anyhow::Result<Self> {
        let mut rules = builtin();
        for (list, kind, service) in [
            (kube_apiserver, "kubernetes_api", "kube-apiserver"),
            (vault, "vault", "vault"),
        ] {
            for a in list {
                let (ip, port) = parse_addr(a).with_context(|| format!("{kind} address"))?;
                rules.push(Rule {
                    ip,
                    port,
                    endpoint: CredentialEndpoint { kind, service },
                });
            }
        }
        Ok(Self { rules })
    }

    pub fn classify(&self, ip: IpAddr, port: u16) -> Option<CredentialEndpoint> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.rules
            .iter()
            .find(|r| r.ip == ip && r.port.is_none_or(|p| p == port))
            .map(|r| r.endpoint.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_and_configured() {
        let e = Endpoints::new(
            &["10.0.0.1:6443".into()],
            &["[fd00::5]:8200".into(), "10.9.9.9".into()],
        )
        .unwrap();
        let c = |s: &str, p| e.classify(s.parse().unwrap(), p).map(|x| x.kind);
        assert_eq!(c("169.254.169.254", 80), Some("cloud_metadata"));
        assert_eq!(c("::ffff:169.254.169.254", 80), Some("cloud_metadata"));
        assert_eq!(c("fd00:ec2::254", 80), Some("cloud_metadata"));
        assert_eq!(c("169.254.170.2", 80), Some("container_credentials"));
        assert_eq!(c("169.254.170.23", 80), Some("container_credentials"));
        assert_eq!(c("fd00:ec2::23", 80), Some("container_credentials"));
        assert_eq!(c("10.0.0.1", 6443), Some("kubernetes_api"));
        assert_eq!(c("10.0.0.1", 443), None);
        assert_eq!(c("fd00::5", 8200), Some("vault"));
        assert_eq!(c("10.9.9.9", 1), Some("vault"));
        assert_eq!(c("8.8.8.8", 53), None);
        assert!(Endpoints::new(&["vault.example.com:8200".into()], &[]).is_err());
    }
}
