//! Credentials: the catalogue of where they live ([`catalogue`]), reading and classifying one
//! when a watched file is opened ([`classify`]), and the format parsers that extract the
//! non-secret identifiers (`parse_*`). Secret bytes never leave this module except as keyed
//! fingerprints.

pub mod catalogue;
pub mod classify;
pub mod parse_jwt;
pub mod parse_pem;
pub mod parse_structured;
pub mod parse_text;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fingerprint::FingerprintKey;

/// How a credential file is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// A compact JWT (service-account and federated identity tokens).
    Jwt,
    /// AWS shared credentials / config INI.
    AwsIni,
    /// Any INI file: sections, key names, user/host/repository values.
    Ini,
    /// GCP service-account key / ADC / external-account JSON.
    GcpJson,
    /// JSON token store: top-level keys, MSAL accounts.
    Json,
    Kubeconfig,
    /// docker / podman registry auth (`auths`).
    DockerConfig,
    /// SSH private key (OpenSSH or PEM).
    SshKey,
    /// PEM certificates and private keys.
    Pem,
    GitCredentials,
    GhHosts,
    Netrc,
    Npmrc,
    Pgpass,
    VaultToken,
    /// `.env`: variable names.
    EnvFile,
    /// `/proc/<pid>/environ`: variable names.
    Environ,
    /// Fingerprint and metadata only.
    Opaque,
    /// Guess from the content: JWT, PEM, JSON, else opaque.
    Auto,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Jwt => "jwt",
            Format::AwsIni => "aws_ini",
            Format::Ini => "ini",
            Format::GcpJson => "gcp_json",
            Format::Json => "json",
            Format::Kubeconfig => "kubeconfig",
            Format::DockerConfig => "docker_config",
            Format::SshKey => "ssh_key",
            Format::Pem => "pem",
            Format::GitCredentials => "git_credentials",
            Format::GhHosts => "gh_hosts",
            Format::Netrc => "netrc",
            Format::Npmrc => "npmrc",
            Format::Pgpass => "pgpass",
            Format::VaultToken => "vault_token",
            Format::EnvFile => "env_file",
            Format::Environ => "environ",
            Format::Opaque => "opaque",
            Format::Auto => "auto",
        }
    }
}

/// The outcome of parsing a credential's content.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// The format actually used (`auto` resolves to a concrete one).
    pub format: &'static str,
    pub identifiers: Map<String, Value>,
    /// Why the identifiers are missing or partial (a fixed text, never input bytes).
    pub error: Option<String>,
    /// JWT `iat`, for the credential's age.
    pub issued_at: Option<i64>,
}

fn detect(content: &[u8]) -> Format {
    let t = content.trim_ascii_start();
    if parse_jwt::looks_like_jwt(content) {
        Format::Jwt
    } else if t.starts_with(b"-----BEGIN OPENSSH") {
        Format::SshKey
    } else if t.starts_with(b"-----BEGIN ") {
        Format::Pem
    } else if t.starts_with(b"{") {
        if t.windows(7).any(|w| w == b"\"auths\"") {
            Format::DockerConfig
        } else if t.windows(6).any(|w| w == b"\"type\"") {
            Format::GcpJson
        } else {
            Format::Json
        }
    } else if t.starts_with(b"hvs.") || t.starts_with(b"hvb.") {
        Format::VaultToken
    } else if t.starts_with(b"apiVersion:") || t.windows(9).any(|w| w == b"clusters:") {
        Format::Kubeconfig
    } else {
        Format::Opaque
    }
}

/// Parses `content` as `format`. Never fails: problems become [`Parsed::error`].
pub fn parse(format: Format, content: &[u8], key: &FingerprintKey) -> Parsed {
    let format = if format == Format::Auto {
        detect(content)
    } else {
        format
    };
    let mut issued_at = None;
    let result: Result<Map<String, Value>, String> = match format {
        Format::Jwt => parse_jwt::parse(content)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                issued_at = c.iat;
                match serde_json::to_value(c) {
                    Ok(Value::Object(m)) => Ok(m),
                    _ => Err("claims do not serialize".into()),
                }
            }),
        Format::AwsIni => parse_text::aws(content, key),
        Format::Ini => parse_text::ini_generic(content),
        Format::GcpJson => parse_structured::gcp(content),
        Format::Json => parse_structured::json_generic(content),
        Format::Kubeconfig => parse_structured::kubeconfig(content),
        Format::DockerConfig => parse_structured::docker(content),
        Format::SshKey => parse_pem::ssh_key(content),
        Format::Pem => parse_pem::pem(content),
        Format::GitCredentials => parse_text::git_credentials(content),
        Format::GhHosts => parse_structured::gh_hosts(content),
        Format::Netrc => parse_text::netrc(content),
        Format::Npmrc => parse_text::npmrc(content),
        Format::Pgpass => parse_text::pgpass(content),
        Format::VaultToken => parse_text::vault_token(content),
        Format::EnvFile => parse_text::env_file(content, key),
        Format::Environ => parse_text::environ(content, key),
        Format::Opaque | Format::Auto => Ok(Map::new()),
    };
    let (identifiers, error) = match result {
        Ok(m) => (m, None),
        Err(e) => (Map::new(), Some(e)),
    };
    Parsed {
        format: format.name(),
        identifiers,
        error,
        issued_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_detection_and_garbage() {
        let k = FingerprintKey::for_tests(b"0123456789abcdef");
        let jwt = parse_jwt::mint(&serde_json::json!({"sub": "system:serviceaccount:a:b"}));
        let p = parse(Format::Auto, jwt.as_bytes(), &k);
        assert_eq!(p.format, "jwt");
        assert_eq!(p.identifiers["kubernetes"]["service_account"], "b");
        let garbage: Vec<u8> = (0..1000u32).map(|i| (i * 13 % 256) as u8).collect();
        for f in [
            Format::Jwt,
            Format::Kubeconfig,
            Format::Pem,
            Format::AwsIni,
            Format::Auto,
        ] {
            let p = parse(f, &garbage, &k);
            assert!(p.identifiers.is_empty() || f == Format::Auto, "{f:?}");
        }
        let e = parse(Format::Jwt, b"not.a.jwt", &k).error.unwrap();
        assert!(e.starts_with("JWT header segment"), "{e}");
    }
}
