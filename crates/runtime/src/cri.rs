//! The CRI v1 API of containerd over its unix socket.
//!
//! A thin layer over the generated `k8s-cri` clients: it connects, keeps
//! one HTTP/2 channel (cheap to clone), and turns gRPC failures into
//! [`RuntimeError`]s that keep the runtime's own message, which is what
//! Pod statuses show (`RunContainerError`, `ErrImagePull`...).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
pub use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::RuntimeError;

/// A connected CRI client (runtime and image services).
#[derive(Clone)]
pub struct Cri {
    socket: PathBuf,
    channel: Channel,
}

impl std::fmt::Debug for Cri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cri").field("socket", &self.socket).finish()
    }
}

impl Cri {
    /// Connects lazily to the CRI socket: the channel reconnects by
    /// itself after containerd restarts.
    pub fn connect(socket: &Path) -> Result<Cri, RuntimeError> {
        let path = socket.to_path_buf();
        let channel = Endpoint::try_from("http://[::1]:0")
            .map_err(|e| RuntimeError::Config(format!("CRI endpoint: {e}")))?
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }));
        Ok(Cri {
            socket: socket.to_path_buf(),
            channel,
        })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The runtime service (sandboxes, containers, exec).
    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone()).max_decoding_message_size(16 * 1024 * 1024)
    }

    /// The image service.
    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone()).max_decoding_message_size(16 * 1024 * 1024)
    }

    /// `containerd://<version>` for the Node's `containerRuntimeVersion`.
    pub async fn version(&self) -> Result<String, RuntimeError> {
        let v = self
            .runtime()
            .version(api::VersionRequest {
                version: "v1".into(),
            })
            .await
            .map_err(|s| RuntimeError::cri("Version", s))?
            .into_inner();
        Ok(format!("{}://{}", v.runtime_name, v.runtime_version))
    }

    /// Whether the runtime and its network are ready, with the reason
    /// when not (the Node's Ready condition mirrors this, as a kubelet's).
    pub async fn ready(&self) -> Result<(bool, bool, String), RuntimeError> {
        let st = self
            .runtime()
            .status(api::StatusRequest { verbose: false })
            .await
            .map_err(|s| RuntimeError::cri("Status", s))?
            .into_inner();
        let mut runtime_ready = false;
        let mut network_ready = false;
        let mut why = Vec::new();
        for c in st.status.map(|s| s.conditions).unwrap_or_default() {
            match c.r#type.as_str() {
                "RuntimeReady" => runtime_ready = c.status,
                "NetworkReady" => network_ready = c.status,
                _ => {}
            }
            if !c.status {
                why.push(format!(
                    "{}=false reason:{} message:{}",
                    c.r#type, c.reason, c.message
                ));
            }
        }
        Ok((runtime_ready, network_ready, why.join("; ")))
    }

    /// Whether `image` is present; its id (`sha256:...`) when it is.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        let st = self
            .images()
            .image_status(api::ImageStatusRequest {
                image: Some(api::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .map_err(|s| RuntimeError::cri("ImageStatus", s))?
            .into_inner();
        Ok(st.image.map(|i| i.id))
    }

    /// Pulls `image`; returns its reference.
    pub async fn pull(&self, image: &str) -> Result<String, RuntimeError> {
        let r = self
            .images()
            .pull_image(api::PullImageRequest {
                image: Some(api::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            })
            .await
            .map_err(|s| RuntimeError::cri("PullImage", s))?
            .into_inner();
        Ok(r.image_ref)
    }
}
