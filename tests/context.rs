//! Adapter selection errors are values, never panics. (Its own test binary:
//! it sets process-wide environment variables.)

#[test]
fn an_adapter_name_that_matches_nothing_is_a_clear_error() {
    std::env::set_var("WGPU_ADAPTER_NAME", "no-such-adapter-anywhere");
    let err = logit_adjust::Context::new().unwrap_err();
    assert!(matches!(err, logit_adjust::Error::NoAdapter(_)), "{err}");
    assert!(
        err.to_string().contains("no-such-adapter-anywhere"),
        "{err}"
    );
    std::env::remove_var("WGPU_ADAPTER_NAME");
    // And the env-selected default opens (a GPU test fails without an adapter).
    let ctx = logit_adjust::Context::new().expect("an adapter under WGPU_BACKEND");
    assert!(ctx.limits().max_storage_buffer_binding_size >= 128 << 20);
}
