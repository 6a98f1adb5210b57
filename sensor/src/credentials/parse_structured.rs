//! JSON and YAML credential formats: GCP credential files, docker/podman registry auth, Azure
//! MSAL caches and other JSON token stores, kubeconfigs, `gh` hosts files.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::{parse_pem, parse_text::utf8};

pub type Ids = Map<String, Value>;

/// Parses JSON without echoing the input in the error (serde's messages may quote it).
fn json_object(content: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(content) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("JSON document is not an object".into()),
        Err(e) => Err(format!(
            "not valid JSON ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )),
    }
}

fn yaml(content: &[u8]) -> Result<serde_yaml::Value, String> {
    let text = utf8(content)?;
    serde_yaml::from_str::<serde_yaml::Value>(text).map_err(|e| match e.location() {
        Some(l) => format!("not valid YAML (line {} column {})", l.line(), l.column()),
        None => "not valid YAML".to_string(),
    })
}

fn pick(m: &Map<String, Value>, keys: &[&str]) -> Ids {
    let mut out = Map::new();
    for k in keys {
        if let Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) = m.get(*k) {
            out.insert((*k).to_string(), v.clone());
        }
    }
    out
}

/// GCP service-account key, authorized-user ADC, or workload-identity-federation config.
pub fn gcp(content: &[u8]) -> Result<Ids, String> {
    let m = json_object(content)?;
    let mut ids = pick(
        &m,
        &[
            "type",
            "project_id",
            "private_key_id",
            "client_email",
            "client_id",
            "quota_project_id",
            "audience",
            "subject_token_type",
            "service_account_impersonation_url",
            "universe_domain",
        ],
    );
    if ids.is_empty() {
        return Err("JSON object without any GCP credential field".into());
    }
    ids.insert(
        "has_private_key".into(),
        json!(m.get("private_key").is_some()),
    );
    ids.insert(
        "has_refresh_token".into(),
        json!(m.get("refresh_token").is_some()),
    );
    Ok(ids)
}

/// `~/.docker/config.json`, `auth.json`, `.dockercfg`: registry hosts and user names.
pub fn docker(content: &[u8]) -> Result<Ids, String> {
    let m = json_object(content)?;
    // `.dockercfg` is the `auths` map itself.
    let auths = match m.get("auths") {
        Some(Value::Object(a)) => a.clone(),
        _ if m.values().all(|v| v.get("auth").is_some()) => m.clone(),
        _ => Map::new(),
    };
    let mut registries = Vec::new();
    for (host, entry) in &auths {
        let mut r = Map::new();
        r.insert("host".into(), json!(host));
        if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
            // base64("user:password"): keep the user.
            match base64::engine::general_purpose::STANDARD.decode(auth.trim()) {
                Ok(raw) => {
                    let user = raw.split(|b| *b == b':').next().unwrap_or(&[]);
                    r.insert("username".into(), json!(String::from_utf8_lossy(user)));
                    r.insert("auth".into(), json!("basic"));
                }
                Err(_) => {
                    r.insert("auth".into(), json!("invalid_base64"));
                }
            }
        }
        if let Some(u) = entry.get("username").and_then(Value::as_str) {
            r.insert("username".into(), json!(u));
        }
        if entry.get("identitytoken").is_some() {
            r.insert("auth".into(), json!("identity_token"));
        }
        registries.push(Value::Object(r));
    }
    let mut ids = Map::new();
    ids.insert("registries".into(), Value::Array(registries));
    if let Some(s) = m.get("credsStore").and_then(Value::as_str) {
        ids.insert("creds_store".into(), json!(s));
    }
    if let Some(Value::Object(h)) = m.get("credHelpers") {
        ids.insert("cred_helpers".into(), json!(h.keys().collect::<Vec<_>>()));
    }
    Ok(ids)
}

/// JSON token stores without a dedicated parser (Azure MSAL cache, Terraform, ...): top-level
/// key names, MSAL account user names, and how many tokens of each kind are cached.
pub fn json_generic(content: &[u8]) -> Result<Ids, String> {
    let m = json_object(content)?;
    let mut ids = Map::new();
    ids.insert("keys".into(), json!(m.keys().collect::<Vec<_>>()));
    if let Some(Value::Object(accounts)) = m.get("Account") {
        let users: Vec<Value> = accounts
            .values()
            .map(|a| {
                json!({"username": a.get("username"), "environment": a.get("environment"),
                            "realm": a.get("realm")})
            })
            .collect();
        ids.insert("accounts".into(), Value::Array(users));
    }
    for k in ["AccessToken", "RefreshToken", "IdToken"] {
        if let Some(Value::Object(t)) = m.get(k) {
            ids.insert(format!("{}_count", k.to_ascii_lowercase()), json!(t.len()));
        }
    }
    Ok(ids)
}

fn ystr(v: &serde_yaml::Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(serde_yaml::Value::as_str)
        .map(str::to_string)
}

/// kubeconfig: clusters (name, server), users (name, auth type, client-certificate subject),
/// contexts and the current context.
pub fn kubeconfig(content: &[u8]) -> Result<Ids, String> {
    let doc = yaml(content)?;
    if !doc.is_mapping() {
        return Err("kubeconfig is not a YAML mapping".into());
    }
    let list = |k: &str| -> Vec<serde_yaml::Value> {
        doc.get(k)
            .and_then(serde_yaml::Value::as_sequence)
            .cloned()
            .unwrap_or_default()
    };
    let clusters: Vec<Value> = list("clusters")
        .iter()
        .map(|c| {
            json!({"name": ystr(c, "name"),
                   "server": c.get("cluster").and_then(|x| ystr(x, "server"))})
        })
        .collect();
    let users: Vec<Value> = list("users")
        .iter()
        .map(|u| {
            let spec = u.get("user").cloned().unwrap_or(serde_yaml::Value::Null);
            let has = |k: &str| spec.get(k).is_some();
            let auth = if has("exec") {
                "exec"
            } else if has("auth-provider") {
                "auth_provider"
            } else if has("client-certificate-data") || has("client-certificate") {
                "client_certificate"
            } else if has("token") {
                "token"
            } else if has("tokenFile") {
                "token_file"
            } else if has("username") || has("password") {
                "basic"
            } else {
                "none"
            };
            let mut o = Map::new();
            o.insert("name".into(), json!(ystr(u, "name")));
            o.insert("auth".into(), json!(auth));
            if let Some(cmd) = spec.get("exec").and_then(|e| ystr(e, "command")) {
                o.insert("exec_command".into(), json!(cmd));
            }
            if let Some(p) = spec.get("auth-provider").and_then(|e| ystr(e, "name")) {
                o.insert("auth_provider".into(), json!(p));
            }
            if let Some(u) = ystr(&spec, "username") {
                o.insert("username".into(), json!(u));
            }
            if let Some(data) = ystr(&spec, "client-certificate-data")
                && let Ok(pem) = base64::engine::general_purpose::STANDARD.decode(data.trim())
                && let Some(cert) = parse_pem::certificates(&pem).into_iter().next()
            {
                o.insert("client_certificate".into(), cert);
            }
            Value::Object(o)
        })
        .collect();
    let contexts: Vec<Value> = list("contexts")
        .iter()
        .map(|c| {
            let ctx = c.get("context").cloned().unwrap_or(serde_yaml::Value::Null);
            json!({"name": ystr(c, "name"), "cluster": ystr(&ctx, "cluster"),
                   "user": ystr(&ctx, "user"), "namespace": ystr(&ctx, "namespace")})
        })
        .collect();
    if clusters.is_empty() && users.is_empty() {
        return Err("kubeconfig without clusters or users".into());
    }
    let mut ids = Map::new();
    ids.insert(
        "current_context".into(),
        json!(ystr(&doc, "current-context")),
    );
    ids.insert("clusters".into(), Value::Array(clusters));
    ids.insert("users".into(), Value::Array(users));
    ids.insert("contexts".into(), Value::Array(contexts));
    Ok(ids)
}

/// `~/.config/gh/hosts.yml`: host → user.
pub fn gh_hosts(content: &[u8]) -> Result<Ids, String> {
    let doc = yaml(content)?;
    let Some(map) = doc.as_mapping() else {
        return Err("hosts file is not a YAML mapping".into());
    };
    let hosts: Vec<Value> = map
        .iter()
        .map(|(h, v)| {
            json!({"host": h.as_str(), "user": ystr(v, "user"),
                             "git_protocol": ystr(v, "git_protocol")})
        })
        .collect();
    let mut ids = Map::new();
    ids.insert("hosts".into(), Value::Array(hosts));
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_auths_keep_user_only() {
        let auth = base64::engine::general_purpose::STANDARD.encode("robot$ci:Passw0rdXYZ");
        let c = format!(
            r#"{{"auths":{{"registry.example.com":{{"auth":"{auth}"}},"ghcr.io":{{"identitytoken":"tok"}}}},"credsStore":"pass"}}"#
        );
        let ids = docker(c.as_bytes()).unwrap();
        let text = Value::Object(ids.clone()).to_string();
        assert!(!text.contains("Passw0rdXYZ") && !text.contains(&auth) && !text.contains("tok\""));
        assert_eq!(ids["registries"][1]["host"], "registry.example.com");
        assert_eq!(ids["registries"][1]["username"], "robot$ci");
        assert_eq!(ids["registries"][0]["auth"], "identity_token");
        assert_eq!(ids["creds_store"], "pass");
    }

    #[test]
    fn gcp_key() {
        let ids = gcp(br#"{"type":"service_account","project_id":"p","private_key_id":"abc123",
            "private_key":"-----BEGIN PRIVATE KEY-----\nSECRET\n","client_email":"sa@p.iam.gserviceaccount.com"}"#)
        .unwrap();
        assert_eq!(ids["client_email"], "sa@p.iam.gserviceaccount.com");
        assert_eq!(ids["has_private_key"], true);
        assert!(!Value::Object(ids).to_string().contains("SECRET"));
    }

    #[test]
    fn kubeconfig_users_and_clusters() {
        let c = b"apiVersion: v1\nkind: Config\ncurrent-context: ci\nclusters:\n- name: prod\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority-data: AAAA\nusers:\n- name: ci-bot\n  user:\n    token: SECRET-TOKEN\n- name: dev\n  user:\n    exec:\n      command: aws\n      args: [eks, get-token]\ncontexts:\n- name: ci\n  context: {cluster: prod, user: ci-bot, namespace: ci}\n";
        let ids = kubeconfig(c).unwrap();
        assert!(
            !Value::Object(ids.clone())
                .to_string()
                .contains("SECRET-TOKEN")
        );
        assert_eq!(ids["clusters"][0]["server"], "https://10.0.0.1:6443");
        assert_eq!(ids["users"][0]["auth"], "token");
        assert_eq!(ids["users"][1]["auth"], "exec");
        assert_eq!(ids["users"][1]["exec_command"], "aws");
        assert_eq!(ids["current_context"], "ci");
    }

    #[test]
    fn hostile_structured() {
        let secret = "SECRETVALUE123";
        for bad in [
            format!("{{\"auths\": \"{secret}"),
            format!("[\"{secret}\"]"),
            format!("\u{0}\u{1}{secret}"),
        ] {
            for r in [
                docker(bad.as_bytes()),
                gcp(bad.as_bytes()),
                kubeconfig(bad.as_bytes()),
            ] {
                let e = r.unwrap_err();
                assert!(!e.contains(secret), "{e}");
            }
        }
        assert!(kubeconfig(b"a: [").is_err());
        assert!(
            gh_hosts(b"github.com:\n  user: bot\n  oauth_token: gho_x\n")
                .unwrap()
                .get("hosts")
                .is_some()
        );
    }
}
