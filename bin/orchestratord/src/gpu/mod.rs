//! GPU gauges (spec §5): `gpu_utilization{device}` (busy fraction, 0–1) and
//! `vram_used_bytes{device}`, sampled every [`SAMPLE_EVERY`] from a [`GpuSource`].
//!
//! The source is NVML (feature `nvml`: `libnvidia-ml.so.1` is loaded at run time, so
//! building needs no CUDA). Without the feature, or on a machine without the library
//! or a device, no GPU series is exported and startup says why, once. The mapping from
//! a sample to series is unit-tested here behind [`GpuSource`]; NVML itself is verified
//! only on a machine with an NVIDIA GPU (none in CI).
//!
//! Owns: the sampling task and the two gauges.

#[cfg(feature = "nvml")]
mod nvml;

use std::time::Duration;

pub const GPU_UTILIZATION: &str = "gpu_utilization";
pub const VRAM_USED_BYTES: &str = "vram_used_bytes";

/// How often devices are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// One device's reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSample {
    /// The driver's device index (the `device` label).
    pub index: u32,
    /// Percent of the last sample period the device was busy (0–100).
    pub utilization_percent: u32,
    pub memory_used_bytes: u64,
}

/// Where readings come from.
pub trait GpuSource: Send + 'static {
    /// One reading per device, or why there is none now.
    fn sample(&mut self) -> Result<Vec<DeviceSample>, String>;
}

/// Set the gauges from one reading.
pub fn publish(samples: &[DeviceSample]) {
    for s in samples {
        let device = s.index.to_string();
        metrics::gauge!(GPU_UTILIZATION, "device" => device.clone())
            .set(f64::from(s.utilization_percent.min(100)) / 100.0);
        metrics::gauge!(VRAM_USED_BYTES, "device" => device).set(s.memory_used_bytes as f64);
    }
}

/// The NVML source, or why there is none.
fn open() -> Result<Box<dyn GpuSource>, String> {
    #[cfg(feature = "nvml")]
    {
        nvml::Nvml::open().map(|n| Box::new(n) as Box<dyn GpuSource>)
    }
    #[cfg(not(feature = "nvml"))]
    {
        Err("built without the `nvml` feature".into())
    }
}

/// Start sampling when a source is there; otherwise log, once, why GPU gauges are
/// absent. The task ends with the runtime.
pub fn start() {
    match open() {
        Ok(source) => {
            tracing::info!(
                "GPU gauges: sampling NVML every {} s",
                SAMPLE_EVERY.as_secs()
            );
            tokio::spawn(run(source));
        }
        Err(why) => {
            tracing::info!(reason = %why, "no GPU gauges (gpu_utilization, vram_used_bytes)")
        }
    }
}

async fn run(mut source: Box<dyn GpuSource>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let mut warned = false;
    loop {
        tick.tick().await;
        // driver calls block: off the runtime's workers
        let Ok((back, got)) = tokio::task::spawn_blocking(move || {
            let got = source.sample();
            (source, got)
        })
        .await
        else {
            tracing::warn!("GPU sampling stopped: the sampler panicked");
            return;
        };
        source = back;
        match got {
            Ok(s) => {
                publish(&s);
                warned = false;
            }
            Err(why) if !warned => {
                tracing::warn!(reason = %why, "GPU sample failed");
                warned = true;
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    struct Fake(Vec<DeviceSample>);

    impl GpuSource for Fake {
        fn sample(&mut self) -> Result<Vec<DeviceSample>, String> {
            Ok(self.0.clone())
        }
    }

    /// Each device's reading becomes its two series: utilization as a fraction (clamped
    /// at 1), memory in bytes, labelled by device index.
    #[test]
    fn a_reading_maps_to_one_series_of_each_gauge_per_device() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let mut src = Fake(vec![
            DeviceSample {
                index: 0,
                utilization_percent: 57,
                memory_used_bytes: 3 << 30,
            },
            DeviceSample {
                index: 1,
                utilization_percent: 130,
                memory_used_bytes: 0,
            },
        ]);
        metrics::with_local_recorder(&recorder, || publish(&src.sample().unwrap()));
        let mut got: Vec<(String, String, f64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(k, _, _, v)| {
                let key = k.key();
                let device = key
                    .labels()
                    .find(|l| l.key() == "device")
                    .map(|l| l.value().to_string())
                    .unwrap_or_default();
                let v = match v {
                    DebugValue::Gauge(g) => g.into_inner(),
                    other => panic!("not a gauge: {other:?}"),
                };
                (key.name().to_string(), device, v)
            })
            .collect();
        got.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        assert_eq!(
            got,
            vec![
                (GPU_UTILIZATION.into(), "0".into(), 0.57),
                (GPU_UTILIZATION.into(), "1".into(), 1.0),
                (VRAM_USED_BYTES.into(), "0".into(), (3u64 << 30) as f64),
                (VRAM_USED_BYTES.into(), "1".into(), 0.0),
            ]
        );
    }

    #[cfg(not(feature = "nvml"))]
    #[test]
    fn without_the_feature_there_is_no_source_and_it_says_why() {
        assert!(open().err().is_some_and(|e| e.contains("nvml")));
    }
}
