//! Turning a pod's spec into runnable containers: compiling every component (or loading it
//! from the cache), preparing the volumes and each container's mounts, egress and outgoing
//! routes, and telling command containers from http handlers.
//!
//! Nothing here changes the pod's state: a start that fails while preparing leaves the pod's
//! status as it was, and [`Pod::start`] records the failure.

use std::sync::Arc;

use crate::container::{
    self, CommandContainer, ContainerError, ContainerKind, ContainerRuntime, HttpContainer, HttpLimits, PodServices,
};
use crate::engine::CompileSource;
use crate::route::PodRoutes;
use crate::spec::{ComponentSource, ContainerSpec};
use crate::status::EventKind;
use crate::supervisor::Runnable;
use crate::volume::Volumes;

use super::{Pod, PodError};

impl Pod {
    /// Prepares the volumes and every container, init containers first, in spec order (the
    /// order of the pod's container ids). The volumes are returned to the caller, who holds
    /// them for the pod's life; dropping them removes the `empty_dir`s and secrets.
    pub(super) async fn prepare_containers(&self) -> Result<(Volumes, Vec<Runnable>), PodError> {
        let shared = &self.parts;
        let linker = container::linker(&shared.engine).map_err(|e| PodError::Engine(format!("{e:#}")))?;
        let spec = shared.spec.clone();
        let volumes = tokio::task::spawn_blocking(move || Volumes::prepare(&spec))
            .await
            .map_err(|e| PodError::Engine(format!("volume preparation panicked: {e}")))??;
        for volume in &shared.spec.volumes {
            if let Some(dir) = volumes.host_dir(&volume.name) {
                let host_dir = dir.display().to_string();
                shared.events.emit(
                    None,
                    EventKind::VolumeReady {
                        volume: volume.name.clone(),
                        host_dir,
                    },
                );
            }
        }
        let services = self.services();
        let mut prepared = Vec::new();
        let mut versions = Vec::new();
        for (index, container_spec) in shared.spec.all_containers().enumerate() {
            let init = index < shared.spec.init_containers.len();
            let compiled = self.compile(container_spec).await?;
            let mounts = volumes.mounts_for(container_spec)?;
            let runnable = self.build(container_spec, init, &compiled, mounts, &services, &linker)?;
            if let Runnable::Http { container, port } = &runnable {
                shared.http_ports.insert(*port, container);
            }
            // What the update compares against. The compiled component came from these bytes
            // unless the file changed in between; then the next update sees a change and swaps.
            let source = container_spec.component.clone();
            let version = tokio::task::spawn_blocking(move || super::update::component_digest(&source))
                .await
                .map_err(|e| PodError::Engine(format!("reading a component panicked: {e}")))?
                .unwrap_or_default();
            versions.push(super::update::Version {
                spec: container_spec.clone(),
                digest: version,
                http_port: match &runnable {
                    Runnable::Http { port, .. } => Some(*port),
                    Runnable::Command(_) => None,
                },
            });
            prepared.push(runnable);
        }
        *super::handle::lock(&self.versions) = versions;
        Ok((volumes, prepared))
    }

    /// What the pod gives each of its containers (the same for every version of them).
    pub(super) fn services(&self) -> PodServices {
        let shared = &self.parts;
        PodServices {
            engine: shared.engine.clone(),
            logs: shared.logs.clone(),
            events: shared.events.clone(),
            network: shared.network.clone(),
            routes: Arc::new(PodRoutes::new(shared.network.clone(), shared.http_ports.clone())),
            counters: shared.counters.clone(),
        }
    }

    /// One container made runnable from its compiled component: a command, or an http handler
    /// on its one port (not yet in the pod's port table: the caller decides when it serves).
    pub(super) fn build(
        &self,
        container_spec: &ContainerSpec,
        init: bool,
        compiled: &wasmtime::component::Component,
        mounts: Vec<crate::volume::Mount>,
        services: &PodServices,
        linker: &wasmtime::component::Linker<container::ContainerData>,
    ) -> Result<Runnable, PodError> {
        let shared = &self.parts;
        let name = container_spec.name.clone();
        let runtime = ContainerRuntime::new(container_spec.clone(), mounts, services.clone());
        let runnable = match ContainerKind::require(shared.engine.wasmtime(), compiled, &name)? {
            ContainerKind::Command => Runnable::Command(Arc::new(CommandContainer::new(runtime, linker, compiled)?)),
            ContainerKind::Http => {
                let port = match (init, container_spec.ports.as_slice()) {
                    (false, [port]) => *port,
                    (true, _) => {
                        return Err(ContainerError::Unsupported {
                            container: name,
                            message: "an init container must be a command (`wasi:cli/run`), not an http handler".into(),
                        }
                        .into());
                    }
                    (false, ports) => {
                        return Err(ContainerError::Unsupported {
                            container: name,
                            message: format!(
                                "an http container serves exactly one port; list it in `ports` (it lists {})",
                                ports.len()
                            ),
                        }
                        .into());
                    }
                };
                let http = HttpContainer::in_pod(runtime, linker, compiled)
                    .map_err(|e| ContainerError::Link {
                        container: name.clone(),
                        message: e.to_string(),
                    })?
                    .with_limits(http_limits(&self.http_limits, &container_spec.http));
                Runnable::Http {
                    container: Arc::new(http),
                    port,
                }
            }
        };
        Ok(runnable)
    }

    pub(super) async fn compile(&self, container: &ContainerSpec) -> Result<wasmtime::component::Component, PodError> {
        // A registry image becomes its verified file in the image cache first.
        let source = self.resolve_image(container).await?;
        self.compile_source(&container.name, source).await
    }

    /// Compiles one container's component (or loads it from the cache), with its events.
    pub(super) async fn compile_source(
        &self,
        name: &str,
        source: ComponentSource,
    ) -> Result<wasmtime::component::Component, PodError> {
        let shared = &self.parts;
        let name = name.to_string();
        shared.events.emit(Some(&name), EventKind::Compiling);
        let engine = shared.engine.clone();
        let what = match &source {
            ComponentSource::File(path) => format!("{} (container {name:?})", path.display()),
            ComponentSource::Bytes(_) => format!("the component bytes of container {name:?}"),
            ComponentSource::Image(reference) => format!("image {reference} (container {name:?})"),
        };
        let compiled = tokio::task::spawn_blocking(move || match &source {
            ComponentSource::File(path) => engine.compile_file(path, &what),
            ComponentSource::Bytes(bytes) => engine.compile(bytes, &what),
            // `resolve_image` turned every image into its cached file.
            ComponentSource::Image(_) => Err(crate::engine::CompileError::Invalid {
                what: what.clone(),
                message: "image not resolved".into(),
            }),
        })
        .await
        .map_err(|e| PodError::Engine(format!("compilation panicked: {e}")))?
        .map_err(|source| PodError::Compile {
            container: name.clone(),
            source,
        })?;
        let cached = compiled.source != CompileSource::Compiled;
        shared.events.emit(
            Some(&name),
            EventKind::Compiled {
                cached,
                took: compiled.elapsed,
            },
        );
        Ok(compiled.component)
    }
}

impl Pod {
    /// A container's `image` as its verified file in the image cache (pulled when missing),
    /// with its digest in an event; any other source as it is.
    pub(super) async fn resolve_image(&self, container: &ContainerSpec) -> Result<ComponentSource, PodError> {
        let ComponentSource::Image(reference) = &container.component else {
            return Ok(container.component.clone());
        };
        let image_error = |source| PodError::Image {
            container: container.name.clone(),
            source: Box::new(source),
        };
        let store = crate::oci::ImageStore::default_store().map_err(image_error)?;
        let pulled = store.resolve(reference).await.map_err(image_error)?;
        self.parts.events.emit(
            Some(&container.name),
            EventKind::ImageResolved {
                image: reference.to_string(),
                digest: pulled.manifest.to_string(),
                cached: pulled.from_cache,
            },
        );
        Ok(ComponentSource::File(pulled.path))
    }
}

/// The pod's default request limits, with what the container's spec sets.
fn http_limits(defaults: &HttpLimits, settings: &crate::spec::HttpSettings) -> HttpLimits {
    HttpLimits {
        request_timeout: settings.request_timeout.unwrap_or(defaults.request_timeout),
        max_concurrent_instances: settings
            .max_concurrent_instances
            .unwrap_or(defaults.max_concurrent_instances),
        max_request_body_bytes: settings.max_request_body.unwrap_or(defaults.max_request_body_bytes),
        ..defaults.clone()
    }
}
