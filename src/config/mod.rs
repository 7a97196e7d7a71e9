//! Configuration: the TOML file (`file`), its validation into an immutable snapshot
//! (`validate`, `snapshot`), and hot reload behind arc-swap (`reload`).
//!
//! A request calls [`ConfigHandle::pin`] once and keeps that `Arc<Config>` for its whole life,
//! so a reload never changes prices or routes under a request in flight.

pub mod file;
pub mod reload;
pub mod snapshot;
pub mod validate;

pub use snapshot::{Config, Model, Provider, ProviderKind};
pub use validate::ConfigError;

use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the config comes from when `--config` is not given.
pub fn default_path() -> PathBuf {
    std::env::var_os("TOLLGATE_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("conf/tollgate.toml"))
}

/// Parse and validate TOML text against the process environment.
pub fn from_toml(text: &str) -> Result<Config, Vec<ConfigError>> {
    from_toml_with_env(text, &|name| std::env::var(name).ok())
}

pub fn from_toml_with_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let file: file::FileConfig = toml::from_str(text).map_err(|e| {
        vec![ConfigError { path: toml_error_path(&e), message: e.message().to_string() }]
    })?;
    validate::validate(file, env)
}

/// Read, parse and validate a config file.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError { path: path.display().to_string(), message: format!("cannot read: {e}") }]
    })?;
    from_toml(&text)
}

/// Best key path for a TOML parse error: the line it points at, as `line N`.
fn toml_error_path(e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => format!("(toml, byte {})", span.start),
        None => "(toml)".to_string(),
    }
}

/// The live config: an atomically swappable snapshot.
pub struct ConfigHandle {
    current: ArcSwap<Config>,
    path: PathBuf,
}

impl ConfigHandle {
    pub fn new(config: Config, path: PathBuf) -> Self {
        ConfigHandle { current: ArcSwap::from_pointee(config), path }
    }

    /// The snapshot a request keeps for its whole life.
    pub fn pin(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// The connection limits in force, copied out of the snapshot without pinning it (no
    /// reference count taken: the front reads them once per request on every connection).
    pub fn limits(&self) -> snapshot::Limits {
        self.current.load().server.limits.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Validate the file again and swap it in; on error the running config stays.
    pub fn reload(&self) -> Result<Arc<Config>, Vec<ConfigError>> {
        let next = Arc::new(load(&self.path)?);
        self.current.store(next.clone());
        Ok(next)
    }

    /// [`reload`](Self::reload) from text already read from the file.
    pub fn reload_text(&self, text: &str) -> Result<Arc<Config>, Vec<ConfigError>> {
        let next = Arc::new(from_toml(text)?);
        self.current.store(next.clone());
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "OPENAI_API_KEY" => Some("sk-test".into()),
            _ => None,
        }
    }

    const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:8080"]
[providers.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
[providers.other]
kind = "openai"
base_url = "http://127.0.0.1:9000/v1"
api_key_env = "OTHER_KEY"
[[models]]
slug = "openai/gpt-4o"
provider = "openai"
upstream_model = "gpt-4o"
context_length = 128000
input_per_mtok = 2.50
output_per_mtok = 10.00
capabilities = ["tools", "vision", "json"]
"#;

    #[test]
    fn good_config_validates() {
        let c = from_toml_with_env(GOOD, &env).unwrap();
        let (m, p) = c.route("openai/gpt-4o").unwrap();
        assert_eq!(m.input_per_mtok, 2_500_000_000);
        assert_eq!(m.output_per_mtok, 10_000_000_000);
        assert_eq!(p.upstream.host, "api.openai.com");
        assert_eq!(p.upstream.port, 443);
        assert!(p.upstream.tls);
        assert_eq!(p.upstream.path_prefix, "/v1");
        assert_eq!(p.api_key.as_deref(), Some("sk-test"));
        // A provider whose variable is unset is disabled, not an error.
        assert!(!c.providers["other"].enabled);
    }

    fn errors(text: &str) -> Vec<String> {
        from_toml_with_env(text, &env).unwrap_err().iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn unknown_field_is_refused() {
        let e = errors(&GOOD.replace("context_length = 128000", "context_length = 1\nbogus = 1"));
        assert!(e[0].contains("bogus"), "{e:?}");
    }

    #[test]
    fn each_error_has_its_key_path() {
        let text = format!(
            "{GOOD}\n[[models]]\nslug = \"openai/gpt-4o\"\nprovider = \"openai\"\nupstream_model = \"x\"\ncontext_length = 1\ninput_per_mtok = 1\noutput_per_mtok = 1\n\
             [[models]]\nslug = \"x/y\"\nprovider = \"nope\"\nupstream_model = \"x\"\ncontext_length = 1\ninput_per_mtok = 1\noutput_per_mtok = 1\n\
             [[models]]\nslug = \"x/z\"\nprovider = \"openai\"\nupstream_model = \"x\"\ncontext_length = 1\ninput_per_mtok = -1\noutput_per_mtok = 1\n\
             [providers.bad]\nkind = \"soap\"\nbase_url = \"http://x\"\n\
             [providers.must]\nkind = \"openai\"\nbase_url = \"http://x\"\napi_key_env = \"MISSING_KEY\"\nenabled = true\n"
        );
        let e = errors(&text);
        let has = |s: &str| e.iter().any(|x| x.contains(s));
        assert!(has("models[1].slug: duplicate slug"), "{e:?}");
        assert!(has("models[2].provider: unknown provider 'nope'"), "{e:?}");
        assert!(has("models[3].input_per_mtok"), "{e:?}");
        assert!(has("providers.bad.kind: unknown provider kind 'soap'"), "{e:?}");
        assert!(has("providers.must.api_key_env: environment variable MISSING_KEY"), "{e:?}");
    }

    #[test]
    fn a_key_that_cannot_be_a_header_is_a_config_error() {
        let env = |name: &str| (name == "OPENAI_API_KEY").then(|| "sk-test\n".to_string());
        let e: Vec<String> = from_toml_with_env(GOOD, &env).unwrap_err().iter().map(|e| e.to_string()).collect();
        assert!(e.iter().any(|x| x.contains("providers.openai.api_key_env")), "{e:?}");
        // A good key is built into its header once, at load.
        let c = from_toml_with_env(GOOD, &super::tests::env).unwrap();
        let (name, value) = c.providers["openai"].credential_header.clone().expect("header");
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("authorization", "Bearer sk-test"));
    }

    #[test]
    fn a_provider_name_that_cannot_be_a_header_is_a_config_error() {
        let bad = GOOD.replace("[providers.other]", "[providers.\"oth\\ner\"]");
        let e: Vec<String> = from_toml_with_env(&bad, &env).unwrap_err().iter().map(|e| e.to_string()).collect();
        assert!(e.iter().any(|x| x.contains("control characters")), "{e:?}");
        let c = from_toml_with_env(GOOD, &env).unwrap();
        assert_eq!(c.providers["other"].name_header, "other");
    }

    #[test]
    fn base_url_forms() {
        let u = validate::parse_base_url("http://127.0.0.1:9000/v1/").unwrap();
        assert_eq!((u.tls, u.port, u.authority.as_str(), u.path_prefix.as_str()), (false, 9000, "127.0.0.1:9000", "/v1"));
        assert!(validate::parse_base_url("ftp://x").is_err());
        assert!(validate::parse_base_url("not a url").is_err());
    }
}
