//! `--device`: which backend and which device, and the one place that knows which backends this
//! binary was built with.

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;

/// A backend autokd can be built with; each is a Cargo feature of `autokd-cli`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Backend {
    /// Pure-Rust CPU backend (default feature).
    Flex,
    /// CubeCL CPU backend.
    Cpu,
    /// wgpu: Vulkan, Metal, DirectX or OpenGL, chosen at run time.
    Wgpu,
    /// wgpu pinned to Vulkan (SPIR-V).
    Vulkan,
    /// wgpu pinned to Metal.
    Metal,
    /// NVIDIA CUDA.
    Cuda,
    /// AMD ROCm/HIP.
    Rocm,
}

impl Backend {
    /// Every backend, in the order `info` lists them.
    pub const ALL: [Backend; 7] = [
        Backend::Flex,
        Backend::Cpu,
        Backend::Wgpu,
        Backend::Vulkan,
        Backend::Metal,
        Backend::Cuda,
        Backend::Rocm,
    ];

    /// The name used on the command line and as the Cargo feature.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Cpu => "cpu",
            Backend::Wgpu => "wgpu",
            Backend::Vulkan => "vulkan",
            Backend::Metal => "metal",
            Backend::Cuda => "cuda",
            Backend::Rocm => "rocm",
        }
    }

    /// Whether this binary was built with the backend's feature.
    pub fn compiled(self) -> bool {
        match self {
            Backend::Flex => cfg!(feature = "flex"),
            Backend::Cpu => cfg!(feature = "cpu"),
            Backend::Wgpu => cfg!(feature = "wgpu"),
            Backend::Vulkan => cfg!(feature = "vulkan"),
            Backend::Metal => cfg!(feature = "metal"),
            Backend::Cuda => cfg!(feature = "cuda"),
            Backend::Rocm => cfg!(feature = "rocm"),
        }
    }

    /// Backends compiled into this binary.
    pub fn compiled_list() -> Vec<Backend> {
        Self::ALL.into_iter().filter(|b| b.compiled()).collect()
    }

    /// What building the backend needs beyond the feature, if anything.
    pub fn build_note(self) -> Option<&'static str> {
        match self {
            Backend::Cuda | Backend::Cpu => Some(
                "its build script downloads an LLVM bundle (burn 0.22 / CubeCL), so building it needs network access",
            ),
            Backend::Rocm => Some("needs a ROCm installation at build time"),
            Backend::Metal => Some("macOS only"),
            _ => None,
        }
    }
}

/// A device as written after `--device`: `flex`, `cpu`, `wgpu[:N]`, `vulkan[:N]`, `metal`,
/// `cuda[:N]`, `rocm[:N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The backend.
    pub backend: Backend,
    /// The device index (GPU backends); `None` is the backend's default device.
    pub index: Option<usize>,
}

impl Default for DeviceSpec {
    fn default() -> Self {
        Self {
            backend: Backend::Flex,
            index: None,
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}:{i}", self.backend.name()),
            None => f.write_str(self.backend.name()),
        }
    }
}

/// Why a `--device` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The string does not name a device.
    #[error(
        "device `{given}`: {message}; expected one of flex, cpu, wgpu[:N], vulkan[:N], metal, cuda[:N], rocm[:N]"
    )]
    Parse {
        /// What was given.
        given: String,
        /// What is wrong.
        message: String,
    },
    /// The backend's feature is off in this build.
    #[error(
        "backend `{backend}` is not compiled into this binary (compiled: {compiled}); rebuild with `cargo build --release -p autokd-cli --features {backend}`{note}"
    )]
    NotCompiled {
        /// The backend asked for.
        backend: &'static str,
        /// The backends that are compiled.
        compiled: String,
        /// A note on what building it needs.
        note: String,
    },
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let err = |message: String| DeviceError::Parse {
            given: s.to_string(),
            message,
        };
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => {
                let i = i
                    .parse::<usize>()
                    .map_err(|_| err(format!("`{i}` is not a device index")))?;
                (n, Some(i))
            }
            None => (s, None),
        };
        let backend = Backend::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| err(format!("unknown backend `{name}`")))?;
        if index.is_some() && matches!(backend, Backend::Flex | Backend::Cpu | Backend::Metal) {
            return Err(err(format!(
                "backend `{}` takes no device index",
                backend.name()
            )));
        }
        Ok(Self { backend, index })
    }
}

/// The devices of a `--device a,b,...` list: the first (the main one) and all of them.
pub fn select_devices(specs: &[DeviceSpec]) -> anyhow::Result<(Device, Vec<Device>)> {
    let devices = specs
        .iter()
        .map(select_device)
        .collect::<Result<Vec<_>, _>>()?;
    let main = devices
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("--device: no device given"))?;
    Ok((main, devices))
}

/// A device on the host CPU for small exact computations (f64), when `flex` is compiled;
/// otherwise `fallback`.
pub fn host_device(fallback: &Device) -> Device {
    #[cfg(feature = "flex")]
    {
        let _ = fallback;
        Device::flex()
    }
    #[cfg(not(feature = "flex"))]
    {
        fallback.clone()
    }
}

/// The device for `spec`, or an error that names the feature to enable.
pub fn select_device(spec: &DeviceSpec) -> Result<Device, DeviceError> {
    #[allow(unused_variables)]
    let index = spec.index.unwrap_or(0);
    #[allow(unused_variables)]
    let kind = match spec.index {
        Some(i) => DeviceKind::DiscreteGpu(i),
        None => DeviceKind::DefaultDevice,
    };
    match spec.backend {
        #[cfg(feature = "flex")]
        Backend::Flex => Ok(Device::flex()),
        #[cfg(feature = "cpu")]
        Backend::Cpu => Ok(Device::cpu()),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => Ok(Device::wgpu(kind)),
        #[cfg(feature = "vulkan")]
        Backend::Vulkan => Ok(Device::vulkan(kind)),
        #[cfg(feature = "metal")]
        Backend::Metal => Ok(Device::metal(DeviceKind::DefaultDevice)),
        #[cfg(feature = "cuda")]
        Backend::Cuda => Ok(Device::cuda(index)),
        #[cfg(feature = "rocm")]
        Backend::Rocm => Ok(Device::rocm(index)),
        #[allow(unreachable_patterns)]
        other => Err(DeviceError::NotCompiled {
            backend: other.name(),
            compiled: Backend::compiled_list()
                .iter()
                .map(|b| b.name())
                .collect::<Vec<_>>()
                .join(", "),
            note: other
                .build_note()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
        }),
    }
}

/// The devices of `backend` this machine has, as `--device` strings with a description.
/// GPU backends are probed; a probe that fails (no driver, no adapter) lists nothing.
pub fn visible_devices(backend: Backend) -> Vec<(String, String)> {
    if !backend.compiled() {
        return Vec::new();
    }
    let probe = std::panic::catch_unwind(|| enumerate(backend));
    probe.unwrap_or_default()
}

fn enumerate(backend: Backend) -> Vec<(String, String)> {
    #[allow(unused_imports)]
    use burn::tensor::DeviceType;
    #[allow(unused_variables)]
    let describe = |i: usize, d: &Device| (format!("{}:{i}", backend.name()), format!("{d:?}"));
    match backend {
        #[cfg(feature = "flex")]
        Backend::Flex => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            vec![("flex".into(), format!("CPU, {threads} threads"))]
        }
        #[cfg(feature = "cpu")]
        Backend::Cpu => vec![("cpu".into(), "CubeCL CPU".into())],
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => Device::enumerate(DeviceType::Wgpu)
            .into_iter()
            .enumerate()
            .map(|(i, d)| describe(i, &d))
            .collect(),
        #[cfg(feature = "vulkan")]
        Backend::Vulkan => Device::enumerate(DeviceType::Vulkan)
            .into_iter()
            .enumerate()
            .map(|(i, d)| describe(i, &d))
            .collect(),
        #[cfg(feature = "metal")]
        Backend::Metal => Device::enumerate(DeviceType::Metal)
            .into_iter()
            .enumerate()
            .map(|(i, d)| describe(i, &d))
            .collect(),
        #[cfg(feature = "cuda")]
        Backend::Cuda => Device::enumerate(DeviceType::Cuda)
            .into_iter()
            .enumerate()
            .map(|(i, d)| describe(i, &d))
            .collect(),
        #[cfg(feature = "rocm")]
        Backend::Rocm => Device::enumerate(DeviceType::Rocm)
            .into_iter()
            .enumerate()
            .map(|(i, d)| describe(i, &d))
            .collect(),
        #[allow(unreachable_patterns)]
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_devices() {
        assert_eq!("flex".parse::<DeviceSpec>().unwrap(), DeviceSpec::default());
        let d: DeviceSpec = "cuda:1".parse().unwrap();
        assert_eq!((d.backend, d.index), (Backend::Cuda, Some(1)));
        assert_eq!(d.to_string(), "cuda:1");
        assert_eq!(
            "VULKAN".parse::<DeviceSpec>().unwrap().backend,
            Backend::Vulkan
        );
        let msg = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(
            msg.contains("unknown backend `tpu`") && msg.contains("cuda[:N]"),
            "{msg}"
        );
        assert!(
            "cuda:x"
                .parse::<DeviceSpec>()
                .unwrap_err()
                .to_string()
                .contains("not a device index")
        );
        assert!("flex:1".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn missing_backend_names_the_feature() {
        for b in Backend::ALL {
            let spec = DeviceSpec {
                backend: b,
                index: None,
            };
            match select_device(&spec) {
                Ok(_) => assert!(b.compiled()),
                Err(e) => {
                    assert!(!b.compiled());
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("--features {}", b.name())), "{msg}");
                }
            }
        }
        if !Backend::Cuda.compiled() {
            let msg = select_device(&"cuda".parse().unwrap())
                .unwrap_err()
                .to_string();
            assert!(msg.contains("network access"), "{msg}");
        }
    }
}
