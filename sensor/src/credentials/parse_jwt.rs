//! JSON Web Tokens (Kubernetes service-account tokens, IRSA / Azure / EKS Pod Identity token
//! files): decode the claims — no signature check — and keep only the non-secret identifiers.
//! The token itself is a bearer credential: it is fingerprinted, never kept or printed.

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

/// Longest token considered: projected tokens are ~1 KiB; 64 KiB leaves room for fat OIDC
/// tokens and bounds the work on hostile input.
const MAX_JWT_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JwtClaims {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aud: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// No `exp`: the token never expires (legacy Kubernetes secret tokens).
    pub expires: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<K8sClaims>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct K8sClaims {
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub service_account_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_uid: Option<String>,
    /// When the kubelet should refresh the token (the real lifetime; `exp` may be a year out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnafter: Option<i64>,
    /// A legacy secret-based token (`iss = kubernetes/serviceaccount`, never expires).
    pub legacy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT: expected 3 dot-separated base64url segments, found {0}")]
    Segments(usize),
    #[error("encrypted JWT (JWE): claims are not readable")]
    Encrypted,
    #[error("JWT {0} segment is not valid base64url")]
    Base64(&'static str),
    #[error("JWT {0} segment is not a JSON object")]
    Json(&'static str),
    #[error("token longer than {MAX_JWT_LEN} bytes")]
    TooLong,
}

fn b64url(seg: &str, what: &'static str) -> Result<Vec<u8>, JwtError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg.trim_end_matches('='))
        .map_err(|_| JwtError::Base64(what))
}

fn object(bytes: &[u8], what: &'static str) -> Result<serde_json::Map<String, Value>, JwtError> {
    // The error is replaced: serde's messages may quote the (secret-adjacent) input.
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Json(what)),
    }
}

fn s(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

fn n(v: Option<&Value>) -> Option<i64> {
    v.and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
}

/// Whether `text` looks like a compact JWS (for format auto-detection).
pub fn looks_like_jwt(text: &[u8]) -> bool {
    let t = text.trim_ascii();
    t.starts_with(b"eyJ") && t.iter().filter(|b| **b == b'.').count() == 2
}

/// Decodes the header and claims of a compact JWS.
pub fn parse(token: &[u8]) -> Result<JwtClaims, JwtError> {
    let token = token.trim_ascii();
    if token.len() > MAX_JWT_LEN {
        return Err(JwtError::TooLong);
    }
    let text = std::str::from_utf8(token).map_err(|_| JwtError::Base64("header"))?;
    let segs: Vec<&str> = text.split('.').collect();
    match segs.len() {
        3 => {}
        5 => return Err(JwtError::Encrypted),
        other => return Err(JwtError::Segments(other)),
    }
    let header = object(&b64url(segs[0], "header")?, "header")?;
    let claims = object(&b64url(segs[1], "payload")?, "payload")?;
    let aud = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let mut out = JwtClaims {
        alg: s(header.get("alg")),
        kid: s(header.get("kid")),
        iss: s(claims.get("iss")),
        sub: s(claims.get("sub")),
        aud,
        iat: n(claims.get("iat")),
        nbf: n(claims.get("nbf")),
        exp: n(claims.get("exp")),
        jti: s(claims.get("jti")),
        expires: claims.get("exp").is_some(),
        kubernetes: None,
    };
    if let Some(Value::Object(k)) = claims.get("kubernetes.io") {
        let get = |a: &str, b: &str| s(k.get(a).and_then(|o| o.get(b)));
        out.kubernetes = Some(K8sClaims {
            namespace: s(k.get("namespace")),
            service_account: get("serviceaccount", "name"),
            service_account_uid: get("serviceaccount", "uid"),
            pod_name: get("pod", "name"),
            pod_uid: get("pod", "uid"),
            node_name: get("node", "name"),
            node_uid: get("node", "uid"),
            warnafter: n(k.get("warnafter")),
            legacy: false,
            secret_name: None,
        });
    } else if out.iss.as_deref() == Some("kubernetes/serviceaccount")
        || claims.contains_key("kubernetes.io/serviceaccount/namespace")
    {
        let c = |k: &str| s(claims.get(&format!("kubernetes.io/serviceaccount/{k}")));
        out.kubernetes = Some(K8sClaims {
            namespace: c("namespace"),
            service_account: c("service-account.name"),
            service_account_uid: c("service-account.uid"),
            secret_name: c("secret.name"),
            legacy: true,
            ..Default::default()
        });
    }
    // `system:serviceaccount:<ns>:<sa>` names the account even when the claims block is absent.
    if out.kubernetes.is_none()
        && let Some(rest) = out
            .sub
            .as_deref()
            .and_then(|s| s.strip_prefix("system:serviceaccount:"))
        && let Some((ns, sa)) = rest.split_once(':')
    {
        out.kubernetes = Some(K8sClaims {
            namespace: Some(ns.to_string()),
            service_account: Some(sa.to_string()),
            ..Default::default()
        });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) fn mint(claims: &Value) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        e.encode(br#"{"alg":"RS256","kid":"k1"}"#),
        e.encode(claims.to_string()),
        e.encode(b"signature-bytes")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn projected_token() {
        let t = mint(&json!({
            "aud": ["https://kubernetes.default.svc"], "exp": 2000000000, "iat": 1700000000,
            "nbf": 1700000000, "iss": "https://kubernetes.default.svc", "jti": "j-1",
            "sub": "system:serviceaccount:payments:api",
            "kubernetes.io": {"namespace": "payments",
                "pod": {"name": "api-7d9", "uid": "p-uid"},
                "serviceaccount": {"name": "api", "uid": "sa-uid"},
                "node": {"name": "node-1", "uid": "n-uid"}, "warnafter": 1700003607}
        }));
        let c = parse(format!("{t}\n").as_bytes()).unwrap();
        assert_eq!(c.alg.as_deref(), Some("RS256"));
        assert_eq!(c.aud, vec!["https://kubernetes.default.svc"]);
        assert_eq!(
            (c.iat, c.exp, c.expires),
            (Some(1700000000), Some(2000000000), true)
        );
        let k = c.kubernetes.unwrap();
        assert_eq!(k.namespace.as_deref(), Some("payments"));
        assert_eq!(k.service_account.as_deref(), Some("api"));
        assert_eq!(k.pod_name.as_deref(), Some("api-7d9"));
        assert_eq!(k.node_name.as_deref(), Some("node-1"));
        assert_eq!(k.warnafter, Some(1700003607));
        assert!(!k.legacy);
        assert!(looks_like_jwt(t.as_bytes()));
    }

    #[test]
    fn legacy_secret_token_never_expires() {
        let t = mint(&json!({
            "iss": "kubernetes/serviceaccount",
            "kubernetes.io/serviceaccount/namespace": "kube-system",
            "kubernetes.io/serviceaccount/secret.name": "deployer-token-abcde",
            "kubernetes.io/serviceaccount/service-account.name": "deployer",
            "kubernetes.io/serviceaccount/service-account.uid": "u-1",
            "sub": "system:serviceaccount:kube-system:deployer"
        }));
        let c = parse(t.as_bytes()).unwrap();
        assert!(!c.expires);
        let k = c.kubernetes.unwrap();
        assert!(k.legacy);
        assert_eq!(k.service_account.as_deref(), Some("deployer"));
        assert_eq!(k.secret_name.as_deref(), Some("deployer-token-abcde"));
    }

    #[test]
    fn hostile_tokens_are_errors_without_echo() {
        let secretish = "c2VjcmV0LXZhbHVlLW5vdC10by1lY2hv";
        for bad in [
            String::new(),
            "abc".to_string(),
            "a.b".to_string(),
            format!("eyJ!!!.{secretish}.x"),
            format!("eyJhbGciOiJub25lIn0.{secretish}.x"),
            "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4".to_string(),
            "a.b.c.d.e".to_string(),
            "eyJhbGciOiJub25lIn0.WzEsMl0.x".to_string(),
            "\u{0}\u{1}.\u{2}.\u{3}".to_string(),
            "x".repeat(MAX_JWT_LEN + 1),
        ] {
            let e = parse(bad.as_bytes()).unwrap_err();
            assert!(!e.to_string().contains(secretish), "{e}");
        }
        assert!(parse(&[0xff, b'.', 0xfe, b'.', 0]).is_err());
    }
}
