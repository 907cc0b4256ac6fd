// posthoc_formats.wgsl: the half-precision logits of posthoc.wgsl, which
// the loader swaps in for that file's f32 block (between its `>>> logits`
// and `<<< logits` lines), after the format's codec from halves.wgsl. Not
// a module on its own: each `//! block` runs to the next.
//
// The post-hoc kernels only read logits, so a packed word needs no
// atomics: element e is the low (e even) or high half of word e / 2.
// Widening is exact, so every comparison is the one the f32 kernels make
// on the same values.

//! block logits packed
@group(0) @binding(1) var<storage, read_write> logits: array<u32>;

fn logit(e: u32) -> f32 {
    return half_value((logits[e >> 1u] >> ((e & 1u) * 16u)) & 0xffffu);
}

//! block logits native
@group(0) @binding(1) var<storage, read_write> logits: array<f16>;

fn logit(e: u32) -> f32 {
    return f32(logits[e]);
}
