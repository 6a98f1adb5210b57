//! Line-oriented credential formats: INI (AWS shared credentials/config, pypirc, s3cfg, boto,
//! my.cnf), netrc, git-credentials, npmrc, pgpass, Vault tokens, `.env` files and
//! `/proc/<pid>/environ`. Each keeps names, hosts, logins and key ids; secret values only ever
//! become keyed fingerprints.

use serde_json::{Map, Value, json};

use crate::{env_vars, fingerprint::FingerprintKey};

pub type Ids = Map<String, Value>;

/// `Err` carries a fixed reason; never a fragment of the input.
pub fn utf8(content: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(content).map_err(|_| "content is not UTF-8 text (binary data?)".to_string())
}

/// `(section, [(key, value)])` in file order. Lines outside a section belong to `""`.
fn ini(text: &str, separators: &[char]) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            out.push((name.trim().to_string(), Vec::new()));
            continue;
        }
        if let Some((k, v)) = l.split_once(separators) {
            if out.is_empty() {
                out.push((String::new(), Vec::new()));
            }
            let last = out.last_mut().expect("pushed above");
            last.1
                .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

fn aws_key_type(id: &str) -> &'static str {
    match id.get(..4) {
        Some("AKIA") => "long_term",
        Some("ASIA") => "temporary",
        _ => "unknown",
    }
}

/// `~/.aws/credentials` and `~/.aws/config`.
pub fn aws(content: &[u8], key: &FingerprintKey) -> Result<Ids, String> {
    let text = utf8(content)?;
    let mut profiles = Vec::new();
    for (section, kvs) in ini(text, &['=', ':']) {
        let name = section
            .strip_prefix("profile ")
            .unwrap_or(&section)
            .trim()
            .to_string();
        let mut p = Map::new();
        p.insert("name".into(), json!(name));
        for (k, v) in kvs {
            match k.as_str() {
                "aws_access_key_id" => {
                    p.insert("key_type".into(), json!(aws_key_type(&v)));
                    p.insert("access_key_id".into(), json!(v));
                }
                "aws_secret_access_key" => {
                    p.insert(
                        "secret_fingerprint".into(),
                        json!(key.fingerprint(v.as_bytes())),
                    );
                }
                "aws_session_token" | "aws_security_token" => {
                    p.insert("session_token".into(), json!(true));
                }
                "role_arn"
                | "source_profile"
                | "region"
                | "sso_account_id"
                | "sso_role_name"
                | "sso_start_url"
                | "sso_session"
                | "web_identity_token_file"
                | "credential_source"
                | "external_id"
                | "mfa_serial" => {
                    p.insert(k, json!(v));
                }
                // Its command line may embed secrets: say it exists, not what it runs.
                "credential_process" => {
                    p.insert("credential_process".into(), json!(true));
                }
                _ => {}
            }
        }
        profiles.push(Value::Object(p));
    }
    if profiles.is_empty() {
        return Err("no INI sections found".into());
    }
    let mut ids = Map::new();
    ids.insert("profiles".into(), Value::Array(profiles));
    Ok(ids)
}

/// Generic INI (pypirc, s3cfg, boto, my.cnf): section names, all key names, and the values of
/// keys that name rather than prove (user names, hosts, repositories, access key ids).
pub fn ini_generic(content: &[u8]) -> Result<Ids, String> {
    let text = utf8(content)?;
    let mut sections = Vec::new();
    for (section, kvs) in ini(text, &['=', ':']) {
        let mut s = Map::new();
        s.insert("name".into(), json!(section));
        let mut keys = Vec::new();
        for (k, v) in kvs {
            if matches!(
                k.as_str(),
                "username"
                    | "user"
                    | "login"
                    | "repository"
                    | "host"
                    | "host_base"
                    | "host_bucket"
                    | "access_key"
                    | "aws_access_key_id"
                    | "region"
                    | "port"
                    | "database"
            ) {
                s.insert(k.clone(), json!(v));
            }
            keys.push(json!(k));
        }
        s.insert("keys".into(), Value::Array(keys));
        sections.push(Value::Object(s));
    }
    if sections.is_empty() {
        return Err("no INI sections or keys found".into());
    }
    let mut ids = Map::new();
    ids.insert("sections".into(), Value::Array(sections));
    Ok(ids)
}

/// `~/.netrc`: `machine <host> login <user> password <secret>` (any whitespace, any order).
pub fn netrc(content: &[u8]) -> Result<Ids, String> {
    let text = utf8(content)?;
    let mut entries: Vec<Map<String, Value>> = Vec::new();
    let mut toks = text.split_whitespace();
    while let Some(t) = toks.next() {
        match t {
            "machine" => {
                let mut m = Map::new();
                m.insert("machine".into(), json!(toks.next().unwrap_or("")));
                entries.push(m);
            }
            "default" => {
                let mut m = Map::new();
                m.insert("machine".into(), json!("default"));
                entries.push(m);
            }
            "login" => {
                let v = toks.next().unwrap_or("");
                if let Some(e) = entries.last_mut() {
                    e.insert("login".into(), json!(v));
                }
            }
            // Skip the value of secret and unknown-valued tokens.
            "password" | "account" => {
                toks.next();
            }
            // A macro runs to the next blank line; its body is not identity.
            "macdef" => break,
            _ => {}
        }
    }
    if entries.is_empty() {
        return Err("no `machine` entries found".into());
    }
    let mut ids = Map::new();
    ids.insert(
        "entries".into(),
        Value::Array(entries.into_iter().map(Value::Object).collect()),
    );
    Ok(ids)
}

/// `~/.git-credentials`: one `scheme://user:password@host[/path]` URL per line.
pub fn git_credentials(content: &[u8]) -> Result<Ids, String> {
    let text = utf8(content)?;
    let mut entries = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        let Some((scheme, rest)) = l.split_once("://") else {
            continue;
        };
        let Some((userinfo, hostpath)) = rest.rsplit_once('@') else {
            continue;
        };
        let user = userinfo.split(':').next().unwrap_or("");
        let host = hostpath.split('/').next().unwrap_or("");
        entries.push(json!({"scheme": scheme, "host": host, "username": user}));
    }
    if entries.is_empty() {
        return Err("no `scheme://user:password@host` lines found".into());
    }
    let mut ids = Map::new();
    ids.insert("entries".into(), Value::Array(entries));
    Ok(ids)
}

/// `~/.npmrc`: registries with credentials (`//host/:_authToken=`), the default registry, and
/// user names.
pub fn npmrc(content: &[u8]) -> Result<Ids, String> {
    let text = utf8(content)?;
    let mut creds = Vec::new();
    let mut ids = Map::new();
    // npm keys contain `:` (`//host/:_authToken`): only `=` separates.
    for (_, kvs) in ini(text, &['=']) {
        for (k, v) in kvs {
            if let Some((scope, field)) = k.rsplit_once(":_") {
                creds.push(json!({"registry": scope.trim_start_matches("//"),
                                   "auth": format!("_{field}")}));
            } else if k.starts_with('_') {
                creds.push(json!({"registry": "default", "auth": k}));
            } else if k == "registry" || k == "username" || k == "email" || k.ends_with(":registry")
            {
                ids.insert(k, json!(v));
            }
        }
    }
    if creds.is_empty() && ids.is_empty() {
        return Err("no registry or credential entries found".into());
    }
    ids.insert("credentials".into(), Value::Array(creds));
    Ok(ids)
}

/// `~/.pgpass`: `host:port:database:user:password`, `\:` and `\\` escaped.
pub fn pgpass(content: &[u8]) -> Result<Ids, String> {
    let text = utf8(content)?;
    let mut entries = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = vec![String::new()];
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        fields.last_mut().expect("non-empty").push(n);
                    }
                }
                ':' if fields.len() < 5 => fields.push(String::new()),
                c => fields.last_mut().expect("non-empty").push(c),
            }
        }
        if fields.len() == 5 {
            entries.push(json!({"host": fields[0], "port": fields[1],
                                "database": fields[2], "user": fields[3]}));
        }
    }
    if entries.is_empty() {
        return Err("no `host:port:database:user:password` lines found".into());
    }
    let mut ids = Map::new();
    ids.insert("entries".into(), Value::Array(entries));
    Ok(ids)
}

/// A Vault token file (`~/.vault-token`, agent sinks): the token type from its prefix.
pub fn vault_token(content: &[u8]) -> Result<Ids, String> {
    let t = utf8(content)?.trim();
    if t.is_empty() {
        return Err("empty token file".into());
    }
    if t.contains(char::is_whitespace) {
        return Err("not a single token (contains whitespace)".into());
    }
    let token_type = match t.split_once('.').map(|(p, _)| p) {
        Some("hvs") => "service",
        Some("hvb") => "batch",
        Some("hvr") => "recovery",
        Some("s") => "legacy_service",
        Some("b") => "legacy_batch",
        _ => "unknown",
    };
    let mut ids = Map::new();
    ids.insert("token_type".into(), json!(token_type));
    ids.insert("length".into(), json!(t.len()));
    Ok(ids)
}

/// `.env` files: variable names only (values may all be secrets).
pub fn env_file(content: &[u8], key: &FingerprintKey) -> Result<Ids, String> {
    let text = utf8(content)?;
    let mut names = Vec::new();
    let mut credential = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        let l = l.strip_prefix("export ").unwrap_or(l);
        if l.starts_with('#') {
            continue;
        }
        let Some((name, value)) = l.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        if let Some(v) = env_vars::classify(
            name.as_bytes(),
            value.trim().trim_matches(['"', '\'']).as_bytes(),
            key,
        ) {
            credential.push(serde_json::to_value(v).unwrap_or(Value::Null));
        }
        names.push(json!(name));
    }
    if names.is_empty() {
        return Err("no NAME=value lines found".into());
    }
    let mut ids = Map::new();
    ids.insert("variables".into(), Value::Array(names));
    ids.insert("credential_variables".into(), Value::Array(credential));
    Ok(ids)
}

/// `/proc/<pid>/environ` (NUL-separated `NAME=value`): every name, and the credential variables
/// with fingerprints.
pub fn environ(content: &[u8], key: &FingerprintKey) -> Result<Ids, String> {
    let mut names = Vec::new();
    let mut credential = Vec::new();
    for entry in content.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let (name, value) = match entry.iter().position(|b| *b == b'=') {
            Some(i) => (&entry[..i], &entry[i + 1..]),
            None => (entry, &b""[..]),
        };
        names.push(json!(String::from_utf8_lossy(name)));
        if let Some(v) = env_vars::classify(name, value, key) {
            credential.push(serde_json::to_value(v).unwrap_or(Value::Null));
        }
    }
    let mut ids = Map::new();
    ids.insert("variables".into(), Value::Array(names));
    ids.insert("credential_variables".into(), Value::Array(credential));
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k() -> FingerprintKey {
        FingerprintKey::for_tests(b"test-key-0123456789")
    }

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    #[test]
    fn aws_profiles() {
        let c = format!(
            "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = {SECRET}\n\
             [profile ci]\nrole_arn = arn:aws:iam::123456789012:role/ci\nsource_profile=default\n\
             credential_process = /bin/get --secret xyz\n[tmp]\naws_access_key_id=ASIAXXX\n\
             aws_session_token=abc\n"
        );
        let ids = aws(c.as_bytes(), &k()).unwrap();
        let text = Value::Object(ids.clone()).to_string();
        assert!(!text.contains(SECRET) && !text.contains("xyz") && !text.contains("abc"));
        let p = ids["profiles"].as_array().unwrap();
        assert_eq!(p[0]["access_key_id"], "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(p[0]["key_type"], "long_term");
        assert_eq!(
            p[0]["secret_fingerprint"],
            k().fingerprint(SECRET.as_bytes()).as_str()
        );
        assert_eq!(p[1]["name"], "ci");
        assert_eq!(p[1]["role_arn"], "arn:aws:iam::123456789012:role/ci");
        assert_eq!(p[1]["credential_process"], true);
        assert_eq!(p[2]["key_type"], "temporary");
        assert_eq!(p[2]["session_token"], true);
    }

    #[test]
    fn netrc_git_npm_pgpass_vault() {
        let n = netrc(
            b"machine api.example.com login bot password s3cr3t\ndefault login anon password x",
        )
        .unwrap();
        assert_eq!(n["entries"][0]["machine"], "api.example.com");
        assert_eq!(n["entries"][0]["login"], "bot");
        assert!(!Value::Object(n).to_string().contains("s3cr3t"));
        let g = git_credentials(b"https://ci-bot:ghp_SECRETSECRET@github.com\n").unwrap();
        assert_eq!(g["entries"][0]["host"], "github.com");
        assert_eq!(g["entries"][0]["username"], "ci-bot");
        assert!(!Value::Object(g).to_string().contains("ghp_"));
        let npm = npmrc(
            b"registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken=npm_SECRET\n",
        )
        .unwrap();
        assert_eq!(npm["credentials"][0]["registry"], "registry.npmjs.org/");
        assert!(!Value::Object(npm).to_string().contains("npm_SECRET"));
        let pg = pgpass(b"# c\ndb.local:5432:app:svc\\:x:pa\\:ss:word\n").unwrap();
        assert_eq!(pg["entries"][0]["user"], "svc:x");
        assert!(!Value::Object(pg).to_string().contains("pa"));
        assert_eq!(
            vault_token(b"hvs.CAESIabc\n").unwrap()["token_type"],
            "service"
        );
        assert!(vault_token(b"").is_err());
    }

    #[test]
    fn env_and_environ_names_only() {
        let e = env_file(
            b"# x\nexport AWS_SECRET_ACCESS_KEY=\"topsecret\"\nPORT=80\n",
            &k(),
        )
        .unwrap();
        let text = Value::Object(e.clone()).to_string();
        assert!(!text.contains("topsecret"));
        assert_eq!(e["variables"], json!(["AWS_SECRET_ACCESS_KEY", "PORT"]));
        assert_eq!(
            e["credential_variables"][0]["name"],
            "AWS_SECRET_ACCESS_KEY"
        );
        let v = environ(b"HOME=/root\0VAULT_TOKEN=hvs.zzz\0", &k()).unwrap();
        assert!(!Value::Object(v.clone()).to_string().contains("hvs.zzz"));
        assert_eq!(v["credential_variables"][0]["name"], "VAULT_TOKEN");
    }

    #[test]
    fn hostile_text() {
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
        assert!(aws(&garbage, &k()).is_err());
        assert!(netrc(&garbage).is_err());
        assert!(pgpass(b"::::").is_ok());
        assert!(pgpass(b"\\").is_err());
        assert!(git_credentials(b"://@").is_ok());
        assert!(ini_generic(b"").is_err());
        assert!(environ(&garbage, &k()).is_ok());
    }
}
