// linear_formats.wgsl: the half-precision logits of linear.wgsl, which the
// loader swaps in for that file's f32 block (between its `>>> logits` and
// `<<< logits` lines), after the format's codec from halves.wgsl. Not a
// module on its own: each `//! block` runs to the next.
//
// Always packed (halves as bits of u32 words): the bits are the same as
// WGSL's native f16 gives, and these are the trainer's own buffers, which
// the loss kernels read and write in either form.

//! block logits packed
@group(0) @binding(4) var<storage, read> g_logits: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>;

// A unit is the u32 word of elements 2u and 2u + 1.
const LANES: u32 = 2u;

// Element e of G, widened exactly.
fn dlogit(e: u32) -> f32 {
    return half_value((g_logits[e >> 1u] >> ((e & 1u) * 16u)) & 0xffffu);
}

// Both halves of word u, each rounded to nearest even; one thread owns the
// word, so a plain store.
fn store_logits(u: u32, v: vec2<f32>) {
    out[u] = half_bits(v.x) | (half_bits(v.y) << 16u);
}
