//! Credential-bearing environment variables. A process's environment is secret material: only
//! variable *names* leave the sensor, with a keyed fingerprint of the value, and — for variables
//! whose value is a file path, a URL or a public identifier — the value itself.

use serde::Serialize;

use crate::fingerprint::FingerprintKey;

/// Variables that carry credentials or point at them (NHI-REFERENCE.md, "Where credentials
/// live"), and whether the value is safe to show (a path, an address or a public identifier).
const KNOWN: &[(&str, Shown)] = &[
    ("AWS_ACCESS_KEY_ID", Shown::Identifier),
    ("AWS_SECRET_ACCESS_KEY", Shown::Secret),
    ("AWS_SESSION_TOKEN", Shown::Secret),
    ("AWS_SECURITY_TOKEN", Shown::Secret),
    ("AWS_WEB_IDENTITY_TOKEN_FILE", Shown::Path),
    ("AWS_ROLE_ARN", Shown::Identifier),
    ("AWS_SHARED_CREDENTIALS_FILE", Shown::Path),
    ("AWS_CONFIG_FILE", Shown::Path),
    ("AWS_CONTAINER_CREDENTIALS_FULL_URI", Shown::Url),
    // The relative URI embeds a per-task id that grants credentials: treated as secret.
    ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", Shown::Secret),
    ("AWS_CONTAINER_AUTHORIZATION_TOKEN", Shown::Secret),
    ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", Shown::Path),
    ("GOOGLE_APPLICATION_CREDENTIALS", Shown::Path),
    ("GOOGLE_OAUTH_ACCESS_TOKEN", Shown::Secret),
    ("CLOUDSDK_AUTH_ACCESS_TOKEN", Shown::Secret),
    ("AZURE_CLIENT_ID", Shown::Identifier),
    ("AZURE_TENANT_ID", Shown::Identifier),
    ("AZURE_CLIENT_SECRET", Shown::Secret),
    ("AZURE_CLIENT_CERTIFICATE_PATH", Shown::Path),
    ("AZURE_FEDERATED_TOKEN_FILE", Shown::Path),
    ("VAULT_TOKEN", Shown::Secret),
    ("VAULT_ADDR", Shown::Url),
    ("VAULT_ROLE_ID", Shown::Identifier),
    ("VAULT_SECRET_ID", Shown::Secret),
    ("KUBECONFIG", Shown::Path),
    ("SPIFFE_ENDPOINT_SOCKET", Shown::Url),
    ("GITHUB_TOKEN", Shown::Secret),
    ("GH_TOKEN", Shown::Secret),
    ("GITLAB_TOKEN", Shown::Secret),
    ("CI_JOB_TOKEN", Shown::Secret),
    ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", Shown::Secret),
    ("ACTIONS_RUNTIME_TOKEN", Shown::Secret),
    ("NPM_TOKEN", Shown::Secret),
    ("DOCKER_CONFIG", Shown::Path),
    ("REGISTRY_AUTH_FILE", Shown::Path),
    ("PGPASSWORD", Shown::Secret),
    ("PGPASSFILE", Shown::Path),
    ("DATABASE_URL", Shown::Secret),
    ("SSH_AUTH_SOCK", Shown::Path),
];

/// Name suffixes that mark a variable as secret even when it is not in the list above.
const SECRET_SUFFIXES: &[&str] = &[
    "_TOKEN",
    "_SECRET",
    "_SECRET_KEY",
    "_PASSWORD",
    "_API_KEY",
    "_ACCESS_KEY",
    "_PRIVATE_KEY",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    /// The value is a credential: fingerprint only.
    Secret,
    /// A file or socket path: shown.
    Path,
    /// An address: shown without any `user:password@`.
    Url,
    /// A public identifier (key id, role ARN, client id): shown.
    Identifier,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialVar {
    pub name: String,
    pub fingerprint: String,
    /// The value, only for paths, addresses and public identifiers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

fn shown_of(name: &str) -> Option<Shown> {
    if let Some((_, s)) = KNOWN.iter().find(|(n, _)| *n == name) {
        return Some(*s);
    }
    if name.starts_with("AWS_CONTAINER_") {
        return Some(Shown::Secret);
    }
    SECRET_SUFFIXES
        .iter()
        .any(|s| name.ends_with(s))
        .then_some(Shown::Secret)
}

/// Drops `user:password@` from a URL.
fn strip_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
            format!("{scheme}://{host}{tail}")
        }
        None => url.rsplit_once('@').map_or(url, |(_, h)| h).to_string(),
    }
}

/// The credential variable `name=value` describes, if any.
pub fn classify(name: &[u8], value: &[u8], key: &FingerprintKey) -> Option<CredentialVar> {
    let name = std::str::from_utf8(name).ok()?;
    let shown = shown_of(name)?;
    let text = || String::from_utf8_lossy(value).into_owned();
    Some(CredentialVar {
        name: name.to_string(),
        fingerprint: key.fingerprint(value),
        value: match shown {
            Shown::Secret => None,
            Shown::Path | Shown::Identifier => Some(text()),
            Shown::Url => Some(strip_userinfo(&text())),
        },
    })
}

/// The credential variables of an environment block (NUL-separated `NAME=value`).
pub fn from_environment(env: &[u8], key: &FingerprintKey) -> Vec<CredentialVar> {
    env.split(|b| *b == 0)
        .filter_map(|entry| {
            let eq = entry.iter().position(|b| *b == b'=')?;
            classify(&entry[..eq], &entry[eq + 1..], key)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_fingerprints_not_values() {
        let k = FingerprintKey::for_tests(b"0123456789abcdef");
        let env = b"PATH=/bin\0AWS_SECRET_ACCESS_KEY=s3cr3t\0AWS_WEB_IDENTITY_TOKEN_FILE=/var/run/t\0\
                    VAULT_ADDR=https://u:pw@vault:8200/x\0MY_API_KEY=k\0AWS_CONTAINER_X=y\0=junk\0\xff=1\0";
        let vars = from_environment(env, &k);
        let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "AWS_SECRET_ACCESS_KEY",
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "VAULT_ADDR",
                "MY_API_KEY",
                "AWS_CONTAINER_X"
            ]
        );
        assert_eq!(vars[0].value, None);
        assert_eq!(vars[0].fingerprint, k.fingerprint(b"s3cr3t"));
        assert_eq!(vars[1].value.as_deref(), Some("/var/run/t"));
        assert_eq!(vars[2].value.as_deref(), Some("https://vault:8200/x"));
        let json = serde_json::to_string(&vars).unwrap();
        assert!(!json.contains("s3cr3t") && !json.contains("pw"));
    }
}
