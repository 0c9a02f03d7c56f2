//! Memory measurement: the process's resident memory, the device's use, and the hook that samples
//! them through a training and reports its peak.

use super::{Hook, TrainResult};
use crate::error::Result;
use crate::model::Param;
use candle_core::backprop::GradStore;
use candle_core::Device;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Resident memory of this process now (VmRSS).
pub fn current_rss() -> u64 {
    proc_status_kb("VmRSS:") * 1024
}

/// Peak resident memory of this process (VmHWM).
pub fn peak_rss() -> u64 {
    proc_status_kb("VmHWM:") * 1024
}

fn proc_status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

static DEVICE_PEAK: AtomicU64 = AtomicU64::new(0);
static DEVICE_BASE: AtomicU64 = AtomicU64::new(u64::MAX);

/// Device memory in use now (all of it: the context and the allocator's cache included).
fn device_used(dev: &Device) -> Option<u64> {
    match dev {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
            Some((total - free) as u64)
        }
        _ => {
            let _ = dev;
            None
        }
    }
}

/// Records device memory use; training samples it after every forward and backward pass. The
/// first sample (before any model memory, after the context) is the baseline.
pub fn sample_device_memory(dev: &Device) {
    if let Some(u) = device_used(dev) {
        DEVICE_BASE.fetch_min(u, Relaxed);
        DEVICE_PEAK.fetch_max(u, Relaxed);
    }
}

/// Starts a new high-water mark, so that a training reports its own peak rather than the
/// process's (a comparison trains many models one after another). On the CPU freed heap pages go
/// back to the system first, then the kernel's VmHWM restarts at the current RSS; on a GPU the
/// peak restarts at the memory in use now.
pub fn reset_peak_memory(dev: &Device) {
    if dev.is_cpu() {
        // SAFETY: both only return free heap memory to the system (mimalloc is the binary's
        // allocator, glibc's malloc the tests')
        unsafe {
            libmimalloc_sys::mi_collect(true);
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            libc::malloc_trim(0);
        }
        // "5" resets the peak RSS (Documentation/filesystems/proc.rst); without /proc (or
        // permission) the peak stays the process's
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    } else if let Some(u) = device_used(dev) {
        DEVICE_BASE.fetch_min(u, Relaxed);
        DEVICE_PEAK.store(u, Relaxed);
    }
}

/// Peak device memory above the baseline sampled first (the CUDA context excluded).
pub fn device_peak_bytes(dev: &Device) -> Option<u64> {
    sample_device_memory(dev);
    let (p, b) = (DEVICE_PEAK.load(Relaxed), DEVICE_BASE.load(Relaxed));
    (b != u64::MAX).then(|| p.saturating_sub(b))
}

/// Samples memory after every forward and backward pass of a training and reports its peak:
/// resident memory on the CPU, device memory above the context on a GPU.
pub struct Memory {
    device: Device,
}

impl Memory {
    /// Starts a new peak (see `reset_peak_memory`).
    pub fn start(device: &Device) -> Memory {
        reset_peak_memory(device);
        Memory {
            device: device.clone(),
        }
    }
}

impl Hook for Memory {
    fn on_forward(&mut self) {
        sample_device_memory(&self.device);
    }

    fn on_backward(&mut self, _grads: &GradStore, _params: &[(String, Param)]) {
        sample_device_memory(&self.device);
    }

    fn on_end(&mut self, res: &mut TrainResult) -> Result<()> {
        res.peak_mem_bytes = if self.device.is_cpu() {
            peak_rss()
        } else {
            device_peak_bytes(&self.device).unwrap_or(0)
        };
        Ok(())
    }
}
