// cpu_xent_formats.wgsl: the half-precision logits and gradient of
// cpu_xent.wgsl, which the loader swaps in for that file's f32 blocks
// (between its `>>> logits` / `<<< logits` and `>>> grad` / `<<< grad`
// lines), after the format's codec from halves.wgsl. Not a module on its
// own: each `//! block` runs to the next.
//
// Packed for f16 and bf16 alike, on every CPU adapter: a vec4 of the view
// is 4 halves, two u32 words (8 bytes), so cpu_xent.wgsl's vec4 indices are
// unchanged. Values are widened by the codec's bit operations on load and
// rounded once, to nearest even, on store (WGSL's own f16 conversions cost
// lavapipe more than these integer operations, and GL has no f16).
//
// Who writes a word. With an even row stride (and the region aligned to
// a vec4, as the CPU layouts require) every word holds halves of one row
// only: `grad packed` stores a vec4 wholly inside a row as one vec2<u32>
// (one storage access, as f32's vec4 is one) and a row's first and last
// vec4 word by word. With an odd stride one word holds the last element of
// one row and the first of the next: `grad packed, words shared` then
// writes a vec4 inside the row as two whole words (atomicStore) and a
// shared word half by half (atomicAnd then atomicOr of the writer's 16
// bits), so that two rows' writers never lose each other's half. In place
// the two bindings view one region; loads stay plain, as in cpu_xent.wgsl's
// f32 views: a thread loads every word it writes before writing it, and
// the half a neighbour rewrites is one the reader's class mask rejects.

//! block logits packed
@group(0) @binding(1) var<storage, read_write> logits: array<vec2<u32>>;

// Vec4 u of the logits' view, widened (exact).
fn load4(u: u32) -> vec4<f32> {
    let w = logits[u];
    return vec4<f32>(half_value(w.x & 0xffffu), half_value(w.x >> 16u),
                     half_value(w.y & 0xffffu), half_value(w.y >> 16u));
}

//! block grad packed
@group(0) @binding(4) var<storage, read_write> grad: array<vec2<u32>>;

// Two values rounded to the format, `lo` in the low 16 bits.
fn word_of(lo: f32, hi: f32) -> u32 {
    return half_bits(lo) | (half_bits(hi) << 16u);
}

// Vec4 u of the gradient, whole: its two words in one store.
fn store4(u: u32, g: vec4<f32>) {
    grad[u] = vec2<u32>(word_of(g.x, g.y), word_of(g.z, g.w));
}

// The components `w` of vec4 u alone: with an even stride `w` covers
// whole words (both halves of a word are one row's, or neither), each
// stored on its own.
fn store_part(u: u32, g: vec4<f32>, w: vec4<bool>) {
    if (all(w.xy)) {
        grad[u].x = word_of(g.x, g.y);
    }
    if (all(w.zw)) {
        grad[u].y = word_of(g.z, g.w);
    }
}

//! block grad packed, words shared
@group(0) @binding(4) var<storage, read_write> grad: array<atomic<u32>>;

// Two values rounded to the format, `lo` in the low 16 bits.
fn word_of(lo: f32, hi: f32) -> u32 {
    return half_bits(lo) | (half_bits(hi) << 16u);
}

// Vec4 u of the gradient, whole: its two words.
fn store4(u: u32, g: vec4<f32>) {
    atomicStore(&grad[2u * u], word_of(g.x, g.y));
    atomicStore(&grad[2u * u + 1u], word_of(g.z, g.w));
}

// Word i's halves `w` (low, high) from `bits`: whole when both are the
// writer's, else only its own 16 bits.
fn store_word(i: u32, bits: u32, w: vec2<bool>) {
    if (all(w)) {
        atomicStore(&grad[i], bits);
    } else if (any(w)) {
        let mask = select(0xffff0000u, 0x0000ffffu, w.x);
        atomicAnd(&grad[i], ~mask);
        atomicOr(&grad[i], bits & mask);
    }
}

// The components `w` of vec4 u alone: the others are a neighbour row's.
fn store_part(u: u32, g: vec4<f32>, w: vec4<bool>) {
    store_word(2u * u, word_of(g.x, g.y), w.xy);
    store_word(2u * u + 1u, word_of(g.z, g.w), w.zw);
}
