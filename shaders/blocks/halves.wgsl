// halves.wgsl: the two half formats' codecs, spliced before the binding
// blocks of xent_formats.wgsl and posthoc_formats.wgsl for packed halves.
// Not a module on its own: each `//! block` runs to the next.
//
// half_value(h): the half in the low 16 bits of h, widened to f32 (exact).
// half_bits(x): x rounded to the half nearest, ties to even, in the low
// 16 bits. Both by bit operations and f32 operations whose results are
// exact (no rounding mode or subnormal flushing can change them), so that
// every device widens and rounds alike.

//! block codec f16
// IEEE binary16 <-> f32, by bit operations (exact widening; rounding to
// nearest even, subnormals kept, overflow to infinity, NaN quiet).
fn half_value(h: u32) -> f32 {
    let a = (h & 0x7fffu) << 13u; // exponent and mantissa, in f32's places
    let sign = (h & 0x8000u) << 16u;
    // Normal: the exponent rebiased by 127 - 15; infinity and NaN
    // (exponent 31) by twice that, to 255.
    let normal = a + select(0x38000000u, 0x70000000u, a >= 0x0f800000u);
    // Subnormal or zero: 2^-14 (1 + m 2^-10) - 2^-14 = m 2^-24, exact (no
    // operand or result is an f32 subnormal). Both cases are formed and one
    // selected: no branch for the lanes of a SIMD group to diverge on.
    let small = bitcast<u32>(bitcast<f32>(a + 0x38800000u) - 6.103515625e-5);
    return bitcast<f32>(sign | select(normal, small, a < 0x00800000u));
}

fn half_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let a = b & 0x7fffffffu;
    // Below 2^-14: a multiple of 2^-24, |x| 2^24 rounded half to even
    // (1024 is the smallest normal's encoding, as it should be); the min
    // keeps the unused lanes' product in range.
    let small = u32(round(bitcast<f32>(min(a, 0x38800000u)) * 16777216.0));
    // Normal: rebias the exponent (127 - 15), round the 13 dropped bits
    // to nearest even; a carry moves into the exponent as it should.
    let r = a + 0xfffu + ((a >> 13u) & 1u);
    let normal = (r - 0x38000000u) >> 13u;
    var h = select(normal, small, a < 0x38800000u);
    h = select(h, 0x7c00u, a >= 0x477ff000u); // 65520 and up round to infinity
    h = select(h, 0x7e00u, a > 0x7f800000u);  // NaN
    return sign | h;
}

//! block codec bf16
// bfloat16 <-> f32: the high half of an f32 (exact widening; rounding to
// nearest even, NaN quiet).
fn half_value(h: u32) -> f32 {
    return bitcast<f32>(h << 16u);
}

fn half_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return (b >> 16u) | 0x40u; // NaN
    }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

