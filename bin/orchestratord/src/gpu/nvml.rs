//! NVML through `libnvidia-ml.so.1`, loaded at run time (feature `nvml`): device count,
//! then per device its utilization rates and memory info. Only the four calls below
//! are used; each returns `NVML_SUCCESS` (0) or an error code, which is reported.

use super::{DeviceSample, GpuSource};
use std::ffi::c_void;

type Ret = i32;
type Device = *mut c_void;

/// `nvmlUtilization_t` (NVML fills in every field; only `gpu` is read)
#[repr(C)]
#[derive(Default)]
#[allow(dead_code)]
struct Utilization {
    gpu: u32,
    memory: u32,
}

/// `nvmlMemory_t` (NVML fills in every field; only `used` is read)
#[repr(C)]
#[derive(Default)]
#[allow(dead_code)]
struct Memory {
    total: u64,
    free: u64,
    used: u64,
}

pub struct Nvml {
    count: unsafe extern "C" fn(*mut u32) -> Ret,
    handle: unsafe extern "C" fn(u32, *mut Device) -> Ret,
    utilization: unsafe extern "C" fn(Device, *mut Utilization) -> Ret,
    memory: unsafe extern "C" fn(Device, *mut Memory) -> Ret,
    shutdown: unsafe extern "C" fn() -> Ret,
    // last: the functions above point into it, so it must outlive their use
    _lib: libloading::Library,
}

fn check(what: &str, r: Ret) -> Result<(), String> {
    if r == 0 {
        Ok(())
    } else {
        Err(format!("{what} returned NVML error {r}"))
    }
}

impl Nvml {
    pub fn open() -> Result<Self, String> {
        // SAFETY: loading the system's NVML library runs its initialisers, which is
        // what every NVML user does; nothing else is loaded.
        let lib = unsafe { libloading::Library::new("libnvidia-ml.so.1") }
            .map_err(|e| format!("libnvidia-ml.so.1 not loaded ({e}): no NVIDIA driver"))?;
        // SAFETY: each symbol is looked up by its NVML name with its NVML signature.
        let n = unsafe {
            let init = *lib
                .get::<unsafe extern "C" fn() -> Ret>(b"nvmlInit_v2\0")
                .map_err(|e| e.to_string())?;
            let shutdown = *lib
                .get::<unsafe extern "C" fn() -> Ret>(b"nvmlShutdown\0")
                .map_err(|e| e.to_string())?;
            check("nvmlInit_v2", init())?;
            // from here a failure shuts NVML down again
            let sym = |name: &[u8]| -> Result<(), String> {
                lib.get::<*const c_void>(name).map(|_| ()).map_err(|e| {
                    shutdown();
                    e.to_string()
                })
            };
            for name in [
                &b"nvmlDeviceGetCount_v2\0"[..],
                b"nvmlDeviceGetHandleByIndex_v2\0",
                b"nvmlDeviceGetUtilizationRates\0",
                b"nvmlDeviceGetMemoryInfo\0",
            ] {
                sym(name)?;
            }
            Nvml {
                count: *lib
                    .get(b"nvmlDeviceGetCount_v2\0")
                    .map_err(|e| e.to_string())?,
                handle: *lib
                    .get(b"nvmlDeviceGetHandleByIndex_v2\0")
                    .map_err(|e| e.to_string())?,
                utilization: *lib
                    .get(b"nvmlDeviceGetUtilizationRates\0")
                    .map_err(|e| e.to_string())?,
                memory: *lib
                    .get(b"nvmlDeviceGetMemoryInfo\0")
                    .map_err(|e| e.to_string())?,
                shutdown,
                _lib: lib,
            }
        };
        let mut count = 0u32;
        // SAFETY: a valid pointer to a u32 NVML fills in (dropping `n` shuts NVML down)
        check("nvmlDeviceGetCount_v2", unsafe { (n.count)(&mut count) })?;
        if count == 0 {
            return Err("NVML sees no GPU device".into());
        }
        Ok(n)
    }
}

impl GpuSource for Nvml {
    fn sample(&mut self) -> Result<Vec<DeviceSample>, String> {
        let mut count = 0u32;
        // SAFETY: as in `open`; each out-pointer is a valid local NVML fills in, and a
        // device handle is used only right after NVML gave it
        unsafe {
            check("nvmlDeviceGetCount_v2", (self.count)(&mut count))?;
            let mut out = Vec::with_capacity(count as usize);
            for index in 0..count {
                let mut dev: Device = std::ptr::null_mut();
                check(
                    "nvmlDeviceGetHandleByIndex_v2",
                    (self.handle)(index, &mut dev),
                )?;
                let mut u = Utilization::default();
                check(
                    "nvmlDeviceGetUtilizationRates",
                    (self.utilization)(dev, &mut u),
                )?;
                let mut m = Memory::default();
                check("nvmlDeviceGetMemoryInfo", (self.memory)(dev, &mut m))?;
                out.push(DeviceSample {
                    index,
                    utilization_percent: u.gpu,
                    memory_used_bytes: m.used,
                });
            }
            Ok(out)
        }
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: NVML was initialised in `open`
        unsafe {
            (self.shutdown)();
        }
    }
}
