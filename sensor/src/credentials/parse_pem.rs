//! PEM files (certificates, private keys) and OpenSSH private keys. Certificates are public:
//! subject, issuer, SANs (with the SPIFFE ID), validity. Private keys yield their type and, for
//! OpenSSH keys, the public key's `SHA256:` fingerprint (as `ssh-keygen -lf` prints it), which
//! is readable even when the private part is encrypted.

use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

pub type Ids = Map<String, Value>;

/// PEM blocks beyond this many are ignored (a CA bundle has ~150).
const MAX_BLOCKS: usize = 256;

struct Block<'a> {
    label: &'a str,
    body: &'a str,
}

fn blocks(text: &str) -> Vec<Block<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while out.len() < MAX_BLOCKS {
        let Some(start) = rest.find("-----BEGIN ") else {
            break;
        };
        let after = &rest[start + 11..];
        let Some(label_end) = after.find("-----") else {
            break;
        };
        let label = &after[..label_end];
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = body_start.find(&end_marker) else {
            break;
        };
        out.push(Block {
            label,
            body: &body_start[..end],
        });
        rest = &body_start[end + end_marker.len()..];
    }
    out
}

fn der_of(body: &str) -> Option<Vec<u8>> {
    // Legacy encrypted PEM has `Proc-Type:` headers before a blank line.
    let b64: String = if body.contains(':') {
        body.split("\n\n")
            .last()
            .unwrap_or("")
            .split_whitespace()
            .collect()
    } else {
        body.split_whitespace().collect()
    };
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn time(t: x509_parser::time::ASN1Time) -> Value {
    let secs = t.timestamp();
    let st = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    json!(humantime::format_rfc3339_seconds(st).to_string())
}

/// Describes one DER certificate.
fn certificate(der: &[u8]) -> Option<Value> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut sans = Vec::new();
    let mut spiffe = None;
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            let s = match name {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::URI(u) => {
                    if u.starts_with("spiffe://") && spiffe.is_none() {
                        spiffe = Some(u.to_string());
                    }
                    format!("URI:{u}")
                }
                GeneralName::RFC822Name(e) => format!("email:{e}"),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => format!("IP:{}", std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])),
                    16 => format!(
                        "IP:{}",
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).ok()?)
                    ),
                    _ => continue,
                },
                _ => continue,
            };
            sans.push(s);
        }
    }
    let v = cert.validity();
    Some(json!({
        "subject": cert.subject().to_string(),
        "issuer": cert.issuer().to_string(),
        "serial": cert.raw_serial_as_string(),
        "not_before": time(v.not_before),
        "not_after": time(v.not_after),
        "not_after_unix": v.not_after.timestamp(),
        "sans": sans,
        "spiffe_id": spiffe,
        "is_ca": cert.is_ca(),
        "self_signed": cert.subject() == cert.issuer(),
    }))
}

/// Every certificate in a PEM text (public data).
pub fn certificates(content: &[u8]) -> Vec<Value> {
    let Ok(text) = std::str::from_utf8(content) else {
        return Vec::new();
    };
    blocks(text)
        .iter()
        .filter(|b| b.label == "CERTIFICATE")
        .filter_map(|b| der_of(b.body).and_then(|d| certificate(&d)))
        .collect()
}

/// A PEM file: certificates and private keys (type only; OpenSSH keys with fingerprint).
pub fn pem(content: &[u8]) -> Result<Ids, String> {
    let text = super::parse_text::utf8(content)?;
    let bs = blocks(text);
    if bs.is_empty() {
        return Err("no PEM block found".into());
    }
    let mut certs = Vec::new();
    let mut keys = Vec::new();
    let mut others = Vec::new();
    for b in &bs {
        match b.label {
            "CERTIFICATE" => match der_of(b.body).and_then(|d| certificate(&d)) {
                Some(c) => certs.push(c),
                None => certs.push(json!({"error": "certificate does not parse as X.509"})),
            },
            "OPENSSH PRIVATE KEY" => keys.push(match openssh_body(b.body) {
                Ok(k) => Value::Object(k),
                Err(e) => json!({"format": "openssh", "error": e}),
            }),
            l if l.ends_with("PRIVATE KEY") => {
                let kind = match l {
                    "RSA PRIVATE KEY" => "rsa",
                    "EC PRIVATE KEY" => "ec",
                    "DSA PRIVATE KEY" => "dsa",
                    "PRIVATE KEY" => "pkcs8",
                    "ENCRYPTED PRIVATE KEY" => "pkcs8_encrypted",
                    _ => "other",
                };
                let encrypted = l.starts_with("ENCRYPTED") || b.body.contains("ENCRYPTED");
                keys.push(json!({"format": "pem", "type": kind, "encrypted": encrypted}));
            }
            l => others.push(json!(l)),
        }
    }
    let mut ids = Map::new();
    if let Some(id) = certs
        .iter()
        .find_map(|c| c.get("spiffe_id").and_then(Value::as_str))
    {
        ids.insert("spiffe_id".into(), json!(id));
    }
    ids.insert("certificates".into(), Value::Array(certs));
    ids.insert("private_keys".into(), Value::Array(keys));
    if !others.is_empty() {
        ids.insert("other_blocks".into(), Value::Array(others));
    }
    Ok(ids)
}

/// An SSH private key file (OpenSSH or PEM format).
pub fn ssh_key(content: &[u8]) -> Result<Ids, String> {
    let text = super::parse_text::utf8(content)?;
    let bs = blocks(text);
    match bs.first() {
        Some(b) if b.label == "OPENSSH PRIVATE KEY" => openssh_body(b.body),
        Some(_) => pem(content),
        None => Err("no private key block found".into()),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (h, t) = self.0.split_first_chunk::<4>()?;
        self.0 = t;
        Some(u32::from_be_bytes(*h))
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > self.0.len() {
            return None;
        }
        let (s, t) = self.0.split_at(n);
        self.0 = t;
        Some(s)
    }
}

/// `openssh-key-v1`: magic, cipher, kdf, kdf options, key count, public keys, private section.
fn openssh_body(body: &str) -> Result<Ids, String> {
    let raw = der_of(body).ok_or("OpenSSH key body is not valid base64")?;
    let bad = || "truncated or malformed openssh-key-v1 structure".to_string();
    let rest = raw
        .strip_prefix(b"openssh-key-v1\0")
        .ok_or("missing openssh-key-v1 magic")?;
    let mut r = Reader(rest);
    let cipher = r.string().ok_or_else(bad)?;
    let _kdf = r.string().ok_or_else(bad)?;
    let _kdf_opts = r.string().ok_or_else(bad)?;
    let count = r.u32().ok_or_else(bad)?;
    if count == 0 {
        return Err("OpenSSH key file holds no keys".into());
    }
    let public = r.string().ok_or_else(bad)?;
    let key_type = Reader(public).string().ok_or_else(bad)?;
    let fp = base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(public));
    let encrypted = cipher != b"none";
    let mut ids = Map::new();
    ids.insert("format".into(), json!("openssh"));
    ids.insert("type".into(), json!(String::from_utf8_lossy(key_type)));
    ids.insert(
        "public_key_fingerprint".into(),
        json!(format!("SHA256:{fp}")),
    );
    ids.insert("encrypted".into(), json!(encrypted));
    if encrypted {
        ids.insert("cipher".into(), json!(String::from_utf8_lossy(cipher)));
    }
    Ok(ids)
}

#[cfg(test)]
pub(crate) fn fake_openssh_key(public_blob: &[u8], cipher: &str) -> String {
    fn s(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }
    let mut raw = b"openssh-key-v1\0".to_vec();
    s(&mut raw, cipher.as_bytes());
    s(&mut raw, if cipher == "none" { b"none" } else { b"bcrypt" });
    s(&mut raw, b"");
    raw.extend_from_slice(&1u32.to_be_bytes());
    s(&mut raw, public_blob);
    s(&mut raw, b"PRIVATE-PART-SECRET");
    format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ed25519_blob() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&11u32.to_be_bytes());
        b.extend_from_slice(b"ssh-ed25519");
        b.extend_from_slice(&32u32.to_be_bytes());
        b.extend_from_slice(&[7u8; 32]);
        b
    }

    #[test]
    fn openssh_fingerprint_plain_and_encrypted() {
        let blob = ed25519_blob();
        let want = format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(&blob))
        );
        let k = ssh_key(fake_openssh_key(&blob, "none").as_bytes()).unwrap();
        assert_eq!(k["type"], "ssh-ed25519");
        assert_eq!(k["public_key_fingerprint"], want.as_str());
        assert_eq!(k["encrypted"], false);
        let e = ssh_key(fake_openssh_key(&blob, "aes256-ctr").as_bytes()).unwrap();
        assert_eq!(e["encrypted"], true);
        assert_eq!(e["public_key_fingerprint"], want.as_str());
    }

    #[test]
    fn pem_key_types() {
        let ids =
            pem(b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n").unwrap();
        assert_eq!(ids["private_keys"][0]["type"], "ec");
        assert!(pem(b"nothing here").is_err());
    }

    #[test]
    fn hostile_pem() {
        for bad in [
            "-----BEGIN OPENSSH PRIVATE KEY-----\n!!!\n-----END OPENSSH PRIVATE KEY-----",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA/////w==\n-----END OPENSSH PRIVATE KEY-----",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
            "-----BEGIN -----",
            "-----BEGIN X-----\n-----END Y-----",
        ] {
            let _ = ssh_key(bad.as_bytes());
            let _ = pem(bad.as_bytes());
        }
        let r = ssh_key(b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA/////w==\n-----END OPENSSH PRIVATE KEY-----");
        assert!(r.is_err());
        let c = pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----").unwrap();
        assert!(c["certificates"][0]["error"].is_string());
    }
}
