//! What the burn tests share: burn's wgpu devices, seeds, reading tensors.
#![allow(dead_code)]

use std::sync::OnceLock;

use burn::tensor::wgpu::WgpuBackend;
use burn::tensor::{Device, Tensor};

/// burn's wgpu device for each backend under test, registered: the one
/// `WGPU_BACKEND` names, or Vulkan and GL when it is unset. A backend that
/// cannot be opened fails the test; nothing is skipped.
pub fn devices() -> Vec<(String, Device)> {
    static DEVICES: OnceLock<Vec<(String, Device)>> = OnceLock::new();
    DEVICES
        .get_or_init(|| {
            let wanted = std::env::var("WGPU_BACKEND").unwrap_or_default();
            let apis: Vec<(&str, WgpuBackend)> = match wanted.as_str() {
                "vulkan" => vec![("vulkan", WgpuBackend::Vulkan)],
                "gl" => vec![("gl", WgpuBackend::Gl)],
                "" => vec![("vulkan", WgpuBackend::Vulkan), ("gl", WgpuBackend::Gl)],
                other => panic!("WGPU_BACKEND={other}: the burn tests know vulkan and gl"),
            };
            apis.into_iter()
                .map(|(name, api)| {
                    let device = logit_adjust_burn::init(Device::wgpu_options().graphics_api(api))
                        .unwrap_or_else(|e| panic!("burn's wgpu device on {name}: {e}"));
                    (name.to_string(), device)
                })
                .collect()
        })
        .clone()
}

/// A seed: fixed by default, fresh with `LOGIT_ADJUST_FRESH_SEEDS=1` (as CI
/// runs), or `LOGIT_ADJUST_SEED`. Printed in every failure message.
pub fn seed(test: &str) -> u64 {
    if let Ok(s) = std::env::var("LOGIT_ADJUST_SEED") {
        return s.parse().expect("LOGIT_ADJUST_SEED must be a u64");
    }
    if std::env::var("LOGIT_ADJUST_FRESH_SEEDS").is_ok_and(|v| v == "1") {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
    }
    test.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A tensor's f32 values.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

/// The largest `|got - want|` over `tol(want)`, with its index, if any
/// element is outside (a NaN is outside).
pub fn worst(got: &[f32], want: &[f64], tol: impl Fn(f64) -> f64) -> Option<(usize, f32, f64)> {
    assert_eq!(got.len(), want.len(), "lengths");
    got.iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (&g, &w))| {
            let d = (g as f64 - w).abs();
            d.is_nan() || d > tol(w)
        })
        .max_by(|a, b| {
            let d = |(_, (g, w)): &(usize, (&f32, &f64))| (**g as f64 - **w).abs();
            d(a).total_cmp(&d(b))
        })
        .map(|(i, (&g, &w))| (i, g, w))
}

/// `max |x|`.
pub fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}
