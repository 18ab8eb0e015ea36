//! Components from OCI registries: the wasm OCI artifact layout (config media type
//! `application/vnd.wasm.config.v0+json`, one `application/wasm` layer) pulled and pushed over
//! the OCI distribution API, every digest verified, and a cache of blobs by digest beside the
//! compile cache.
//!
//! A pod start resolves an image from the cache when it has it ([`ImageStore::resolve`], like
//! Kubernetes' `IfNotPresent`), so a pod whose images were pulled once starts without the
//! network; `wasmpod pull` ([`ImageStore::pull`]) always asks the registry. Cached blobs are
//! hashed again on every read: a file changed on disk is thrown away and fetched again.

mod credentials;
mod reference;
mod session;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use credentials::{Login, docker_config_path};
pub use reference::{Digest, Reference, Target};

use session::Session;

/// The OCI image manifest media type (the manifest of a wasm artifact is one).
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config media type of a wasm OCI artifact.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The media type of the one layer: the component's bytes.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";

/// A manifest larger than this is not a wasm artifact's.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The config is a small JSON document.
const MAX_CONFIG_BYTES: usize = 1 << 20;
/// The largest component pulled (and pushed): far above real components, far below memory.
pub const MAX_COMPONENT_BYTES: u64 = 1 << 30;

/// Why an image could not be pulled or pushed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{0}")]
    Reference(String),
    #[error("cannot reach registry {registry}: {message}")]
    Unreachable { registry: String, message: String },
    #[error("registry {registry} answered {status} to {what}{detail}")]
    Status {
        registry: String,
        status: u16,
        what: String,
        detail: String,
    },
    #[error("registry {registry} asks for a login: {message}")]
    Auth { registry: String, message: String },
    #[error("{what} of {reference} has digest {actual}, expected {expected}; refusing it")]
    DigestMismatch {
        what: String,
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("{reference} is not a wasm component artifact: {message}")]
    NotWasm { reference: String, message: String },
    #[error("{0}")]
    Credentials(String),
    #[error("image cache {path}: {message}")]
    Cache { path: PathBuf, message: String },
    #[error("no image cache directory: set WASMPOD_CACHE_DIR (or HOME)")]
    NoCacheDir,
    #[error("refusing to push {what}: {message}")]
    NotAComponent { what: String, message: String },
}

/// A resolved image: where its component is in the cache and what it is.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub reference: Reference,
    /// The digest of the manifest: what `REPO@DIGEST` names, the image's identity.
    pub manifest: Digest,
    /// The digest of the component (the layer).
    pub layer: Digest,
    /// The verified component file in the cache.
    pub path: PathBuf,
    /// Resolved without asking the registry.
    pub from_cache: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
}

/// The wasm artifact's config (the fields wasmpod writes; readers ignore the rest).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WasmConfig {
    architecture: &'static str,
    os: &'static str,
    layer_digests: Vec<String>,
}

/// What the cache remembers of a reference: its manifest and layer.
#[derive(Serialize, Deserialize)]
struct CachedRef {
    reference: String,
    manifest: String,
    layer: String,
}

/// Pulled components by digest, and the references that resolved to them.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    /// A store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> ImageStore {
        ImageStore { dir: dir.into() }
    }

    /// The store beside the compile cache: `<cache dir>/oci`.
    pub fn default_store() -> Result<ImageStore, OciError> {
        crate::engine::default_cache_dir()
            .map(|dir| ImageStore::new(dir.join("oci")))
            .ok_or(OciError::NoCacheDir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image from the cache when it is there and intact, else from the registry.
    pub async fn resolve(&self, reference: &Reference) -> Result<Pulled, OciError> {
        if let Some(pulled) = self.cached(reference).await? {
            return Ok(pulled);
        }
        self.pull(reference).await
    }

    /// Asks the registry for the image, verifies every digest and fills the cache.
    pub async fn pull(&self, reference: &Reference) -> Result<Pulled, OciError> {
        let mut session = Session::new(reference, "pull")?;
        let repo = &reference.repository;
        let shown = reference.to_string();
        let manifest_bytes = session
            .get(
                &format!("/v2/{repo}/manifests/{}", reference.target_text()),
                MANIFEST_MEDIA_TYPE,
                MAX_MANIFEST_BYTES,
                "the manifest",
            )
            .await?;
        let manifest_digest = Digest::of(&manifest_bytes.body);
        let expected = match &reference.target {
            Target::Digest(digest) => Some(digest.to_string()),
            // A tag is checked against the digest the registry says it serves, when it says.
            Target::Tag(_) => manifest_bytes.content_digest.clone(),
        };
        if let Some(expected) = expected
            && expected != manifest_digest.as_str()
        {
            return Err(OciError::DigestMismatch {
                what: "the manifest".into(),
                reference: shown,
                expected,
                actual: manifest_digest.to_string(),
            });
        }
        let not_wasm = |message: String| OciError::NotWasm {
            reference: shown.clone(),
            message,
        };
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes.body)
            .map_err(|e| not_wasm(format!("its manifest is not an OCI image manifest: {e}")))?;
        if manifest.config.media_type != CONFIG_MEDIA_TYPE {
            return Err(not_wasm(format!(
                "its config media type is {:?}, not {CONFIG_MEDIA_TYPE:?} (a container image, not a component?)",
                manifest.config.media_type
            )));
        }
        let [layer] = manifest.layers.as_slice() else {
            return Err(not_wasm(format!(
                "it has {} layers; a wasm artifact has exactly one",
                manifest.layers.len()
            )));
        };
        if layer.media_type != LAYER_MEDIA_TYPE {
            return Err(not_wasm(format!(
                "its layer's media type is {:?}, not {LAYER_MEDIA_TYPE:?}",
                layer.media_type
            )));
        }
        let config_digest: Digest = manifest.config.digest.parse().map_err(not_wasm)?;
        let layer_digest: Digest = layer.digest.parse().map_err(not_wasm)?;
        if manifest.config.size > MAX_CONFIG_BYTES as u64 || layer.size > MAX_COMPONENT_BYTES {
            return Err(not_wasm(
                "its config or component is larger than wasmpod accepts".into(),
            ));
        }

        // The config carries nothing wasmpod needs, but it is fetched and checked so a
        // tampered artifact is refused as a whole.
        let config = session
            .blob(&config_digest, manifest.config.size as usize, "the config")
            .await?;
        verify(&config, &config_digest, "the config", &shown)?;

        let path = self.blob_path(&layer_digest);
        if self.read_verified(&path, &layer_digest).await?.is_none() {
            let component = session
                .blob(&layer_digest, layer.size as usize, "the component")
                .await?;
            verify(&component, &layer_digest, "the component", &shown)?;
            crate::spec::check_component_bytes(&component).map_err(not_wasm)?;
            self.write_atomically(&path, &component).await?;
        }
        let pulled = Pulled {
            reference: reference.clone(),
            manifest: manifest_digest,
            layer: layer_digest,
            path,
            from_cache: false,
        };
        self.remember(reference, &pulled).await?;
        Ok(pulled)
    }

    /// Pushes `component` as a wasm OCI artifact to `reference` and returns the manifest's
    /// digest. The bytes must already be a valid component (the caller compiles them, see
    /// [`validate_component`]): nothing is uploaded otherwise.
    pub async fn push(reference: &Reference, component: Bytes) -> Result<Digest, OciError> {
        let layer_digest = Digest::of(&component);
        let config = serde_json::to_vec(&WasmConfig {
            architecture: "wasm",
            os: "wasip2",
            layer_digests: vec![layer_digest.to_string()],
        })
        .map_err(|e| OciError::Reference(format!("cannot write the artifact config: {e}")))?;
        let config = Bytes::from(config);
        let config_digest = Digest::of(&config);
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.into()),
            config: Descriptor {
                media_type: CONFIG_MEDIA_TYPE.into(),
                digest: config_digest.to_string(),
                size: config.len() as u64,
            },
            layers: vec![Descriptor {
                media_type: LAYER_MEDIA_TYPE.into(),
                digest: layer_digest.to_string(),
                size: component.len() as u64,
            }],
        };
        let manifest = Bytes::from(
            serde_json::to_vec(&manifest)
                .map_err(|e| OciError::Reference(format!("cannot write the manifest: {e}")))?,
        );
        let manifest_digest = Digest::of(&manifest);

        let mut session = Session::new(reference, "pull,push")?;
        session.upload_blob(&config_digest, config).await?;
        session.upload_blob(&layer_digest, component).await?;
        let answered = session.put_manifest(reference.target_text(), manifest).await?;
        if let Some(answered) = answered
            && answered != manifest_digest.as_str()
        {
            return Err(OciError::DigestMismatch {
                what: "the pushed manifest".into(),
                reference: reference.to_string(),
                expected: manifest_digest.to_string(),
                actual: answered,
            });
        }
        Ok(manifest_digest)
    }

    /// The cached resolution of `reference`, when its component is there and intact.
    async fn cached(&self, reference: &Reference) -> Result<Option<Pulled>, OciError> {
        let ref_path = self.ref_path(reference);
        let Ok(text) = tokio::fs::read(&ref_path).await else {
            return Ok(None);
        };
        let Ok(entry) = serde_json::from_slice::<CachedRef>(&text) else {
            return Ok(None);
        };
        let (Ok(manifest), Ok(layer)) = (entry.manifest.parse::<Digest>(), entry.layer.parse::<Digest>()) else {
            return Ok(None);
        };
        let path = self.blob_path(&layer);
        if self.read_verified(&path, &layer).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(Pulled {
            reference: reference.clone(),
            manifest,
            layer,
            path,
            from_cache: true,
        }))
    }

    /// The blob at `path` when it hashes to `digest`; a blob that does not is removed.
    async fn read_verified(&self, path: &Path, digest: &Digest) -> Result<Option<Vec<u8>>, OciError> {
        let bytes = match tokio::fs::read(path).await {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(cache_error(path, error)),
        };
        let check = bytes.clone();
        let actual = tokio::task::spawn_blocking(move || Digest::of(&check))
            .await
            .map_err(|e| cache_error(path, e))?;
        if actual == *digest {
            Ok(Some(bytes))
        } else {
            // Changed on disk since it was verified: never run it, fetch it again.
            tokio::fs::remove_file(path).await.map_err(|e| cache_error(path, e))?;
            Ok(None)
        }
    }

    async fn remember(&self, reference: &Reference, pulled: &Pulled) -> Result<(), OciError> {
        let entry = |reference: &Reference| CachedRef {
            reference: reference.to_string(),
            manifest: pulled.manifest.to_string(),
            layer: pulled.layer.to_string(),
        };
        let pinned = Reference {
            target: Target::Digest(pulled.manifest.clone()),
            ..reference.clone()
        };
        for reference in [reference, &pinned] {
            let text = serde_json::to_vec(&entry(reference)).map_err(|e| cache_error(&self.dir, e))?;
            self.write_atomically(&self.ref_path(reference), &text).await?;
        }
        Ok(())
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(digest.hex())
    }

    /// References are file names by their hash: a reference has `/` and `:` in it.
    fn ref_path(&self, reference: &Reference) -> PathBuf {
        let key = Digest::of(reference.to_string().as_bytes());
        self.dir.join("refs").join(key.hex())
    }

    /// Written beside and renamed, so a reader never sees half a blob.
    async fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<(), OciError> {
        let path = path.to_path_buf();
        let bytes = bytes.to_vec();
        tokio::task::spawn_blocking(move || {
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| cache_error(dir, e))?;
            let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| cache_error(dir, e))?;
            std::io::Write::write_all(&mut file, &bytes).map_err(|e| cache_error(&path, e))?;
            file.persist(&path).map_err(|e| cache_error(&path, e.error))?;
            Ok(())
        })
        .await
        .map_err(|e| cache_error(&self.dir, e))?
    }
}

/// Checks that `bytes` are a component wasmpod can run, by compiling it (which also fills the
/// compile cache for the first run).
pub fn validate_component(engine: &crate::engine::Engine, bytes: &[u8], what: &str) -> Result<(), OciError> {
    crate::spec::check_component_bytes(bytes).map_err(|message| OciError::NotAComponent {
        what: what.into(),
        message,
    })?;
    if bytes.len() as u64 > MAX_COMPONENT_BYTES {
        return Err(OciError::NotAComponent {
            what: what.into(),
            message: format!("it is larger than {MAX_COMPONENT_BYTES} bytes"),
        });
    }
    engine
        .compile(bytes, what)
        .map(|_| ())
        .map_err(|error| OciError::NotAComponent {
            what: what.into(),
            message: error.to_string(),
        })
}

fn verify(bytes: &[u8], expected: &Digest, what: &str, reference: &str) -> Result<(), OciError> {
    let actual = Digest::of(bytes);
    if actual == *expected {
        Ok(())
    } else {
        Err(OciError::DigestMismatch {
            what: what.into(),
            reference: reference.into(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        })
    }
}

fn cache_error(path: &Path, error: impl std::fmt::Display) -> OciError {
    OciError::Cache {
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}
