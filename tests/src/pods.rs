//! Kubernetes-shaped fixtures for the real-kernel tests: projected service-account tokens and
//! kubelet pod volumes (the pods' cgroups: `cgroups.rs`).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Value, json};

pub fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A JWT with the given claims and a random-looking (test-only) signature.
pub fn mint_jwt(claims: &Value, sig_seed: &str) -> String {
    format!(
        "{}.{}.{}",
        b64url(br#"{"alg":"RS256","kid":"nhi-test"}"#),
        b64url(claims.to_string().as_bytes()),
        b64url(format!("sig-{sig_seed}-{}", std::process::id()).as_bytes())
    )
}

pub fn projected_claims(ns: &str, sa: &str, pod: &str, uid: &str) -> Value {
    json!({
        "aud": ["https://kubernetes.default.svc.cluster.local"],
        "exp": 4102444800i64, "iat": 1763800000, "nbf": 1763800000,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "jti": format!("jti-{pod}"),
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "kubernetes.io": {
            "namespace": ns,
            "node": {"name": "node-test", "uid": "11111111-0000-0000-0000-000000000000"},
            "pod": {"name": pod, "uid": uid},
            "serviceaccount": {"name": sa, "uid": "22222222-0000-0000-0000-000000000000"},
            "warnafter": 1763803607
        }
    })
}

/// Writes a kubelet-style projected volume (`..<ts>/token`, `..data`, `token` symlinks) and
/// returns the volume directory.
pub fn kubelet_pod(kubelet: &Path, uid: &str, token: &str) -> PathBuf {
    let vol = kubelet.join(format!(
        "pods/{uid}/volumes/kubernetes.io~projected/kube-api-access-nhi"
    ));
    let ts = vol.join("..2026_11_22_00_00_00.000000001");
    std::fs::create_dir_all(&ts).expect("mkdir pod volume");
    std::fs::write(ts.join("token"), token).expect("write token");
    std::fs::write(ts.join("namespace"), "x").expect("write namespace");
    std::os::unix::fs::symlink("..2026_11_22_00_00_00.000000001", vol.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/token", vol.join("token")).unwrap();
    for d in [kubelet.to_path_buf(), vol.clone()] {
        let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755));
    }
    vol
}
