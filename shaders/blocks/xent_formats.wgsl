// xent_formats.wgsl: the half-precision bindings and accessors of
// softmax_xent.wgsl, which the loader swaps in for that file's f32 blocks
// (between its `>>> logits` / `<<< logits` and `>>> grad` / `<<< grad`
// lines), after the format's codec from halves.wgsl. Not a module on its
// own: each `//! block` runs to the next.
//
// A unit is LANES = 2 elements: the u32 word of elements 2u and 2u + 1.
// Every value is widened to f32 on load and rounded once, to nearest even,
// on store; nothing is computed in a half format.
//
// `packed` blocks read and write halves as bits of u32 words, for devices
// without SHADER_F16 (and for bf16 everywhere). The caller's buffers are
// `atomic<u32>`: a word a row shares with its neighbour is written half by
// half (atomicAnd then atomicOr, each writer only its own 16 bits), a word
// wholly inside a row by one atomicStore. Loads are atomicLoad, so an
// in-place gradient's neighbouring row may rewrite the other half of a
// word while this row reads its own. `native` blocks use WGSL's f16 (the
// loader puts `enable f16;` first) as vec2<f16> words: one 4-byte load or
// store per unit, and a lone 16-bit store for a word's half that another
// row owns.

//! block logits packed
@group(0) @binding(1) var<storage, read_write> logits: array<atomic<u32>>;

// Unit u of the logits: the word of elements 2u and 2u + 1.
fn load_unit(u: u32) -> vec2<f32> {
    let word = atomicLoad(&logits[u]);
    return vec2<f32>(half_value(word & 0xffffu), half_value(word >> 16u));
}

fn store_unit_in_place(u: u32, g: vec2<f32>, w: vec2<bool>) {
    let bits = word_bits(u, g);
    if (all(w)) {
        atomicStore(&logits[u], bits);
    } else {
        atomicAnd(&logits[u], ~lanes_mask(w));
        atomicOr(&logits[u], bits & lanes_mask(w));
    }
}

// Unit u's gradient as one word: both lanes rounded.
fn word_bits(u: u32, g: vec2<f32>) -> u32 {
    return half_bits(stored(2u * u, g.x)) | (half_bits(stored(2u * u + 1u, g.y)) << 16u);
}

// The bits of a word that lanes `w` own.
fn lanes_mask(w: vec2<bool>) -> u32 {
    return select(0u, 0xffffu, w.x) | select(0u, 0xffff0000u, w.y);
}

//! block grad packed
@group(0) @binding(4) var<storage, read_write> grad: array<atomic<u32>>;

// The whole word when both lanes are the writer's, else only its half.
fn store_unit_grad(u: u32, g: vec2<f32>, w: vec2<bool>) {
    let bits = word_bits(u, g);
    if (all(w)) {
        atomicStore(&grad[u], bits);
    } else {
        atomicAnd(&grad[u], ~lanes_mask(w));
        atomicOr(&grad[u], bits & lanes_mask(w));
    }
}

//! block logits native
@group(0) @binding(1) var<storage, read_write> logits: array<vec2<f16>>;

// Unit u of the logits: elements 2u and 2u + 1, one 4-byte load, widened.
fn load_unit(u: u32) -> vec2<f32> {
    return vec2<f32>(logits[u]);
}

// Both lanes in one 4-byte store, else the writer's half alone (a
// vector's components are distinct memory locations: 16-bit stores).
fn store_unit_in_place(u: u32, g: vec2<f32>, w: vec2<bool>) {
    let h = vec2<f16>(vec2<f32>(stored(2u * u, g.x), stored(2u * u + 1u, g.y)));
    if (all(w)) {
        logits[u] = h;
    } else if (w.x) {
        logits[u].x = h.x;
    } else if (w.y) {
        logits[u].y = h.y;
    }
}

//! block grad native
@group(0) @binding(4) var<storage, read_write> grad: array<vec2<f16>>;

fn store_unit_grad(u: u32, g: vec2<f32>, w: vec2<bool>) {
    let h = vec2<f16>(vec2<f32>(stored(2u * u, g.x), stored(2u * u + 1u, g.y)));
    if (all(w)) {
        grad[u] = h;
    } else if (w.x) {
        grad[u].x = h.x;
    } else if (w.y) {
        grad[u].y = h.y;
    }
}
