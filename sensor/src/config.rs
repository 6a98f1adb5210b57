//! The optional config file (`--config FILE`, TOML). Its whole schema:
//!
//! ```toml
//! # Addresses (IP or IP:port) classified as credential endpoints on network events. The kernel
//! # sees IP addresses, so give addresses, not host names.
//! kube_apiserver = ["10.0.0.1:6443"]
//! vault = ["10.0.0.5:8200"]
//!
//! # Extra credential patterns, added to the built-in catalogue. Every field set must match;
//! # set at least one of path_prefix, path_suffix, name, name_prefix, name_suffix.
//! [[credential]]
//! kind = "acme_api_key"        # [A-Za-z0-9_]+, reported as credential.kind
//! format = "opaque"            # how to parse it: jwt, aws_ini, ini, gcp_json, json, kubeconfig,
//!                              # docker_config, ssh_key, pem, git_credentials, gh_hosts, netrc,
//!                              # npmrc, pgpass, vault_token, env_file, opaque, auto
//! path_suffix = "/.acme/key"   # a home-directory file, wherever the home is
//! ```

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

use crate::credentials::catalogue::Pattern;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub kube_apiserver: Vec<String>,
    #[serde(default)]
    pub vault: Vec<String>,
    #[serde(default)]
    pub credential: Vec<Pattern>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let f: ConfigFile = toml::from_str(text).context("parsing TOML")?;
        for p in &f.credential {
            p.validate()?;
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::WatchRule;

    #[test]
    fn schema() {
        let f = ConfigFile::parse(
            "kube_apiserver = [\"10.0.0.1:6443\"]\nvault = [\"10.0.0.5\"]\n\
             [[credential]]\nkind = \"acme_api_key\"\nformat = \"opaque\"\npath_suffix = \"/.acme/key\"\n",
        )
        .unwrap();
        assert_eq!(f.kube_apiserver, ["10.0.0.1:6443"]);
        assert_eq!(
            f.credential[0].kernel_rule(),
            WatchRule::Name(b"key".to_vec())
        );
        assert!(f.credential[0].matches(b"/home/x/.acme/key", 1));
        for bad in [
            "[[credential]]\nkind = \"x\"\nformat = \"opaque\"\n",
            "[[credential]]\nkind = \"x y\"\nformat = \"opaque\"\nname = \"a\"\n",
            "[[credential]]\nkind = \"x\"\nformat = \"nope\"\nname = \"a\"\n",
            "[[credential]]\nkind = \"x\"\nformat = \"opaque\"\nname = \"a/b\"\n",
            "[[credential]]\nkind = \"x\"\nformat = \"opaque\"\npath_prefix = \"rel\"\n",
            "[[credential]]\nkind = \"x\"\nformat = \"opaque\"\nname = \"a\"\nextra = 1\n",
            "unknown = 1\n",
        ] {
            assert!(ConfigFile::parse(bad).is_err(), "{bad}");
        }
    }
}
