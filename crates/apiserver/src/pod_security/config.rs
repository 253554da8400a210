//! The PodSecurity plugin's configuration: the cluster-wide default
//! policy and the exemptions, read from an `AdmissionConfiguration` file
//! (RKE2's `pod-security-admission-config-file`, kube-apiserver's
//! `--admission-control-config-file`) as kube-apiserver reads it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Policy;
use super::policy::{Level, LevelVersion, Version};

/// Who and what PodSecurity never checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exemptions {
    /// Authenticated user names.
    pub usernames: Vec<String>,
    /// Namespaces.
    pub namespaces: Vec<String>,
    /// Runtime class names (`spec.runtimeClassName`).
    pub runtime_classes: Vec<String>,
}

/// The PodSecurity admission's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSecurityConfig {
    /// The policy of a namespace without PodSecurity labels (each mode a
    /// label does not set).
    pub defaults: Policy,
    /// What is never checked.
    pub exemptions: Exemptions,
}

impl Default for PodSecurityConfig {
    /// Everything privileged, nothing exempt: upstream's default without a
    /// configuration, and RKE2's `rke2-pss.yaml` without a profile.
    fn default() -> Self {
        Self {
            defaults: Policy::privileged(),
            exemptions: Exemptions::default(),
        }
    }
}

/// Why a PodSecurity configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not YAML.
    #[error("{}: invalid YAML: {message}", path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The YAML is not a valid configuration.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// The `AdmissionConfiguration` API versions kube-apiserver reads.
const ADMISSION_API_VERSIONS: &[&str] = &[
    "apiserver.config.k8s.io/v1",
    "apiserver.config.k8s.io/v1alpha1",
    "apiserver.k8s.io/v1alpha1",
];

/// The `PodSecurityConfiguration` API versions upstream still decodes.
const PSA_API_VERSIONS: &[&str] = &[
    "pod-security.admission.config.k8s.io/v1",
    "pod-security.admission.config.k8s.io/v1beta1",
    "pod-security.admission.config.k8s.io/v1alpha1",
];

impl PodSecurityConfig {
    /// RKE2's `profile: cis` default (its `rke2-pss.yaml` in CIS mode):
    /// enforce, audit and warn `restricted:latest`, with the namespaces
    /// `kube-system`, `cis-operator-system` and `tigera-operator` exempt.
    pub fn rke2_cis() -> Self {
        let restricted = LevelVersion {
            level: Level::Restricted,
            version: Version::Latest,
        };
        Self {
            defaults: Policy {
                enforce: restricted,
                audit: restricted,
                warn: restricted,
            },
            exemptions: Exemptions {
                namespaces: ["kube-system", "cis-operator-system", "tigera-operator"]
                    .map(String::from)
                    .to_vec(),
                ..Exemptions::default()
            },
        }
    }

    /// Reads an `AdmissionConfiguration` file and takes the `PodSecurity`
    /// plugin's configuration from it (inline, or from the file its
    /// `path` names, relative to this file); without one, the default.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigFileError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let doc = parse_yaml(path, &text)?;
        let invalid = |message: String| ConfigFileError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        check_type(&doc, ADMISSION_API_VERSIONS, "AdmissionConfiguration").map_err(invalid)?;
        let plugins = match &doc["plugins"] {
            Value::Null => &[][..],
            Value::Array(a) => a.as_slice(),
            other => return Err(invalid(format!("plugins: expected a list, got {other}"))),
        };
        let Some(plugin) = plugins.iter().find(|p| p["name"] == "PodSecurity") else {
            return Ok(Self::default());
        };
        if !plugin["configuration"].is_null() {
            return from_configuration(&plugin["configuration"])
                .map_err(|m| invalid(format!("plugins[PodSecurity].configuration: {m}")));
        }
        match plugin["path"].as_str().filter(|p| !p.is_empty()) {
            Some(p) => {
                let mut file = PathBuf::from(p);
                if file.is_relative() {
                    file = path.parent().unwrap_or(Path::new(".")).join(file);
                }
                let text =
                    std::fs::read_to_string(&file).map_err(|error| ConfigFileError::Read {
                        path: file.clone(),
                        error,
                    })?;
                let doc = parse_yaml(&file, &text)?;
                from_configuration(&doc).map_err(|message| ConfigFileError::Invalid {
                    path: file.clone(),
                    message,
                })
            }
            None => Ok(Self::default()),
        }
    }
}

fn parse_yaml(path: &Path, text: &str) -> Result<Value, ConfigFileError> {
    let doc: Value =
        serde_saphyr::from_str(text).map_err(|e: serde_saphyr::Error| ConfigFileError::Yaml {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if !doc.is_object() {
        return Err(ConfigFileError::Invalid {
            path: path.to_path_buf(),
            message: "expected a mapping with apiVersion and kind".into(),
        });
    }
    Ok(doc)
}

fn check_type(doc: &Value, versions: &[&str], kind: &str) -> Result<(), String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or("");
    let got_kind = doc["kind"].as_str().unwrap_or("");
    if got_kind != kind || !versions.contains(&api_version) {
        return Err(format!(
            "expected kind {kind} of apiVersion {}, got kind {got_kind:?} of apiVersion {api_version:?}",
            versions.join(" or ")
        ));
    }
    Ok(())
}

/// A `PodSecurityConfiguration` object: defaulted as upstream's
/// `SetDefaults_PodSecurityDefaults`, validated as its
/// `ValidatePodSecurityConfiguration` (every problem listed).
fn from_configuration(doc: &Value) -> Result<PodSecurityConfig, String> {
    check_type(doc, PSA_API_VERSIONS, "PodSecurityConfiguration")?;
    let mut errs = Vec::new();
    let defaults = &doc["defaults"];
    let text = |key: &str, errs: &mut Vec<String>| -> String {
        match &defaults[key] {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => {
                errs.push(format!("defaults.{key}: expected a string, got {other}"));
                String::new()
            }
        }
    };
    let mut mode = |level_key: &str, version_key: &str| -> LevelVersion {
        let level = text(level_key, &mut errs);
        let version = text(version_key, &mut errs);
        let level = if level.is_empty() {
            Ok(Level::Privileged)
        } else {
            Level::parse(&level).map_err(|e| (level, e))
        };
        let version = if version.is_empty() {
            Ok(Version::Latest)
        } else {
            Version::parse(&version).map_err(|e| (version, e))
        };
        let mut lv = LevelVersion::PRIVILEGED;
        match level {
            Ok(l) => lv.level = l,
            Err((v, e)) => errs.push(format!(
                "defaults.{level_key}: Invalid value: {}: {e}",
                crate::schema::go_quote(&v)
            )),
        }
        match version {
            Ok(v) => lv.version = v,
            Err((v, e)) => errs.push(format!(
                "defaults.{version_key}: Invalid value: {}: {e}",
                crate::schema::go_quote(&v)
            )),
        }
        lv
    };
    let policy = Policy {
        enforce: mode("enforce", "enforce-version"),
        audit: mode("audit", "audit-version"),
        warn: mode("warn", "warn-version"),
    };
    let exemptions = &doc["exemptions"];
    let namespaces = names(
        &exemptions["namespaces"],
        "exemptions.namespaces",
        rke2_apimachinery::validation::validate_dns1123_label,
        &mut errs,
    );
    let runtime_classes = names(
        &exemptions["runtimeClasses"],
        "exemptions.runtimeClasses",
        rke2_apimachinery::validation::validate_dns1123_subdomain,
        &mut errs,
    );
    let usernames = names(
        &exemptions["usernames"],
        "exemptions.usernames",
        |u| {
            if u.is_empty() {
                vec!["username must not be empty".to_string()]
            } else {
                Vec::new()
            }
        },
        &mut errs,
    );
    if !errs.is_empty() {
        return Err(errs.join(", "));
    }
    Ok(PodSecurityConfig {
        defaults: policy,
        exemptions: Exemptions {
            usernames,
            namespaces,
            runtime_classes,
        },
    })
}

/// A list of names, each checked by `check` and given once.
fn names(
    v: &Value,
    field: &str,
    check: impl Fn(&str) -> Vec<String>,
    errs: &mut Vec<String>,
) -> Vec<String> {
    let items = match v {
        Value::Null => return Vec::new(),
        Value::Array(a) => a,
        other => {
            errs.push(format!("{field}: expected a list, got {other}"));
            return Vec::new();
        }
    };
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(s) = item.as_str() else {
            errs.push(format!("{field}[{i}]: expected a string, got {item}"));
            continue;
        };
        let problems = check(s);
        if !problems.is_empty() {
            errs.push(format!(
                "{field}[{i}]: Invalid value: {}: {}",
                crate::schema::go_quote(s),
                problems.join(", ")
            ));
        } else if out.iter().any(|o| o == s) {
            errs.push(format!(
                "{field}[{i}]: Duplicate value: {}",
                crate::schema::go_quote(s)
            ));
        } else {
            out.push(s.to_string());
        }
    }
    out
}
