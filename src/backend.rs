//! Choosing the burn backend at run time, among those compiled in.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, Tensor};
use thiserror::Error;

/// A burn backend this crate can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Pure-Rust CPU backend (feature `flex`, the default).
    Flex,
    /// The deprecated ndarray CPU backend (feature `ndarray`).
    Ndarray,
    /// GPUs through wgpu, or CPUs through lavapipe (feature `wgpu`).
    Wgpu,
    /// NVIDIA GPUs (feature `cuda`).
    Cuda,
}

/// A backend that cannot be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// The backend's cargo feature was not enabled.
    #[error("backend '{0}' is not compiled in: rebuild with `--features {0}` (compiled in: {1})")]
    NotCompiled(Backend, String),
    /// The backend is compiled in but no device answered.
    #[error("backend '{0}' found no usable device ({1})")]
    NoDevice(Backend, String),
    /// An unknown name.
    #[error("unknown backend '{0}': choose one of flex, ndarray, wgpu, cuda")]
    Unknown(String),
    /// A device index that is not a number.
    #[error("'{0}': the device index after ':' must be a number (cuda:1, wgpu:0)")]
    BadIndex(String),
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        })
    }
}

impl FromStr for Backend {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "flex" => Ok(Backend::Flex),
            "ndarray" => Ok(Backend::Ndarray),
            "wgpu" => Ok(Backend::Wgpu),
            "cuda" => Ok(Backend::Cuda),
            other => Err(BackendError::Unknown(other.to_string())),
        }
    }
}

impl Backend {
    /// The backends compiled into this build, the default first.
    pub fn compiled() -> Vec<Backend> {
        let mut v = Vec::new();
        if cfg!(feature = "flex") {
            v.push(Backend::Flex);
        }
        if cfg!(feature = "ndarray") {
            v.push(Backend::Ndarray);
        }
        if cfg!(feature = "wgpu") {
            v.push(Backend::Wgpu);
        }
        if cfg!(feature = "cuda") {
            v.push(Backend::Cuda);
        }
        v
    }

    /// The first compiled backend (flex in a default build).
    pub fn default_compiled() -> Option<Backend> {
        Self::compiled().first().copied()
    }

    fn not_compiled(self) -> BackendError {
        let list: Vec<String> = Self::compiled().iter().map(|b| b.to_string()).collect();
        BackendError::NotCompiled(self, list.join(", "))
    }

    /// The backend's default device (without autodiff), after checking that it answers: a
    /// wgpu build on a machine without a GPU driver returns [`BackendError::NoDevice`] instead
    /// of panicking at the first tensor.
    ///
    /// # Errors
    /// [`BackendError::NotCompiled`] or [`BackendError::NoDevice`].
    pub fn device(self) -> Result<Device, BackendError> {
        self.device_at(0)
    }

    /// Device number `index` of the backend (`cuda:1`; for wgpu, the `index`-th discrete
    /// GPU, and index 0 the default adapter), checked as [`Backend::device`] does. The CPU
    /// backends have one device: index 0.
    ///
    /// # Errors
    /// [`BackendError::NotCompiled`] or [`BackendError::NoDevice`].
    pub fn device_at(self, index: usize) -> Result<Device, BackendError> {
        if matches!(self, Backend::Flex | Backend::Ndarray) && index != 0 {
            return Err(BackendError::NoDevice(
                self,
                format!("a CPU backend has only device 0, not {index}"),
            ));
        }
        let device = match self {
            #[cfg(feature = "flex")]
            Backend::Flex => Device::flex(),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Backend::Ndarray => Device::ndarray(),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu if index == 0 => Device::wgpu(Default::default()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(index)),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Device::cuda(index),
            #[allow(unreachable_patterns)]
            _ => return Err(self.not_compiled()),
        };
        probe(&device).map_err(|e| BackendError::NoDevice(self, e))?;
        Ok(device)
    }
}

/// A device by name: `flex`, `wgpu`, `cuda:1` (a backend and an optional index, 0 by
/// default). Parses with [`FromStr`]; [`DeviceSpec::device`] opens it.
///
/// ```
/// use ddpm::backend::{Backend, DeviceSpec};
/// let spec: DeviceSpec = "cuda:1".parse().unwrap();
/// assert_eq!(spec, DeviceSpec { backend: Backend::Cuda, index: 1 });
/// assert_eq!(spec.to_string(), "cuda:1");
/// assert!("cuda:x".parse::<DeviceSpec>().is_err());
/// assert!("tpu".parse::<DeviceSpec>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The backend.
    pub backend: Backend,
    /// The device number.
    pub index: usize,
}

impl FromStr for DeviceSpec {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (backend, index) = match s.split_once(':') {
            Some((b, i)) => (
                b.parse::<Backend>()?,
                i.parse::<usize>()
                    .map_err(|_| BackendError::BadIndex(s.to_string()))?,
            ),
            None => (s.parse::<Backend>()?, 0),
        };
        Ok(Self { backend, index })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.index == 0 {
            write!(f, "{}", self.backend)
        } else {
            write!(f, "{}:{}", self.backend, self.index)
        }
    }
}

impl DeviceSpec {
    /// Opens the device (checked as [`Backend::device_at`] does).
    ///
    /// # Errors
    /// [`BackendError::NotCompiled`] or [`BackendError::NoDevice`].
    pub fn device(&self) -> Result<Device, BackendError> {
        self.backend.device_at(self.index)
    }

    /// The device of `spec`, or the default backend's first device when `None`.
    ///
    /// # Errors
    /// As [`DeviceSpec::device`]; no backend compiled in.
    pub fn open_or_default(spec: Option<DeviceSpec>) -> Result<Device, BackendError> {
        match spec {
            Some(s) => s.device(),
            None => Backend::default_compiled()
                .ok_or_else(|| BackendError::Unknown("(none compiled in: enable flex)".into()))?
                .device(),
        }
    }
}

/// Runs one tiny computation on `device`, turning a panic (no adapter, no driver) into an error.
pub fn probe(device: &Device) -> Result<(), String> {
    let d = device.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(move || {
        let x = Tensor::<1>::ones([4], &d).sum().into_scalar::<f32>();
        (x - 4.0).abs() < 1e-6
    });
    std::panic::set_hook(previous);
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err("a test computation returned a wrong value".into()),
        Err(e) => Err(e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the device panicked".into())),
    }
}
